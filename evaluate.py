"""The paper's whole evaluation of one checkpoint, in one table (docs/protocol.md sections 5 and 7).

    python3 evaluate.py checkpoints/4wdhbpcf_0.0078125_1024_256_cifar10_model.pth
    python3 evaluate.py results/<run>      # a main.py run folder: its best-kNN <prefix>_model.pth and args.json
    python3 evaluate.py results/<run> --epochs 2 --transfer_epochs 2 --subset 512 --no_aug   # a quick look

Parts, in this order:
  knn          the weighted kNN monitor (knn.knn_monitor) on the pretraining set's memory and test
               splits: k 200, T 0.5, or the run's own --k/--temperature (small data sets only)
  linear       linear.py with its defaults (the paper's probe; ImageNet: the official recipe)
  transfer_X   transfer.py to each transfer set X found under --data_root (small-data checkpoints
               only: the protocol defines transfer from CIFAR/STL-style backbones); a set that is
               not there is listed as skipped, with the reason, and tried again next time

Everything goes to <results_dir>/<checkpoint file stem>/ (or --run_name): evaluation.csv
(task,dataset,metric,value), evaluation.md (the paper's layout), args.json, knn.json and one run
folder per probe (linear/, transfer_<set>/). Each result records its identity: the sha256 of the
checkpoint file's content and the settings that define the part (mixbt/identity.py). The same
command started again reuses the finished parts whose identity matches and continues a killed
probe from its checkpoint.pth; a part computed from other inputs (the run folder's best model
rewritten since, say) is computed afresh, with one line saying so. The table keeps every finished
part that still matches, also transfer sets that this command does not name. A command that
would change a setting of the folder (data set, epochs...) is refused. The probes' BatchNorm is
the original's (train mode while the classifier trains); --probe_bn eval is ours. Runs under
torchrun too (rank 0 writes; the probes split every batch).
"""
import glob
import os
import shutil
import time

import torch

from mixbt import augment
from mixbt import cli_args
from mixbt import data as datasets
from mixbt import distributed as D
from mixbt import folder_data
from mixbt import knn
from mixbt import readers
import linear
import transfer
from mixbt.eval_table import write_tables
from mixbt.checkpoints import load_backbone, read_checkpoint, resolve_dataset_arg
from mixbt.errors import MixBTError
from mixbt.identity import check_resume, differences, file_sha256, read_json, settings, stale_note, write_json
from mixbt.probe import format_time
from mixbt.probe_runs import probe_identity
from mixbt.runs import Lock, check_writable
from mixbt.transfer_data import TRANSFER
from mixbt.transfer_readers import load_transfer
from mixbt.runtime import autocast_dtype, run_command

# Settings that may change between two runs on one evaluation folder: where things are and how
# fast they run, and which transfer sets are tried; not what a finished part computed. The
# checkpoint's content is part of each part's own identity: a rewritten file recomputes the parts.
RESUME_FREE = ('checkpoint', 'data_root', 'results_dir', 'run_name', 'eval_dir', 'workers', 'gpu', 'precision',
               'transfer_datasets', 'model_sha256', 'folder_identity', 'max_memory_gb')
# What defines the kNN part, besides the checkpoint's content (a folder: also its images).
KNN_KEYS = ('dataset', 'arch', 'k', 'temperature', 'subset', 'channels_last', 'image_size', 'folder_labels',
            'folder_identity')


def get_args(argv=None):
    p = cli_args.parser('kNN, linear probe and transfer of one checkpoint, in one table')
    a = p.add_argument
    a('checkpoint', metavar='CHECKPOINT_OR_RUN_FOLDER',
      help='a checkpoint (*_model.pth, last.pth, resnet50.pth...) or a main.py run folder (its <prefix>_model.pth)')
    a('--dataset', default=None, choices=datasets.DATASETS,
      help="data set of the kNN monitor and the linear probe (default: the one the checkpoint's name or run "
           "folder names, else cifar10)")
    cli_args.add_common(p, 'arch', 'data_root', 'results_dir', 'run_name',
                   data_root=dict(help='folder holding the data sets and the transfer sets (ImageNet: its folder)'),
                   results_dir=dict(default=os.path.join('results', 'eval'), help='the evaluation folder is made here'),
                   run_name=dict(help='evaluation folder name under --results_dir (default: the checkpoint file stem)'))
    a('--transfer_datasets', default=list(TRANSFER), nargs='*', choices=list(TRANSFER), metavar='SET',
      help=f'transfer sets to try (default: all of {", ".join(TRANSFER)}; none: no transfer)')
    a('--epochs', default=None, type=int, help='linear-probe epochs (default: linear.py\'s, 200; ImageNet 100)')
    a('--transfer_epochs', default=None, type=int, help="transfer epochs (default: transfer.py's, 100)")
    a('--batch_size', default=None, type=int,
      help="linear-probe batch (default: linear.py's, 512; ImageNet 256); also the transfer batch unless "
           "--transfer_batch_size is given")
    a('--transfer_batch_size', default=None, type=int, help="default: --batch_size if given, else transfer.py's, 128")
    cli_args.add_common(p, 'subset', subset=dict(help='use only N images of each split in every part (quick runs)'))
    a('--no_aug', action='store_true', help='linear probe on un-augmented images (cached features with --probe_bn eval)')
    cli_args.add_common(p, 'probe_bn', probe_bn=dict(
        default=None, help="the frozen backbone's BatchNorm in every probe: train (the original's; linear.py's and "
                           "transfer.py's default, ImageNet: eval) or eval (ours: statistics never change, features "
                           "cached where possible)"))
    a('--k', default=None, type=int, help='kNN neighbours (default: the run\'s --k, else 200)')
    a('--temperature', default=None, type=float, help='kNN temperature (default: the run\'s, else 0.5)')
    cli_args.add_common(p, 'seed', 'workers', 'gpu', 'precision')
    folder_data.add_folder_args(p, evaluation=True)
    args = p.parse_args(argv)
    cli_args.check_ranges(args, at_least_1=('epochs', 'transfer_epochs', 'batch_size', 'transfer_batch_size', 'k'),
                     non_negative=('subset', 'workers'), positive=('temperature',))
    return args


# ---------------------------------------------------------------------------- what is evaluated
def read_run_args(folder):
    """The args.json of a main.py run folder (it records --lmbda, as dataset_of_checkpoint checks), else None."""
    path = os.path.join(folder, 'args.json')
    try:
        saved = read_json(path, 'settings record')
    except MixBTError:  # not ours to delete: it holds the pretraining run's settings
        raise MixBTError(f'{path} is not a readable settings record (truncated or not JSON), so its run\'s data set '
                         f'and kNN settings are unknown. Restore it (main.py wrote it when the run started), or '
                         f'copy the checkpoint to another folder and give --dataset, --k and --temperature') from None
    return saved if isinstance(saved, dict) and 'lmbda' in saved else None


def resolve_checkpoint(path):
    """(checkpoint file, the pretraining run's args or None) of a checkpoint or a main.py run folder."""
    if os.path.isdir(path):
        run_args = read_run_args(path)
        if run_args is None:
            raise MixBTError(f'{path} is a folder but not a main.py run folder (no args.json of a pretraining run): '
                             f'give the checkpoint file itself')
        found = sorted(f for f in glob.glob(os.path.join(glob.escape(path), '*_model.pth')))
        if not found:
            raise MixBTError(f'{path} holds no <prefix>_model.pth yet (the kNN monitor writes it, every --knn_every '
                             f'epochs): wait for it, or give {os.path.join(path, "last.pth")} itself')
        if len(found) > 1:
            raise MixBTError(f'{path} holds {len(found)} best-kNN models ({", ".join(map(os.path.basename, found))}): '
                             f'give the one to evaluate')
        return found[0], run_args
    if not os.path.isfile(path):
        raise MixBTError(f'no checkpoint or run folder at {path}: give a *.pth file or a main.py run folder')
    return path, read_run_args(os.path.dirname(os.path.abspath(path)))


def resolve(args):
    """Fill in the checkpoint file, the data set, the kNN settings and the evaluation folder."""
    model_path, run_args = resolve_checkpoint(args.checkpoint)
    args.model_path = os.path.realpath(model_path)
    args.model_sha256 = file_sha256(args.model_path)  # its content: what every part's identity names
    resolve_dataset_arg(args, datasets.DATASETS)  # its file name, else its run folder's args.json
    folder_data.run_settings(args, args.model_path)  # a folder: the run's image size, labels and memory settings
    spec = datasets.spec_of(args)  # a folder is read here, before any work
    folder_data.require(spec, 'evaluate.py')
    if args.dataset == datasets.FOLDER:  # its files: a kNN result is reused only on the same images
        args.folder_identity = spec.identity
    run_args = run_args or {}
    # The run's own monitor settings reproduce its kNN number; main.py's defaults otherwise.
    args.k = args.k or run_args.get('k') or 200
    args.temperature = args.temperature or run_args.get('temperature') or 0.5
    args.channels_last = bool(run_args.get('channels_last', True))
    stem = os.path.splitext(os.path.basename(args.model_path))[0]
    args.eval_dir = os.path.join(args.results_dir, args.run_name or stem)
    return args


def plan(args):
    """The parts of this evaluation: [(part name, task, data set)]."""
    spec = datasets.spec_of(args)
    if spec.protocol == 'imagenet':  # linear only, as the original's ImageNet evaluation
        return [('linear', 'linear', args.dataset)]
    if spec.streamed:  # the kNN monitor takes the images in memory (main() says so)
        return ([('linear', 'linear', args.dataset)]
                + [(f'transfer_{name}', 'transfer', name) for name in args.transfer_datasets])
    return ([('knn', 'knn', args.dataset), ('linear', 'linear', args.dataset)]
            + [(f'transfer_{name}', 'transfer', name) for name in args.transfer_datasets])


# ---------------------------------------------------------------------------- the parts
def run_knn(args, device):
    """{'top1', 'top5', ...} of the kNN monitor, as main.py runs it (main.load_data)."""
    backbone = load_backbone(args.model_path, args.dataset, args.arch)[0]
    spec = datasets.spec_of(args)
    memory, test = [augment.eval_split(args.dataset, d) for d in
                    datasets.load_splits(args.dataset, args.data_root, spec.splits[1:], args.subset, workers=args.workers)]
    backbone.to(device)
    if args.channels_last:
        backbone.to(memory_format=torch.channels_last)
    top1, top5 = knn.knn_monitor(backbone, memory, test, spec.mean, spec.std, spec.num_classes, device, k=args.k,
                                 temperature=args.temperature, autocast_dtype=autocast_dtype(args.precision, device),
                                 channels_last=args.channels_last)
    # The k used: the bank may hold fewer images than --k asks (a --subset run).
    return {'top1': top1, 'top5': top5, 'k': min(args.k, len(memory[1])), 'k_asked': args.k,
            'temperature': args.temperature, 'memory_images': len(memory[1]), 'test_images': len(test[1])}


def transfer_missing(args, name):
    """Why transfer set `name` cannot be read under --data_root (its DatasetNotFound message), or
    None: the readers check the index files and that every image exists, before transfer.py loads
    the backbone."""
    try:
        for train in (True, False):
            load_transfer(name, args.data_root, train)
    except readers.DatasetNotFound as e:
        return str(e)
    return None


def probe_argv(args, part):
    """The linear.py / transfer.py command line of a probe part: a fixed run folder, so that a
    killed part continues from its checkpoint.pth when the evaluation starts again."""
    argv = ['--dataset', args.dataset, '--arch', args.arch, '--model_path', args.model_path,
            '--data_root', args.data_root, '--results_dir', args.eval_dir, '--run_name', part,
            '--seed', str(args.seed), '--gpu', str(args.gpu), '--precision', args.precision]
    argv += ['--probe_bn', args.probe_bn] if args.probe_bn else []
    if part == 'linear':
        given = {'--epochs': args.epochs, '--batch_size': args.batch_size}
        argv += ['--no_aug'] if args.no_aug else []
    else:
        given = {'--epochs': args.transfer_epochs, '--batch_size': args.transfer_batch_size or args.batch_size}
        argv += ['--transfer_dataset', part[len('transfer_'):]]
    given.update({'--subset': args.subset or None, '--workers': args.workers})
    if args.dataset == datasets.FOLDER:
        given.update({f'--{key}': getattr(args, key) for key in folder_data.RUN_SETTINGS})
    return argv + [str(x) for flag, value in given.items() if value is not None for x in (flag, value)]


def part_results_path(args, part):
    return os.path.join(args.eval_dir, 'knn.json' if part == 'knn' else os.path.join(part, 'results.json'))


# ---------------------------------------------------------------------------- the evaluation
def summary(task, values):
    if task == 'knn':
        return f'top-1 {values["top1"]:.2f}, top-5 {values["top5"]:.2f}'
    return f'top-1 {values["final_acc@1"]:.2f} (best {values["best_acc@1"]:.2f}), top-5 {values["final_acc@5"]:.2f}'


def on_main(fn, share=True):
    """fn() on rank 0; its MixBTError on every rank (no rank waits for an answer that never comes),
    and its value too with `share`."""
    value, error = None, None
    if D.is_main():
        try:
            value = fn()
        except MixBTError as e:
            error = e
    shared, message = D.broadcast_object((value if share else None, str(error) if error else None))
    if error:
        raise error
    if message:
        raise MixBTError(message)
    return value if D.is_main() else shared


def open_folder(args):
    """Create the evaluation folder, lock it (one evaluation per folder) and check that it holds this
    evaluation; rank 0 does it, every rank gets the error. Returns the lock (rank 0) or None."""
    def take():
        os.makedirs(args.eval_dir, exist_ok=True)
        lock = Lock(args.eval_dir)
        try:
            path = os.path.join(args.eval_dir, 'args.json')
            saved = read_json(path, 'evaluation settings record')
            if saved is not None:
                check_resume(saved, args, RESUME_FREE, (), args.eval_dir)
            write_json(path, vars(args))
        except BaseException:
            lock.release()
            raise
        return lock
    return on_main(take, share=False)


# ---------------------------------------------------------------------------- what was computed before
def part_identity(args, part, task):
    """What a part's result is computed from (mixbt/identity.py): the checkpoint's content and the
    settings that define the part; a probe's is the one its program records (probe_runs.probe_identity)."""
    if task == 'knn':
        return {'model_sha256': args.model_sha256, **settings(args, KNN_KEYS)}
    return probe_identity((linear if task == 'linear' else transfer).get_args(probe_argv(args, part)))


NO_RECORD = ['it has no identity record']


def saved_part(args, part, task):
    """(differences, numbers) of what the folder holds for a part, against this command's inputs:
    differences [] when it was computed from them (NO_RECORD when it does not say), None when the
    folder holds nothing of the part; numbers: a finished result's, None for a killed probe (whose
    checkpoint.pth records its identity)."""
    numbers = read_json(part_results_path(args, part), 'result record')
    saved = numbers
    if numbers is None:
        state_path = os.path.join(args.eval_dir, part, 'checkpoint.pth')
        if part == 'knn' or not os.path.isfile(state_path):
            return None, None
        saved = read_checkpoint(state_path)
    recorded = saved.get('identity') if isinstance(saved, dict) else None
    return (differences(recorded, part_identity(args, part, task)) if recorded else NO_RECORD), numbers


def take_stock(args, parts):
    """{part: numbers} of the finished parts that this command may reuse, on rank 0. A part computed
    from other inputs is computed afresh (a killed probe of other inputs is removed first, so that
    it is not continued), with one line saying so; a finished transfer set that this command does
    not name stays in the table while it still matches."""
    results = {}
    for part, task, name in parts:
        diffs, numbers = saved_part(args, part, task)
        if diffs == [] and numbers is not None:
            results[part] = numbers
        elif diffs:
            print(stale_note(f'{task} {name}', [] if diffs is NO_RECORD else diffs), flush=True)
            if part != 'knn':
                shutil.rmtree(os.path.join(args.eval_dir, part))
    named = {part for part, _, _ in parts}
    for name in TRANSFER if datasets.spec_of(args).protocol == 'small' else ():
        part = f'transfer_{name}'
        if part in named or not os.path.isfile(part_results_path(args, part)):
            continue
        diffs, numbers = saved_part(args, part, 'transfer')
        if diffs:
            print(f'transfer {name}: left out of the table, computed from other inputs ({", ".join(diffs[:4])})')
        else:
            results[part] = numbers
    return results


# ---------------------------------------------------------------------------- the evaluation
def run_part(args, part, task, name, device):
    """(numbers, None) of one part as its program wrote them (None on ranks other than 0), or
    (None, why) for a transfer set that is not under --data_root."""
    if task == 'knn':
        values = run_knn(args, device)
        if D.is_main():
            values['identity'] = part_identity(args, part, task)
            write_json(part_results_path(args, part), values)
        return values, None
    if task == 'transfer':
        missing = transfer_missing(args, name)
        if missing:
            return None, missing
    try:
        result = (linear if task == 'linear' else transfer).main(probe_argv(args, part))
    except readers.DatasetNotFound as e:
        if task == 'linear':  # the checkpoint's own data set: nothing to evaluate without it
            raise
        return None, str(e)
    return (read_json(os.path.join(result['run_dir'], 'results.json')) if D.is_main() else None), None


def table_parts(parts, results):
    """The parts of the table: this command's, and the finished transfer sets it kept; transfer sets
    in the paper's order."""
    order = {f'transfer_{name}': i for i, name in enumerate(TRANSFER)}
    extra = [(part, 'transfer', part[len('transfer_'):]) for part in results if part not in {p for p, _, _ in parts}]
    return sorted(parts + extra, key=lambda p: (p[1] == 'transfer', order.get(p[0], 0)))


def evaluate(args, device):
    """Run the parts not finished before; returns (table parts, {part: numbers}, {transfer set: why skipped})."""
    parts = plan(args)
    results, skipped = on_main(lambda: take_stock(args, parts)), {}
    done = set(results)
    started = time.time()
    for i, (part, task, name) in enumerate(parts, 1):
        step = f'[{i}/{len(parts)}] {task} {name}'
        t0 = time.time()
        if part in done:
            if D.is_main():
                print(f'{step}: done before ({part_results_path(args, part)}): {summary(task, results[part])}',
                      flush=True)
            continue
        if D.is_main():
            print(f'{step}: running', flush=True)
        values, missing = run_part(args, part, task, name, device)
        if missing:
            skipped[name] = ' '.join(missing.split())
            if D.is_main():
                print(f'{step}: skipped: {skipped[name]}', flush=True)
        elif D.is_main():
            results[part] = values
            print(f'{step}: {summary(task, values)} in {format_time(time.time() - t0)} '
                  f'(elapsed {format_time(time.time() - started)})', flush=True)
    return table_parts(parts, results), results, skipped


def main(argv=None):
    """Runs every part that is not finished; returns {'eval_dir', 'results' (part -> its numbers),
    'skipped' (transfer set -> why), 'csv', 'md'}."""
    args = resolve(get_args(argv))
    check_writable(args.results_dir)
    device = D.init_distributed(args.gpu)
    # Read before anything runs: a wrong checkpoint fails now, not after the kNN monitor.
    args.arch = load_backbone(args.model_path, args.dataset, args.arch)[2]
    if D.is_main():
        parts = ', '.join(p for p, _, _ in plan(args))
        streamed = ('; no kNN: the images are streamed (raise --max_memory_gb or pass --subset N)'
                    if datasets.spec_of(args).streamed else '')
        print(f'Evaluating {args.model_path} ({args.arch}, {args.dataset}) in {args.eval_dir}: {parts}{streamed}',
              flush=True)
    lock = open_folder(args)
    try:
        parts, results, skipped = evaluate(args, device)
        if D.is_main():
            write_tables(args, parts, results, skipped)
            print(f'Wrote {os.path.join(args.eval_dir, "evaluation.md")} and evaluation.csv'
                  + (f'; skipped (not found): {", ".join(skipped)}' if skipped else ''), flush=True)
    finally:
        if lock is not None:
            lock.release()
    return {'eval_dir': args.eval_dir, 'results': results, 'skipped': skipped,
            'csv': os.path.join(args.eval_dir, 'evaluation.csv'), 'md': os.path.join(args.eval_dir, 'evaluation.md')}


def cli(argv=None):
    return run_command(lambda: main(argv))


if __name__ == '__main__':
    cli()
