"""evaluate.py's table: evaluation.csv (task, dataset, metric, value) and evaluation.md (the
paper's layout), from the numbers each part wrote."""
import csv
import io
import os

from mixbt import data as datasets
from mixbt import identity

METRICS = {'knn': (('top1', 'top1'), ('top5', 'top5')),
           'linear': (('top1', 'final_acc@1'), ('top5', 'final_acc@5'), ('best_top1', 'best_acc@1'),
                      ('best_top5', 'best_acc@5'))}
METRICS['transfer'] = METRICS['linear']


def write_text(path, text):
    """Write a file whole or not at all (a kill never leaves half a table)."""
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def csv_rows(parts, results):
    """[task, dataset, metric, value] of every finished part; values exactly as the part wrote them."""
    return [[task, name, metric, results[part][key]] for part, task, name in parts if part in results
            for metric, key in METRICS[task]]


def knn_note(args, knn):
    """What the kNN number is: the k it used (the bank may hold fewer images than --k asks)."""
    if not knn:
        return 'kNN: not run. '
    k = knn.get('k', args.k)
    asked = knn.get('k_asked', k)
    k_text = f'k {k}' + (f' (--k {asked}, but the memory bank holds {knn["memory_images"]} images)' if k != asked else '')
    return (f'kNN: weighted kNN, {k_text}, T {knn.get("temperature", args.temperature)}, on {args.dataset} '
            f'({knn["memory_images"]} memory / {knn["test_images"]} test images). ')


def subset_note(args, parts, results):
    """--subset cuts each split to at most its first N images: the counts each part used."""
    used = []
    for part, task, name in parts:
        r = results.get(part, {})
        if 'memory_images' in r:
            used.append(f'kNN {r["memory_images"]} memory / {r["test_images"]} test')
        elif 'train_images' in r:
            used.append(f'{name if task == "transfer" else "linear"} {r["train_images"]} train / {r["test_images"]} test')
    return (f'Quick run: --subset {args.subset} (each split cut to at most its first {args.subset} images'
            + (f'; images used: {", ".join(used)}' if used else '') + ').')


def bn_note(parts, results):
    modes = sorted({(results[p].get('identity') or {}).get('probe_bn') for p, _, _ in parts if p in results
                    and 'train_images' in results[p]} - {None})
    text = {'train': 'train mode while the classifier trained (the original), eval mode at test',
            'eval': 'eval mode throughout (--probe_bn eval)'}
    return ('Probes: the frozen backbone\'s BatchNorm in ' + '; '.join(text[m] for m in modes) + '.') if modes else ''


def markdown(args, parts, results, skipped):
    """The paper's layout: one row for the checkpoint; kNN, linear, then each transfer set, '-' where not run."""
    imagenet = datasets.spec_of(args).protocol == 'imagenet'
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
             f'Checkpoint: `{args.model_path}` (sha256 {args.model_sha256[:12]}...). Top-1 accuracy (%) on the test '
             f'splits.', '', '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header),
             '| ' + ' | '.join([label] + cells) + ' |', '']
    if imagenet:
        lines.append('kNN and transfer: defined for the small data sets only. Linear: the best epoch (the official '
                     'recipe reports it).')
    else:
        lines.append(knn_note(args, results.get('knn')) + 'Linear: the last epoch (the best epoch in parentheses). '
                     'Transfer: the best epoch, as the original evaluate_transfer.py reports it.')
    lines += [line for line in (bn_note(parts, results), args.subset and subset_note(args, parts, results)) if line]
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
    table = os.path.join(args.eval_dir, 'evaluation.csv')
    write_text(table, out.getvalue())
    write_text(os.path.join(args.eval_dir, 'evaluation.md'), markdown(args, parts, results, skipped))
    # Written after the table: a kill in between leaves a record that no longer matches, never the reverse.
    identity.record_identity(table, {'model_sha256': args.model_sha256})
