"""Compare pretraining runs: kNN top-1, the loss terms and the monitors of several runs in one plot,
and tables; runs repeated over seeds as mean ± std, and a paired comparison of two settings.

    python3 compare.py results/<a> results/<b> ... [--out compare.png]
    python3 compare.py 'results/*'          # a quoted glob: folders that are not runs are skipped
    python3 compare.py results              # every pretraining run folder in results/
    python3 compare.py results/eval/<name>  # an evaluate.py folder: what it evaluated, and its numbers

Reads what main.py leaves in a run folder (args.json, <prefix>_statistics.csv) and what evaluate.py
writes (results/eval/<checkpoint stem>/evaluation.csv): it works offline and without torch. An
evaluation is shown as a run's only while the checkpoint it evaluated is unchanged (its recorded
sha256). Runs are labelled by the settings that differ between them, e.g. `λ_BT=1/128 s=4`; runs
that differ only in --seed form a group, shown as mean ± std (n), and each group is compared with
the reference group (the first run's, or --reference) seed by seed: the mean paired difference
with its 95 % t-interval.
"""
import argparse
import json
import os
import sys

from mixbt import compare_plot, compare_stats, identity
from mixbt.compare_runs import (NOT_SETTINGS, Evaluation, Run, attach_evaluations, default_eval_dirs, find,
                                read_run, try_read)
from mixbt.errors import MixBTError

__all__ = ['Evaluation', 'Run', 'read_run', 'try_read', 'find', 'report', 'check_out', 'main']

# Label names of the usual settings (the paper's symbols where it has one); the others keep their flag name.
SHORT = {'lmbda': 'λ_BT', 'mixup_loss_scale': 's', 'is_mixup': 'mixup', 'feature_dim': 'd', 'batch_size': 'batch',
         'lr_shed': 'schedule', 'corr_neg_one': 'hsic'}
VALUE_ONLY = ('method', 'arch', 'dataset')  # their values name themselves: `mixbt`, `resnet18`, `cifar10`
ORDER = ('method', 'arch', 'dataset', 'lmbda', 'mixup_loss_scale', 'is_mixup', 'feature_dim', 'batch_size', 'epochs',
         'lr', 'lr_shed', 'seed')
# Panel titles of the per-epoch columns that have one; any other numeric column is plotted under its name.
TITLES = {'knn_top1': 'kNN top-1 (%)', 'loss': 'loss', 'knn_train_top1': 'kNN top-1 on the training set (%)',
          'gen_gap': 'generalisation gap (train - test kNN top-1)', 'erank_features': 'effective rank: features',
          'erank_embeddings': 'effective rank: embeddings', 'offdiag_mass': 'off-diagonal mass of C',
          'ondiag_mean': 'mean diagonal of C', 'linear_top1': 'linear top-1 (%)'}


# ---------------------------------------------------------------------------- labels
def differing_settings(runs, exclude=()):
    """The args.json keys whose values differ between the runs, the usual ones first."""
    keys = {k for run in runs for k in run.args} - NOT_SETTINGS - set(exclude)
    differ = {k for k in keys if len({json.dumps(run.args.get(k), sort_keys=True, default=str) for run in runs}) > 1}
    if 'method' in differ:  # the method already says whether there is mixup and which off-diagonal target
        differ -= {'is_mixup', 'corr_neg_one'}
    return sorted(differ, key=lambda k: (ORDER.index(k) if k in ORDER else len(ORDER), k))


def format_value(key, value):
    if isinstance(value, bool):
        return 'on' if value else 'off'
    if isinstance(value, float) and key == 'lmbda' and 0 < value < 1:
        n = round(1 / value)  # the scripts write 1/2^k truncated by bc (0.0009765 for 1/1024)
        if n & (n - 1) == 0 and abs(1 / value - n) < 1e-3 * n:
            return f'1/{n}'
    if isinstance(value, (int, float)):
        return f'{value:g}'
    return '-' if value is None else str(value)


def label(run, keys):
    parts = [(format_value(k, run.args.get(k)) if k in VALUE_ONLY
              else f'{SHORT.get(k, k)}={format_value(k, run.args.get(k))}') for k in keys]
    return ' '.join(parts) or run.name


def labels(runs):
    """The settings that tell each run apart; runs that no setting tells apart keep their folder name too."""
    keys = differing_settings(runs)
    out = [label(run, keys) for run in runs]
    return [f'{text} ({run.name})' if out.count(text) > 1 and text != run.name else text
            for text, run in zip(out, runs)]


def group_labels(groups):
    """The settings that tell each group apart (the seed never does)."""
    keys = differing_settings([g.runs[0] for g in groups], exclude=('seed',))
    return [label(g.runs[0], keys) if keys else 'all runs' for g in groups]


# ---------------------------------------------------------------------------- tables
def markdown(headers, rows):
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = lambda row: '| ' + ' | '.join(c.ljust(w) for c, w in zip(row, widths)) + ' |'
    rule = '|' + '|'.join('-' * (w + 2) for w in widths) + '|'
    return '\n'.join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def fmt(value, spec):
    """A number as the tables show it: NaN as nan (a diverged run says so), nothing as '-'."""
    return '-' if value is None else format(value, spec)


METRICS = (('final loss', lambda run: run.last('loss'), '.4g'),
           ('final kNN top-1', lambda run: run.last('knn_top1'), '.2f'),
           ('best kNN top-1', lambda run: run.best_knn()[0], '.2f'))


def monitor_columns(runs):
    columns = []
    for run in runs:
        columns += [c for c in run.monitor_columns() if c not in columns]
    return columns


def epochs_text(runs):
    done = sorted({run.epochs_done for run in runs})
    targets = sorted({run.args.get('epochs') for run in runs if run.args.get('epochs')}, key=str)
    text = f'{done[0]}' if len(done) == 1 else f'{done[0]}-{done[-1]}'
    text += f'/{"|".join(map(str, targets))}' if targets else ''
    torn = sum(len(run.torn) for run in runs)
    return text + (f' ({torn} torn row{"s" * (torn > 1)})' if torn else '')


def summary_table(runs):
    """Final and best metrics per run, as a markdown table."""
    names = labels(runs)
    keys = differing_settings(runs)
    rows = []
    for run, text in zip(runs, names):
        best, at = run.best_knn()
        rows.append([run.name, text if keys else '-', epochs_text([run]), fmt(run.last('loss'), '.4g'),
                     fmt(run.last('knn_top1'), '.2f'), '-' if best is None else f'{best:.2f} @ {at:g}'])
    return markdown(['run', 'settings', 'epochs', 'final loss', 'final kNN top-1', 'best kNN top-1 @ epoch'], rows)


def monitors_table(runs):
    """The last value of every monitor column (overfitting monitors...) per run; '' when none is logged."""
    columns = monitor_columns(runs)
    if not columns:
        return ''
    return markdown(['run'] + columns, [[run.name] + [fmt(run.last(c), '.4g') for c in columns] for run in runs])


def groups_table(groups):
    """One row per group of seeds: every metric as mean ± std (n runs)."""
    columns = monitor_columns([run for g in groups for run in g.runs])
    metrics = list(METRICS) + [(f'final {c}', lambda run, c=c: run.last(c), '.4g') for c in columns]
    rows = [[text, ' '.join(map(str, g.seeds)), epochs_text(g.runs)]
            + [compare_stats.mean_std_text([value(run) for run in g.runs], spec) for _, value, spec in metrics]
            for g, text in zip(groups, group_labels(groups))]
    return markdown(['settings', 'seeds', 'epochs'] + [name for name, _, _ in metrics], rows)


def run_evaluation_values(run):
    """{(task, dataset, metric): value} of the run's own evaluations (its best-kNN model's, or an
    evaluation.csv put in the run folder)."""
    values = {}
    for evaluation in run.evaluations:
        if evaluation.of_run is None or evaluation.of_run.endswith('_model.pth'):
            values.update(evaluation.values())
    return values


def column_name(evaluation, run=None):
    if run is None:
        return evaluation.name
    return run.name if evaluation.of_run is None or evaluation.of_run.endswith('_model.pth') \
        else f'{run.name} ({evaluation.of_run})'


def evaluation_tables(runs, evaluations=()):
    """The evaluations side by side (task, dataset, metric rows; one column per run or evaluation
    folder); a CSV without a value column as its rows; then any evaluation.md that has no CSV; '' when
    there is none."""
    shown = [(column_name(e, run), e) for run in runs for e in run.evaluations] + \
            [(column_name(e), e) for e in evaluations]
    parts, table = [], {}
    valued = [(name, e) for name, e in shown if e.rows and 'value' in e.rows[0]]
    for name, evaluation in valued:
        for row in evaluation.rows:
            table.setdefault(tuple(row.get(k, '') for k in ('task', 'dataset', 'metric')), {})[name] = row['value']
    if table:
        parts.append(markdown(['task', 'dataset', 'metric'] + [name for name, _ in valued],
                              [list(key) + [values.get(name, '-') for name, _ in valued]
                               for key, values in table.items()]))
    other = [(name, e) for name, e in shown if e.rows and 'value' not in e.rows[0]]
    columns = []
    for _, evaluation in other:
        columns += [c for c in evaluation.rows[0] if c not in columns]
    if other:
        parts.append(markdown(['run'] + columns, [[name] + [row.get(c, '') for c in columns]
                                                  for name, e in other for row in e.rows]))
    parts += [f'{name} (evaluation.md):\n\n{e.markdown}' for name, e in shown if e.markdown and not e.rows]
    return '\n\n'.join(parts)


def group_evaluation_table(groups):
    """The runs' evaluation numbers as mean ± std (n) per group; '' when no run has one."""
    per_run = {id(run): run_evaluation_values(run) for g in groups for run in g.runs}
    keys = []
    for values in per_run.values():
        keys += [k for k in values if k not in keys]
    if not keys:
        return ''
    rows = [list(key) + [compare_stats.mean_std_text([per_run[id(run)].get(key) for run in g.runs])
                         for g in groups] for key in keys]
    return markdown(['task', 'dataset', 'metric'] + group_labels(groups), rows)


def paired_table(groups, reference):
    """Each group against the reference group, seed by seed, for kNN top-1 and every evaluation number."""
    names = dict(zip(map(id, groups), group_labels(groups)))
    metrics = [(name, value) for name, value, _ in METRICS[1:]]
    keys = []
    for g in groups:
        for run in g.runs:
            keys += [k for k in run_evaluation_values(run) if k not in keys]
    metrics += [(' '.join(key), lambda run, key=key: run_evaluation_values(run).get(key)) for key in keys]
    rows = []
    for other in groups:
        if other is reference:
            continue
        for metric, value in metrics:
            interval = compare_stats.paired_interval(reference.by_seed(value), other.by_seed(value))
            if interval is None:
                continue
            rows.append([f'{names[id(other)]} - {names[id(reference)]}', metric,
                         f'{interval["n"]} ({" ".join(map(str, interval["seeds"]))})', f'{interval["mean"]:+.2f}',
                         f'[{interval["low"]:+.2f}, {interval["high"]:+.2f}]',
                         compare_stats.verdict(interval, names[id(other)])])
    if not rows:
        return ''
    return markdown(['compared (same seeds)', 'metric', 'pairs (seeds)', 'mean difference', '95 % interval', ''],
                    rows)


# ---------------------------------------------------------------------------- plot
def panels(runs):
    """The plotted keys: kNN top-1, the loss, every loss term, then every monitor column logged."""
    keys = [k for k in ('knn_top1', 'loss') if any(isinstance(r.get(k), float) for run in runs for r in run.rows)]
    for run in runs:
        keys += [c for c in run.columns if c.startswith('loss_') and c not in keys
                 and any(isinstance(r.get(c), float) for r in run.rows)]
    return keys + [c for c in monitor_columns(runs) if c not in keys]


def plot(runs, out):
    """The picture at `out` (its name returned)."""
    return compare_plot.save(figure(runs), out)


def figure(runs):
    """One panel per key of panels(), one curve per run, or per group of seeds (mean, ± std band)."""
    groups = compare_stats.seed_groups(runs)
    keys = panels(runs)
    if any(len(g.runs) > 1 for g in groups):
        series = [(f'{text} (seeds {" ".join(map(str, g.seeds))}: mean ± std)' if len(g.runs) > 1
                   else f'{g.runs[0].name}: {text}', g.runs) for g, text in zip(groups, group_labels(groups))]
    else:
        keyed = bool(differing_settings(runs))
        series = [(f'{run.name}: {text}' if keyed else run.name, [run]) for run, text in zip(runs, labels(runs))]
    curves = [(text, {k: compare_stats.curve(members, k, skip_init=k != 'knn_top1') for k in keys})
              for text, members in series]
    return compare_plot.figure([(k, TITLES.get(k, k), k == 'loss' or k.startswith('loss_')) for k in keys], curves)


def check_out(out):
    """The picture's file name, checked before any work: a known format (no extension: .png) in a folder
    that can be written. Returns the name that will be written."""
    from matplotlib.backend_bases import FigureCanvasBase
    formats = FigureCanvasBase.get_supported_filetypes()
    if os.path.isdir(out):
        raise MixBTError(f'--out {out} is a folder; give a file name such as {os.path.join(out, "compare.png")}')
    ext = os.path.splitext(out)[1]
    if not ext:
        out = out + '.png'
    elif ext[1:].lower() not in formats:
        raise MixBTError(f'--out {out}: {ext} is not a picture format matplotlib writes; use .png, .pdf or .svg')
    probe = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise MixBTError(f'--out {out}: {probe} is a file, not a folder; choose another --out')
    if not os.access(probe, os.W_OK | os.X_OK) or (os.path.exists(out) and not os.access(out, os.W_OK)):
        raise MixBTError(f'--out {out}: {probe if not os.path.exists(out) else out} is not writable; '
                         'choose another --out')
    return out


# ---------------------------------------------------------------------------- the report
def notes(runs):
    lines = [f'{run.name}: {run.statistics} {part} is torn: not counted as an epoch (copy the run folder again, '
             'or delete the line)' for run in runs for part in run.torn]
    return lines + [note for run in runs for note in run.notes]


def what_was_evaluated(evaluation):
    """'<folder> is an evaluation of <checkpoint>', and whether that file still has the content evaluated."""
    checkpoint = evaluation.checkpoint
    text = f'{evaluation.path} is an evaluation (evaluate.py) of {checkpoint or "a checkpoint it does not name"}, ' \
           'not a pretraining run'
    if checkpoint and not os.path.isfile(checkpoint):
        return text + '; that file is gone'
    if checkpoint and evaluation.sha256 and evaluation.sha256 != {identity.file_sha256(checkpoint)}:
        old = ', '.join(sorted(s[:12] for s in evaluation.sha256))
        return text + f'; that file has been rewritten since (sha256 {old}... -> now ' \
                      f'{identity.file_sha256(checkpoint)[:12]}...)'
    return text


def report(runs, out=None, evaluations=(), reference=None, eval_dirs=None):
    """The markdown summary of `runs` (and evaluation folders); with `out`, also the plot there.
    `reference`: the run whose group the others are compared with (default: the first run)."""
    for run in runs:
        attach_evaluations(run, default_eval_dirs(runs) if eval_dirs is None else eval_dirs)
    attached = {os.path.realpath(e.path) for run in runs for e in run.evaluations}
    evaluations = [e for e in evaluations if os.path.realpath(e.path) not in attached]
    parts = ['\n'.join(what_was_evaluated(e) for e in evaluations)] if evaluations else []
    parts += [summary_table(runs)] if runs else []
    monitors = monitors_table(runs)
    if monitors:
        parts.append('Monitors (last value):\n\n' + monitors)
    groups = compare_stats.seed_groups(runs)
    if any(len(g.runs) > 1 for g in groups):
        parts.append('Over seeds (mean ± std (n runs); NaN counted apart):\n\n' + groups_table(groups))
        evaluations_over_seeds = group_evaluation_table(groups)
        if evaluations_over_seeds:
            parts.append(f'Evaluations over seeds:\n\n{evaluations_over_seeds}')
        ref = next((g for g in groups if reference in g.runs), groups[0])
        pairs = paired_table(groups, ref)
        if pairs:
            parts.append(f'Paired by seed (other - reference; 95 % t-interval of the mean difference):\n\n{pairs}')
        elif len(groups) > 1:
            parts.append('No paired comparison: no other group ran two or more of the reference group\'s seeds.')
    evaluations_text = evaluation_tables(runs, evaluations)
    if evaluations_text:
        parts.append('Evaluations:\n\n' + evaluations_text)
    lines = notes(runs)
    if lines:
        parts.append('Notes:\n' + '\n'.join(f'- {line}' for line in lines))
    if out and runs:
        parts.append(f'Plot: {plot(runs, out)}')
    return '\n\n'.join(parts)


def main(argv=None):
    p = argparse.ArgumentParser(description='Compare pretraining runs: one plot and tables', allow_abbrev=False)
    p.add_argument('runs', nargs='+', help="run folders, quoted globs ('results/*'), folders of run folders, or "
                                           'evaluate.py folders')
    p.add_argument('--out', default='compare.png', help='the plot (.png, .pdf, .svg; no extension: .png)')
    p.add_argument('--reference', default=None,
                   help='a run folder: its group (its settings, every seed) is the one the others are compared with '
                        '(default: the first run)')
    p.add_argument('--eval_dir', default=None, nargs='*',
                   help="where evaluate.py's folders are (default: eval/ beside the run folders, evaluate.py's "
                        'results/eval)')
    args = p.parse_args(argv)
    try:
        out = check_out(args.out)
        runs, evaluations = find(args.runs)
        reference = None
        if args.reference:
            reference = next((r for r in runs if os.path.realpath(r.path) == os.path.realpath(args.reference)), None)
            if reference is None:
                raise MixBTError(f'--reference {args.reference} is not one of the compared run folders')
        print(report(runs, out, evaluations, reference, args.eval_dir))
    except MixBTError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
