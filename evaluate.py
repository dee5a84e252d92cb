"""The paper's whole evaluation of one checkpoint, in one table (docs/protocol.md sections 5 and 7).

    python evaluate.py checkpoints/4wdhbpcf_0.0078125_1024_256_cifar10_model.pth
    python evaluate.py results/<run>      # a main.py run folder: its best-kNN <prefix>_model.pth and args.json
    python evaluate.py results/<run> --epochs 2 --transfer_epochs 2 --subset 512 --no_aug   # a quick look

Parts, in this order:
  knn          the weighted kNN monitor (knn.knn_monitor) on the pretraining set's memory and test
               splits: k 200, T 0.5, or the run's own --k/--temperature (small data sets only)
  linear       linear.py with its defaults (the paper's probe; ImageNet: the official recipe)
  transfer_X   transfer.py to each transfer set X found under --data_root (small-data checkpoints
               only: the protocol defines transfer from CIFAR/STL-style backbones); a set that is
               not there is listed as skipped, with the reason, and tried again next time

Everything goes to <results_dir>/<checkpoint file stem>/ (or --run_name): evaluation.csv
(task,dataset,metric,value), evaluation.md (the paper's layout), args.json, knn.json and one run
folder per probe (linear/, transfer_<set>/). The same command started again skips the finished
parts (knn.json, the probe's results.json) and continues a killed probe from its checkpoint.pth;
a command that would change what the folder holds (another checkpoint, data set, epochs...) is
refused. Runs under torchrun too (rank 0 writes; the probes split every batch).
"""
import argparse
import csv
import glob
import io
import json
import os
import time

import torch

from mixbt import augment
from mixbt import data as datasets
from mixbt import distributed as D
from mixbt import knn
import linear
import transfer
from mixbt.checkpoints import load_backbone, resolve_dataset_arg
from mixbt.errors import MixBTError
from main import format_time
from mixbt.identity import check_resume
from mixbt.runs import Lock, check_writable
from mixbt.transfer_data import TRANSFER, load_transfer
from mixbt.runtime import autocast_dtype, run_command

# Settings that may change between two runs on one evaluation folder: where things are and how
# fast they run, and which transfer sets are tried; not what a finished part computed.
RESUME_FREE = ('checkpoint', 'data_root', 'results_dir', 'run_name', 'eval_dir', 'workers', 'gpu', 'precision',
               'transfer_datasets')


def get_args(argv=None):
    p = argparse.ArgumentParser(description='kNN, linear probe and transfer of one checkpoint, in one table',
                                allow_abbrev=False)
    a = p.add_argument
    a('checkpoint', metavar='CHECKPOINT_OR_RUN_FOLDER',
      help='a checkpoint (*_model.pth, last.pth, resnet50.pth...) or a main.py run folder (its <prefix>_model.pth)')
    a('--dataset', default=None, choices=sorted(datasets.SPECS),
      help="data set of the kNN monitor and the linear probe (default: the one the checkpoint's name or run "
           "folder names, else cifar10)")
    a('--arch', default=None, choices=['resnet18', 'resnet50'], help='default: inferred from the checkpoint')
    a('--data_root', default='data', help='folder holding the data sets and the transfer sets (ImageNet: its folder)')
    a('--results_dir', default=os.path.join('results', 'eval'), help='the evaluation folder is made here')
    a('--run_name', default=None, help='evaluation folder name under --results_dir (default: the checkpoint file stem)')
    a('--transfer_datasets', default=list(TRANSFER), nargs='*', choices=list(TRANSFER), metavar='SET',
      help=f'transfer sets to try (default: all of {", ".join(TRANSFER)}; none: no transfer)')
    a('--epochs', default=None, type=int, help='linear-probe epochs (default: linear.py\'s, 200; ImageNet 100)')
    a('--transfer_epochs', default=None, type=int, help="transfer epochs (default: transfer.py's, 100)")
    a('--batch_size', default=None, type=int,
      help="linear-probe batch (default: linear.py's, 512; ImageNet 256); also the transfer batch unless "
           "--transfer_batch_size is given")
    a('--transfer_batch_size', default=None, type=int, help="default: --batch_size if given, else transfer.py's, 128")
    a('--subset', default=0, type=int, help='use only N images of each split in every part (quick runs)')
    a('--no_aug', action='store_true', help='linear probe on cached un-augmented features (much faster)')
    a('--k', default=None, type=int, help='kNN neighbours (default: the run\'s --k, else 200)')
    a('--temperature', default=None, type=float, help='kNN temperature (default: the run\'s, else 0.5)')
    a('--seed', default=0, type=int)
    a('--workers', default=min(8, os.cpu_count() or 1), type=int, help='data-loader worker processes')
    a('--gpu', default=0, type=int, help='CUDA device of a single-process run (-1: CPU)')
    a('--precision', default='auto', choices=['auto', 'fp32', 'bf16', 'fp16'])
    args = p.parse_args(argv)
    for key in ('epochs', 'transfer_epochs', 'batch_size', 'transfer_batch_size', 'k'):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise MixBTError(f'--{key} {getattr(args, key)} must be at least 1')
    for key in ('subset', 'workers'):
        if getattr(args, key) < 0:
            raise MixBTError(f'--{key} {getattr(args, key)} must be >= 0')
    if args.temperature is not None and not args.temperature > 0:
        raise MixBTError(f'--temperature {args.temperature} must be a positive number')
    return args


# ---------------------------------------------------------------------------- what is evaluated
def read_run_args(folder):
    """The args.json of a main.py run folder (it records --lmbda, as dataset_of_checkpoint checks), else None."""
    try:
        with open(os.path.join(folder, 'args.json')) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
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
    args.model_path = os.path.realpath(model_path)  # the file's identity, as the probes record it
    resolve_dataset_arg(args, datasets.SPECS)  # its file name, else its run folder's args.json
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
    if not datasets.SPECS[args.dataset].in_memory:  # ImageNet: linear only
        return [('linear', 'linear', args.dataset)]
    return ([('knn', 'knn', args.dataset), ('linear', 'linear', args.dataset)]
            + [(f'transfer_{name}', 'transfer', name) for name in args.transfer_datasets])


# ---------------------------------------------------------------------------- the parts
def run_knn(args, device):
    """{'top1', 'top5', ...} of the kNN monitor, as main.py runs it (main.load_data)."""
    backbone = load_backbone(args.model_path, args.dataset, args.arch)[0]
    spec = datasets.SPECS[args.dataset]
    memory, test = [augment.eval_split(args.dataset, d) for d in
                    datasets.load_splits(args.dataset, args.data_root, spec.splits[1:], args.subset, workers=args.workers)]
    backbone.to(device)
    if args.channels_last:
        backbone.to(memory_format=torch.channels_last)
    top1, top5 = knn.knn_monitor(backbone, memory, test, spec.mean, spec.std, spec.num_classes, device, k=args.k,
                                 temperature=args.temperature, autocast_dtype=autocast_dtype(args.precision, device),
                                 channels_last=args.channels_last)
    return {'top1': top1, 'top5': top5, 'k': args.k, 'temperature': args.temperature,
            'memory_images': len(memory[1]), 'test_images': len(test[1])}


def transfer_missing(args, name):
    """Why transfer set `name` cannot be read under --data_root (its DatasetNotFound message), or
    None: the readers check the index files and that every image exists, before transfer.py loads
    the backbone."""
    try:
        for train in (True, False):
            load_transfer(name, args.data_root, train)
    except datasets.DatasetNotFound as e:
        return str(e)
    return None


def probe_argv(args, part):
    """The linear.py / transfer.py command line of a probe part: a fixed run folder, so that a
    killed part continues from its checkpoint.pth when the evaluation starts again."""
    argv = ['--dataset', args.dataset, '--arch', args.arch, '--model_path', args.model_path,
            '--data_root', args.data_root, '--results_dir', args.eval_dir, '--run_name', part,
            '--seed', str(args.seed), '--gpu', str(args.gpu), '--precision', args.precision]
    if part == 'linear':
        given = {'--epochs': args.epochs, '--batch_size': args.batch_size}
        argv += ['--no_aug'] if args.no_aug else []
    else:
        given = {'--epochs': args.transfer_epochs, '--batch_size': args.transfer_batch_size or args.batch_size}
        argv += ['--transfer_dataset', part[len('transfer_'):]]
    given.update({'--subset': args.subset or None, '--workers': args.workers})
    return argv + [str(x) for flag, value in given.items() if value is not None for x in (flag, value)]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_text(path, text):
    """Write a file whole or not at all (a kill never leaves half a table)."""
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def part_results_path(args, part):
    return os.path.join(args.eval_dir, 'knn.json' if part == 'knn' else os.path.join(part, 'results.json'))


# ---------------------------------------------------------------------------- the table
METRICS = {'knn': (('top1', 'top1'), ('top5', 'top5')),
           'linear': (('top1', 'final_acc@1'), ('top5', 'final_acc@5'), ('best_top1', 'best_acc@1'),
                      ('best_top5', 'best_acc@5'))}
METRICS['transfer'] = METRICS['linear']


def csv_rows(parts, results):
    """[task, dataset, metric, value] of every finished part; values exactly as the part wrote them."""
    return [[task, name, metric, results[part][key]] for part, task, name in parts if part in results
            for metric, key in METRICS[task]]


def markdown(args, parts, results, skipped):
    """The paper's layout: one row for the checkpoint; kNN, linear, then each transfer set, '-' where not run."""
    imagenet = not datasets.SPECS[args.dataset].in_memory
    fmt = lambda v: f'{v:.2f}'
    transfers = [(part, name) for part, task, name in parts if task == 'transfer']
    knn_cell = fmt(results['knn']['top1']) if 'knn' in results else '-'
    lin = results.get('linear')
    # The small-data linear probe: the original does not say which epoch it reported, so both
    # (docs/reproduction.md); ImageNet and transfer: the best epoch, as the originals reported.
    lin_cell = '-' if lin is None else (fmt(lin['best_acc@1']) if imagenet else
                                        f'{fmt(lin["final_acc@1"])} ({fmt(lin["best_acc@1"])})')
    cells = [knn_cell, lin_cell] + [fmt(results[p]['best_acc@1']) if p in results else '-' for p, _ in transfers]
    header = ['checkpoint', 'kNN top-1', 'linear top-1'] + [name for _, name in transfers]
    label = f'{os.path.basename(args.model_path)} ({args.arch}, {args.dataset})'
    lines = [f'# Evaluation of {os.path.basename(args.model_path)}', '',
             f'Checkpoint: `{args.model_path}`. Top-1 accuracy (%) on the test splits.', '',
             '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header),
             '| ' + ' | '.join([label] + cells) + ' |', '']
    if imagenet:
        lines.append('kNN and transfer: defined for the small data sets only. Linear: the best epoch (the official '
                     'recipe reports it).')
    else:
        counts = results.get('knn', {})
        knn_note = 'kNN: not run. ' if not counts else (
            f'kNN: weighted kNN, k {args.k}, T {args.temperature}, on {args.dataset} ({counts["memory_images"]} '
            f'memory / {counts["test_images"]} test images). ')
        lines.append(knn_note + 'Linear: the last epoch (the best epoch in parentheses). Transfer: the best epoch, as '
                     'the original evaluate_transfer.py reports it.')
    if args.subset:
        lines.append(f'Quick run: --subset {args.subset} (only the first {args.subset} images of each split).')
    if skipped:
        lines += ['', 'Skipped (data set not found under --data_root):', '']
        lines += [f'- {name}: {reason}' for name, reason in skipped.items()]
    lines += ['', 'Every number with its top-5 and best epoch: evaluation.csv; each probe\'s run: its folder here.', '']
    return '\n'.join(lines)


def write_tables(args, parts, results, skipped):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator='\n')
    writer.writerow(['task', 'dataset', 'metric', 'value'])
    writer.writerows(csv_rows(parts, results))
    write_text(os.path.join(args.eval_dir, 'evaluation.csv'), out.getvalue())
    write_text(os.path.join(args.eval_dir, 'evaluation.md'), markdown(args, parts, results, skipped))


# ---------------------------------------------------------------------------- the evaluation
def summary(task, values):
    if task == 'knn':
        return f'top-1 {values["top1"]:.2f}, top-5 {values["top5"]:.2f}'
    return f'top-1 {values["final_acc@1"]:.2f} (best {values["best_acc@1"]:.2f}), top-5 {values["final_acc@5"]:.2f}'


def open_folder(args):
    """Create the evaluation folder, lock it (one evaluation per folder) and check that it holds this
    evaluation; rank 0 does it, every rank gets the error. Returns the lock (rank 0) or None."""
    lock, failure = None, None
    if D.is_main():
        try:
            os.makedirs(args.eval_dir, exist_ok=True)
            lock = Lock(args.eval_dir)
            settings = os.path.join(args.eval_dir, 'args.json')
            if os.path.isfile(settings):
                check_resume(read_json(settings), args, RESUME_FREE, (), args.eval_dir)
            write_text(settings, json.dumps(vars(args), indent=2, default=str))
        except MixBTError as e:
            failure = e
            if lock is not None:
                lock.release()
    error = D.broadcast_object(str(failure) if failure else None)
    if failure:
        raise failure
    if error:
        raise MixBTError(error)
    return lock


def run_part(args, part, task, name, device):
    """(numbers, None) of one part as its program wrote them (None on ranks other than 0), or
    (None, why) for a transfer set that is not under --data_root."""
    if task == 'knn':
        values = run_knn(args, device)
        if D.is_main():
            write_text(part_results_path(args, part), json.dumps(values, indent=2))
        return values, None
    if task == 'transfer':
        missing = transfer_missing(args, name)
        if missing:
            return None, missing
    try:
        result = (linear if task == 'linear' else transfer).main(probe_argv(args, part))
    except datasets.DatasetNotFound as e:
        if task == 'linear':  # the checkpoint's own data set: nothing to evaluate without it
            raise
        return None, str(e)
    return (read_json(os.path.join(result['run_dir'], 'results.json')) if D.is_main() else None), None


def evaluate(args, device):
    """Run the parts not finished before; returns (parts, {part: numbers}, {transfer set: why skipped})."""
    parts = plan(args)
    done = D.broadcast_object({part for part, _, _ in parts if os.path.isfile(part_results_path(args, part))})
    results, skipped = {}, {}
    started = time.time()
    for i, (part, task, name) in enumerate(parts, 1):
        step = f'[{i}/{len(parts)}] {task} {name}'
        t0 = time.time()
        if part in done:
            if D.is_main():
                results[part] = read_json(part_results_path(args, part))
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
    return parts, results, skipped


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
        print(f'Evaluating {args.model_path} ({args.arch}, {args.dataset}) in {args.eval_dir}: {parts}', flush=True)
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
