"""Compare pretraining runs: kNN top-1 and the loss terms of several runs in one plot, and a table.

    python compare.py results/<a> results/<b> ... [--out compare.png]
    python compare.py 'results/*'          # a quoted glob: folders that are not pretraining runs are skipped
    python compare.py results              # every pretraining run folder in results/

Reads only what main.py leaves in a run folder (args.json and <prefix>_statistics.csv), plus an
evaluation.csv (columns such as task,dataset,metric,value) or evaluation.md where an evaluation has
been written there: it works offline and without torch. Curves and table rows are labelled by the
settings that differ between the runs, e.g. `λ_BT=1/128 s=4`.
"""
import argparse
import csv
import glob
import json
import math
import os
import sys

from mixbt.errors import MixBTError

# Where and how fast a run ran, not what it is: never used to tell runs apart.
NOT_SETTINGS = {'run_name', 'resume', 'results_dir', 'data_root', 'workers', 'gpu', 'log_every', 'download',
                'save_every', 'knn_every', 'knn_init', 'compile', 'channels_last', 'aug', 'precision', 'fuse_views',
                'sync_bn', 'lambda_mixup'}  # lambda_mixup only sets mixup_loss_scale
# Label names of the usual settings (the paper's symbols where it has one); the others keep their flag name.
SHORT = {'lmbda': 'λ_BT', 'mixup_loss_scale': 's', 'is_mixup': 'mixup', 'feature_dim': 'd', 'batch_size': 'batch',
         'lr_shed': 'schedule', 'corr_neg_one': 'hsic'}
VALUE_ONLY = ('method', 'arch', 'dataset')  # their values name themselves: `mixbt`, `resnet18`, `cifar10`
ORDER = ('method', 'arch', 'dataset', 'lmbda', 'mixup_loss_scale', 'is_mixup', 'feature_dim', 'batch_size', 'epochs',
         'lr', 'lr_shed', 'seed')
RUN_FOLDER = 'a main.py run folder holds args.json and <run>_..._statistics.csv'


class Run:
    """One pretraining run folder: its settings, its per-epoch rows, and its evaluations if any."""

    def __init__(self, path, args, rows, columns, evaluation=None, evaluation_md=None):
        self.path, self.args, self.rows, self.columns = path, args, rows, columns
        self.name = os.path.basename(os.path.normpath(path))
        self.evaluation, self.evaluation_md = evaluation or [], evaluation_md

    @property
    def epochs_done(self):
        return int(max((r['epoch'] for r in self.rows), default=0))

    def last(self, key):
        """The last logged value of `key` after epoch 0 (the random-init baseline), or None."""
        return next((r[key] for r in reversed(self.rows) if isinstance(r.get(key), float) and r['epoch'] > 0), None)

    def best_knn(self):
        """(best kNN top-1, its epoch): the first epoch with the maximum, as main.py keeps its best model."""
        points = [(r['knn_top1'], r['epoch']) for r in self.rows if isinstance(r.get('knn_top1'), float)
                  and r['epoch'] > 0]
        return max(points, key=lambda p: (p[0], -p[1])) if points else (None, None)


def _number(text):
    """A CSV cell: None when empty (main.py leaves kNN cells empty between evaluations), else a float,
    else the text as it is."""
    if text in (None, '', 'None'):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def statistics_csv(folder):
    found = glob.glob(os.path.join(glob.escape(folder), '*_statistics.csv'))
    return max(found, key=os.path.getmtime) if found else None


def read_run(folder):
    """The Run in `folder`; MixBTError saying why when it is not a pretraining run folder."""
    if not os.path.isdir(folder):
        raise MixBTError(f'{folder}: no such folder ({RUN_FOLDER})')
    if not os.path.isfile(os.path.join(folder, 'args.json')):
        raise MixBTError(f'{folder} is not a run folder: no args.json ({RUN_FOLDER})')
    path = statistics_csv(folder)
    if path is None:
        raise MixBTError(f'{folder} has no per-epoch statistics (*_statistics.csv): the run has not finished an epoch')
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        if 'epoch' not in columns or 'loss' not in columns:
            kind = ('a linear/transfer evaluation run' if os.path.isfile(os.path.join(folder, 'results.json'))
                    else 'not a pretraining run')
            raise MixBTError(f'{folder} is {kind} (its statistics have no epoch/loss columns); compare.py compares '
                             'pretraining run folders written by main.py')
        rows = [{k: _number(v) for k, v in row.items() if k is not None} for row in reader]
    if not all(isinstance(r.get('epoch'), float) for r in rows):
        raise MixBTError(f'{path}: unreadable statistics (an epoch that is not a number)')
    try:
        with open(os.path.join(folder, 'args.json')) as f:
            args = json.load(f)
    except ValueError as e:
        raise MixBTError(f'{folder}/args.json: not JSON ({e})') from None
    evaluation, evaluation_md = [], None
    if os.path.isfile(os.path.join(folder, 'evaluation.csv')):
        with open(os.path.join(folder, 'evaluation.csv'), newline='') as f:
            evaluation = list(csv.DictReader(f))
    elif os.path.isfile(os.path.join(folder, 'evaluation.md')):
        with open(os.path.join(folder, 'evaluation.md')) as f:
            evaluation_md = f.read().strip()
    return Run(folder, args, rows, columns, evaluation, evaluation_md)


def find_runs(paths):
    """The runs named by `paths`: run folders, quoted globs (non-runs skipped) or folders of run folders."""
    runs = []
    for path in paths:
        if glob.has_magic(path):
            found = [r for p in sorted(glob.glob(path)) if os.path.isdir(p) for r in try_read_run(p)]
            if not found:
                raise MixBTError(f'no pretraining run folders match {path!r} ({RUN_FOLDER})')
            runs += found
        elif (os.path.isdir(path) and not os.path.isfile(os.path.join(path, 'args.json'))
              and any(entry.is_dir() for entry in os.scandir(path))):
            found = [r for sub in sorted(os.listdir(path)) for r in try_read_run(os.path.join(path, sub))]
            if not found:
                raise MixBTError(f'{path} is not a run folder and holds no pretraining run folders ({RUN_FOLDER}); '
                                 "to skip such folders in a glob, quote it: 'results/*'")
            runs += found
        else:
            runs.append(read_run(path))
    unique = {}
    for run in runs:
        unique.setdefault(os.path.realpath(run.path), run)
    return list(unique.values())


def try_read_run(path):
    """[the Run in path], or [] when path is not a pretraining run folder."""
    try:
        return [read_run(path)]
    except MixBTError:
        return []


# ---------------------------------------------------------------------------- labels
def differing_settings(runs):
    """The args.json keys whose values differ between the runs, the usual ones first."""
    keys = {k for run in runs for k in run.args} - NOT_SETTINGS
    differ = {k for k in keys if len({json.dumps(run.args.get(k), sort_keys=True) for run in runs}) > 1}
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
    if value is None:
        return '-'
    return str(value)


def label(run, keys):
    parts = [(format_value(k, run.args.get(k)) if k in VALUE_ONLY
              else f'{SHORT.get(k, k)}={format_value(k, run.args.get(k))}') for k in keys]
    return ' '.join(parts) or run.name


def labels(runs):
    """One legend label per run; runs that no setting tells apart keep their folder name too."""
    keys = differing_settings(runs)
    out = [label(run, keys) for run in runs]
    return [f'{text} ({run.name})' if out.count(text) > 1 and text != run.name else text
            for text, run in zip(out, runs)]


# ---------------------------------------------------------------------------- tables
def markdown(headers, rows):
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = lambda row: '| ' + ' | '.join(c.ljust(w) for c, w in zip(row, widths)) + ' |'
    rule = '|' + '|'.join('-' * (w + 2) for w in widths) + '|'
    return '\n'.join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def _fmt(value, spec):
    return '-' if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def summary_table(runs):
    """Final and best metrics per run, as a markdown table."""
    keys = differing_settings(runs)
    rows = []
    for run in runs:
        best, at = run.best_knn()
        target = run.args.get('epochs')
        rows.append([run.name, label(run, keys) if keys else '-',
                     f'{run.epochs_done}/{target}' if target else run.epochs_done,
                     _fmt(run.last('loss'), '.4g'), _fmt(run.last('knn_top1'), '.2f'),
                     '-' if best is None else f'{best:.2f} @ {at:g}'])
    return markdown(['run', 'settings', 'epochs', 'final loss', 'final kNN top-1', 'best kNN top-1 @ epoch'], rows)


def evaluation_tables(runs):
    """The runs' evaluation.csv rows side by side (one column per run when the CSV has a `value`
    column), then any evaluation.md that has no CSV next to it; '' when no run has an evaluation."""
    parts = []
    with_csv = [run for run in runs if run.evaluation]
    if with_csv:
        columns = []
        for run in with_csv:
            columns += [c for c in run.evaluation[0] if c not in columns]
        if 'value' in columns:
            keys = [c for c in columns if c != 'value']
            table = {}
            for run in with_csv:
                for row in run.evaluation:
                    table.setdefault(tuple(row.get(k, '') for k in keys), {})[run.name] = row.get('value', '')
            rows = [list(key) + [values.get(run.name, '-') for run in with_csv] for key, values in table.items()]
            parts.append(markdown(keys + [run.name for run in with_csv], rows))
        else:
            parts.append(markdown(['run'] + columns,
                                  [[run.name] + [row.get(c, '') for c in columns] for run in with_csv
                                   for row in run.evaluation]))
    for run in runs:
        if run.evaluation_md and not run.evaluation:
            parts.append(f'{run.name} (evaluation.md):\n\n{run.evaluation_md}')
    return '\n\n'.join(parts)


# ---------------------------------------------------------------------------- plot
def panels(runs):
    """The plotted keys: kNN top-1, the loss, then every loss term logged by any of the runs."""
    keys = [k for k in ('knn_top1', 'loss') if any(isinstance(r.get(k), float) for run in runs for r in run.rows)]
    for run in runs:
        keys += [c for c in run.columns if c.startswith('loss_') and c not in keys
                 and any(isinstance(r.get(c), float) for r in run.rows)]
    return keys


def plot(runs, out):
    """kNN top-1, loss and each loss term against epoch, one curve per run, one legend for all."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    keys = panels(runs)
    if not keys:
        raise MixBTError('nothing to plot: the runs have no logged loss or kNN values yet')
    cols = len(keys) if len(keys) <= 4 else 3
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    colors = (plt.get_cmap('tab10').colors if len(runs) <= 10
              else [plt.get_cmap('viridis')(i / (len(runs) - 1)) for i in range(len(runs))])
    names = labels(runs)
    for ax, key in zip(axes.flat, keys):
        values = []
        for run, text, color in zip(runs, names, colors):
            pts = [(r['epoch'], r[key]) for r in run.rows if isinstance(r.get(key), float)]
            if key != 'knn_top1':
                pts = [p for p in pts if p[0] > 0]
            values += [p[1] for p in pts]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, label=text,
                    marker='.' if len(pts) < 40 else None)
        if key != 'knn_top1' and values and min(values) > 0 and max(values) > 20 * min(values):
            ax.set_yscale('log')  # Barlow Twins losses fall by orders of magnitude in the first epochs
        ax.set_title('kNN top-1 (%)' if key == 'knn_top1' else key, fontsize=10)
        ax.set_xlabel('epoch')
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    handles, texts = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, texts, loc='center left', bbox_to_anchor=(1.0, 0.5), fontsize='small', frameon=False)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches='tight')
    plt.close(fig)
    return out


def report(runs, out=None):
    """The markdown summary of `runs` (and their evaluations); with `out`, also the plot there."""
    text = summary_table(runs)
    evaluations = evaluation_tables(runs)
    if evaluations:
        text += '\n\nEvaluations:\n\n' + evaluations
    if out:
        plot(runs, out)
        text += f'\n\nPlot: {out}'
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description='Compare pretraining runs: one plot and one table', allow_abbrev=False)
    p.add_argument('runs', nargs='+', help="run folders, quoted globs ('results/*') or folders of run folders")
    p.add_argument('--out', default='compare.png', help='the plot (PNG)')
    args = p.parse_args(argv)
    try:
        print(report(find_runs(args.runs), args.out))
    except MixBTError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
