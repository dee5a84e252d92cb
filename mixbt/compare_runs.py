"""What compare.py reads: pretraining run folders (args.json, <prefix>_statistics.csv) and the
evaluation folders of evaluate.py (evaluation.csv, args.json), offline and without torch.

An evaluation counts as a run's only while the checkpoint it evaluated is still the run's: the
checkpoint sha256 the evaluation recorded must equal the sha256 of that file in the run folder
now (mixbt/identity.py). Otherwise it is left out, with one note saying why.
"""
import csv
import glob
import json
import math
import os
import re

from mixbt import identity
from mixbt.errors import MixBTError

RUN_FOLDER = 'a main.py run folder holds args.json and <run>_..._statistics.csv'
# Per-epoch columns that describe the run's speed and schedule, not what it learnt.
BOOKKEEPING = ('epoch', 'lr', 'epoch_time', 'images_per_s', 'elapsed_s', 'eta_s', 'skipped_images', 'knn_top5')
# Where and how fast a run ran, not what it is: never used to tell runs apart.
NOT_SETTINGS = {'run_name', 'resume', 'results_dir', 'data_root', 'workers', 'gpu', 'log_every', 'download',
                'save_every', 'knn_every', 'knn_init', 'compile', 'channels_last', 'aug', 'precision', 'fuse_views',
                'sync_bn', 'lambda_mixup', 'visuals'}  # lambda_mixup only sets mixup_loss_scale
SHA256 = re.compile(r'[0-9a-f]{64}')
CHECKPOINT_SHA256 = {'model_sha256', 'checkpoint_sha256'}  # evaluate.py's key; the name mixbt/identity.py suggests


class Evaluation:
    """One evaluate.py folder: the checkpoint it evaluated and its evaluation.csv rows (or .md text)."""

    def __init__(self, path, checkpoint, rows, markdown=None, sha256=()):
        self.path, self.checkpoint, self.rows, self.markdown = path, checkpoint, rows, markdown
        self.name = os.path.basename(os.path.normpath(path))
        self.sha256 = set(sha256)
        self.of_run = None  # the checkpoint file's name when it is shown as a run's evaluation

    def values(self):
        """{(task, dataset, metric): float} of the rows that have a number."""
        out = {}
        for row in self.rows:
            value = number(row.get('value'))
            if isinstance(value, float):
                out[(row.get('task', ''), row.get('dataset', ''), row.get('metric', ''))] = value
        return out


class Run:
    """One pretraining run folder: its settings, its complete per-epoch rows (torn rows apart, by
    line number), and the evaluations of its current checkpoints."""

    def __init__(self, path, args, rows, columns, statistics=None, torn=()):
        self.path, self.args, self.rows, self.columns = path, args, rows, columns
        self.name = os.path.basename(os.path.normpath(path))
        self.statistics, self.torn = statistics, list(torn)
        # An evaluation.csv put into the run folder itself is the run's as it is; evaluate.py's own
        # folders are checked against the run's checkpoints (attach_evaluations).
        self.local = [e for e in [read_evaluation(path)] if e is not None] if os.path.isdir(path) else []
        self.evaluations, self.notes = list(self.local), []

    @property
    def epochs_done(self):
        return int(max((r['epoch'] for r in self.rows), default=0))

    def last(self, key):
        """The last logged value of `key` after epoch 0 (the random-init baseline), NaN included; or None."""
        return next((r[key] for r in reversed(self.rows) if isinstance(r.get(key), float) and r['epoch'] > 0), None)

    def best(self, key):
        """(the largest finite value of `key` after epoch 0, its first epoch), as main.py keeps its best
        model; (None, None) when there is none."""
        points = [(r[key], r['epoch']) for r in self.rows
                  if isinstance(r.get(key), float) and math.isfinite(r[key]) and r['epoch'] > 0]
        return max(points, key=lambda p: (p[0], -p[1])) if points else (None, None)

    def best_knn(self):
        return self.best('knn_top1')

    def monitor_columns(self):
        """The numeric per-epoch columns beyond kNN top-1 and the loss terms (overfitting monitors...)."""
        return [c for c in self.columns if c not in BOOKKEEPING and c != 'knn_top1' and c != 'loss'
                and not c.startswith('loss_') and any(isinstance(r.get(c), float) for r in self.rows)]


def number(text):
    """A CSV cell: None when empty (main.py leaves kNN cells empty between evaluations), else a float
    (nan and inf included), else the text as it is."""
    if text in (None, '', 'None'):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def statistics_csv(folder):
    found = glob.glob(os.path.join(glob.escape(folder), '*_statistics.csv'))
    return max(found, key=os.path.getmtime) if found else None


def read_statistics(path):
    """(columns, complete rows, torn rows as 'line N (k of m cells)'). A row with fewer or more cells
    than the header was cut or glued (a copy interrupted, two writers): it is not an epoch."""
    rows, torn = [], []
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        for row in reader:
            extra = row.pop(None, [])
            cells = sum(v is not None for v in row.values()) + len(extra)
            if extra or cells < len(columns):
                torn.append(f'line {reader.line_num} ({cells} of {len(columns)} cells)')
                continue
            rows.append({k: number(v) for k, v in row.items()})
    return columns, rows, torn


def read_args(folder):
    path = os.path.join(folder, 'args.json')
    try:
        with open(path) as f:
            args = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise MixBTError(f'{path} is not JSON ({e}): the run\'s settings are unreadable; restore the file '
                         f'(last.pth holds them as well)') from None
    if not isinstance(args, dict):
        raise MixBTError(f'{path} holds a JSON {type(args).__name__}, not the object of settings main.py '
                         f'writes; restore the file (last.pth holds the settings as well)')
    return args


def read_evaluation(folder):
    """The Evaluation in an evaluate.py folder, or None when `folder` is not one."""
    csv_path, md_path = os.path.join(folder, 'evaluation.csv'), os.path.join(folder, 'evaluation.md')
    if not (os.path.isfile(csv_path) or os.path.isfile(md_path)):
        return None
    settings = identity.read_json(os.path.join(folder, 'args.json'), 'evaluation settings file') or {}
    checkpoint = settings.get('model_path') if isinstance(settings, dict) else None
    rows, text = [], None
    if os.path.isfile(csv_path):
        with open(csv_path, newline='') as f:
            rows = list(csv.DictReader(f))
    else:
        with open(md_path) as f:
            text = f.read().strip()
    return Evaluation(folder, checkpoint, rows, text, recorded_sha256(folder))


def recorded_sha256(folder):
    """The checkpoint sha256 an evaluation folder records for its table: the record beside
    evaluation.csv (identity.record_path) where there is one, else the folder's settings (args.json),
    which evaluate.py writes when it starts."""
    table = identity.record_path(os.path.join(folder, 'evaluation.csv'))
    paths = [table] if os.path.isfile(table) else [os.path.join(folder, 'args.json')]
    found = set()
    for path in paths:
        record = identity.read_json(path, 'evaluation record')
        for key in CHECKPOINT_SHA256 & set(record if isinstance(record, dict) else ()):
            if isinstance(record[key], str) and SHA256.fullmatch(record[key]):
                found.add(record[key])
    return found


def read_run(folder):
    """The Run in `folder`; MixBTError saying why when it is not a pretraining run folder."""
    if not os.path.isdir(folder):
        raise MixBTError(f'{folder}: no such folder ({RUN_FOLDER})')
    if not os.path.isfile(os.path.join(folder, 'args.json')):
        raise MixBTError(f'{folder} is not a run folder: no args.json ({RUN_FOLDER})')
    path = statistics_csv(folder)
    if path is None:
        raise MixBTError(f'{folder} has no per-epoch statistics (*_statistics.csv): the run has not finished an epoch')
    columns, rows, torn = read_statistics(path)
    if 'epoch' not in columns or 'loss' not in columns:
        kind = ('a linear/transfer evaluation run' if os.path.isfile(os.path.join(folder, 'results.json'))
                else 'not a pretraining run')
        raise MixBTError(f'{folder} is {kind} (its statistics have no epoch/loss columns); compare.py compares '
                         'pretraining run folders written by main.py')
    if not all(isinstance(r.get('epoch'), float) and math.isfinite(r['epoch']) for r in rows):
        raise MixBTError(f'{path}: unreadable statistics (an epoch that is not a number)')
    return Run(folder, read_args(folder), rows, columns, path, torn)


def read_folder(folder):
    """A Run or an Evaluation; MixBTError for any other folder."""
    if os.path.isdir(folder) and statistics_csv(folder) is None:
        evaluation = read_evaluation(folder)
        if evaluation is not None:
            return evaluation
    return read_run(folder)


def try_read(path):
    """[the Run or Evaluation in path], or [] when path is neither."""
    try:
        return [read_folder(path)]
    except MixBTError:
        return []


def find(paths):
    """(runs, evaluations) named by `paths`: run or evaluation folders, quoted globs (other folders
    skipped) or folders of run folders."""
    found = []
    for path in paths:
        if glob.has_magic(path):
            matched = [r for p in sorted(glob.glob(path)) if os.path.isdir(p) for r in try_read(p)]
            if not matched:
                raise MixBTError(f'no pretraining run folders match {path!r} ({RUN_FOLDER})')
            found += matched
        elif (os.path.isdir(path) and not os.path.isfile(os.path.join(path, 'args.json'))
              and any(entry.is_dir() for entry in os.scandir(path))):
            matched = [r for sub in sorted(os.listdir(path)) for r in try_read(os.path.join(path, sub))
                       if isinstance(r, Run)]
            if not matched:
                raise MixBTError(f'{path} is not a run folder and holds no pretraining run folders ({RUN_FOLDER}); '
                                 "to skip such folders in a glob, quote it: 'results/*'")
            found += matched
        else:
            found.append(read_folder(path))
    unique = {}
    for item in found:
        unique.setdefault(os.path.realpath(item.path), item)
    items = list(unique.values())
    return [i for i in items if isinstance(i, Run)], [i for i in items if isinstance(i, Evaluation)]


# ---------------------------------------------------------------------------- a run's evaluations
def evaluation_candidates(run, eval_dirs):
    """The evaluation folders under `eval_dirs` of a checkpoint of `run`: [(folder, that checkpoint's path
    in the run folder)]. evaluate.py records the checkpoint's path; where the results were moved since, a
    best-kNN model (<run id>_..._model.pth, a name no other run has) is recognised by its file name."""
    models = {os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(run.path), '*_model.pth'))}
    real = os.path.realpath(run.path)
    out = []
    for eval_dir in eval_dirs:
        for folder in sorted(glob.glob(os.path.join(glob.escape(eval_dir), '*', 'evaluation.*'))):
            folder = os.path.dirname(folder)
            if out and out[-1][0] == folder:
                continue  # its evaluation.csv and evaluation.md
            try:
                settings = identity.read_json(os.path.join(folder, 'args.json'), 'evaluation settings file')
            except MixBTError as e:  # torn: named, when the folder's name says it is of this run
                if f'{os.path.basename(folder)}.pth' in models:
                    out.append((folder, os.path.join(run.path, f'{os.path.basename(folder)}.pth'), str(e)))
                continue
            model = settings.get('model_path') if isinstance(settings, dict) else None
            if isinstance(model, str) and (os.path.dirname(os.path.realpath(model)) == real
                                           or os.path.basename(model) in models):
                out.append((folder, os.path.join(run.path, os.path.basename(model)), None))
    return out


def attach_evaluations(run, eval_dirs):
    """Give `run` the evaluations of its current checkpoints; a note for each one that evaluated
    another content (an earlier best model), records no checkpoint sha256, or cannot be read."""
    run.evaluations, run.notes = [], []
    redo = f'evaluate it again: python3 evaluate.py {run.path}'
    for folder, checkpoint, error in evaluation_candidates(run, eval_dirs):
        try:
            if error:
                raise MixBTError(error)
            evaluation = read_evaluation(folder)
        except MixBTError as e:
            run.notes.append(f'not shown as {run.name}\'s evaluation: {e}')
            continue
        file = os.path.basename(checkpoint)
        if not os.path.isfile(checkpoint):
            run.notes.append(f'{folder} evaluated {file}, which {run.name} no longer holds: not shown as the run\'s')
            continue
        now = identity.file_sha256(checkpoint)
        if not evaluation.sha256:
            run.notes.append(f'{folder} records no checkpoint sha256, so it may be of an earlier {file}: not shown '
                             f'as {run.name}\'s; {redo}')
        elif evaluation.sha256 != {now}:
            old = ', '.join(sorted(s[:12] for s in evaluation.sha256 - {now})) or '?'
            run.notes.append(f'{folder} is an evaluation of an earlier {file} of {run.name} (checkpoint sha256 '
                             f'{old}... -> now {now[:12]}...): not shown as the run\'s; {redo}')
        else:
            evaluation.of_run = file
            run.evaluations.append(evaluation)
    run.evaluations += run.local
    return run


def default_eval_dirs(runs):
    """evaluate.py's default --results_dir for a run in results/<run>: results/eval."""
    dirs = []
    for run in runs:
        folder = os.path.join(os.path.dirname(os.path.abspath(run.path)), 'eval')
        if os.path.isdir(folder) and folder not in dirs:
            dirs.append(folder)
    return dirs
