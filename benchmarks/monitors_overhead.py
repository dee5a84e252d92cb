"""What the overfitting monitors (mixbt/monitors.py) add to the kNN monitor's time.

    python3 -m benchmarks.monitors_overhead --threads 1          # resnet18, 32 px, memory 5000, test 1000, CPU
    python3 -m benchmarks.monitors_overhead --device cuda --memory 50000 --test 10000 --end_to_end

Times knn.knn_metrics (the embedding of memory and test that both share) and each part the
monitors add to it, on random uint8 images with the CIFAR-10 view recipe. --end_to_end also times
knn_metrics against monitors.overfitting_metrics, interleaved --repeats times. On the CPU the clock
is this process's CPU time, which other processes on a busy machine do not inflate; on CUDA, wall
time after a synchronize. Prints one JSON object (seconds: medians; overhead: added / kNN alone).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from mixbt import data as datasets
from mixbt import knn, monitors
from model import Model


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='resnet18')
    p.add_argument('--feature_dim', type=int, default=1024)
    p.add_argument('--memory', type=int, default=5000)
    p.add_argument('--test', type=int, default=1000)
    p.add_argument('--pairs', type=int, default=monitors.PAIRS)
    p.add_argument('--device', default='cpu')
    p.add_argument('--repeats', type=int, default=3, help='of each added part (the kNN monitor: once)')
    p.add_argument('--end_to_end', action='store_true', help='also time the two calls whole, interleaved')
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    return p.parse_args(argv)


def timed(fn, device):
    clock = time.perf_counter if device.type == 'cuda' else time.process_time
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = clock()
    out = fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return clock() - start, out


def median_time(fn, device, repeats):
    return statistics.median(timed(fn, device)[0] for _ in range(repeats))


def main(argv=None):
    args = get_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    spec = datasets.SPECS['cifar10']
    images = torch.randint(0, 256, (args.memory + args.test, 32, 32, 3), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (args.memory + args.test,), generator=g)
    memory, test = (images[:args.memory], labels[:args.memory]), (images[args.memory:], labels[args.memory:])
    model = Model(args.feature_dim, args.arch).to(device)
    common = dict(k=200, temperature=0.5)
    knn_alone = lambda: knn.knn_metrics(model.f, memory, test, spec.mean, spec.std, 10, device, features=True,
                                        **common)
    seconds = {}
    seconds['knn'], (_, (bank, tested)) = timed(knn_alone, device)
    projector = monitors.Projector(model)
    unit = F.normalize(bank[0], dim=-1)
    parts = {
        'leave_one_out': lambda: monitors.leave_one_out_top1(unit, bank[1], 10, **common),
        'erank_features': lambda: monitors.effective_rank(tested[0]),
        'erank_embeddings': lambda: monitors.effective_rank(monitors.embed(projector, tested[0])),
        'views': lambda: monitors.view_metrics(model.f, projector, test[0], spec.recipe, spec.mean, spec.std,
                                               device, args.pairs),
    }
    seconds.update({k: median_time(fn, device, args.repeats) for k, fn in parts.items()})
    result = {'config': vars(args), 'threads': torch.get_num_threads(), 'seconds': seconds,
              'overhead': sum(seconds[k] for k in parts) / seconds['knn']}
    if args.end_to_end:
        plain = lambda: knn.knn_metrics(model.f, memory, test, spec.mean, spec.std, 10, device, **common)
        watched = lambda: monitors.overfitting_metrics(model.f, model, memory, test, spec.mean, spec.std, 10,
                                                       device, spec.recipe, pairs=args.pairs, **common)
        whole = {'knn': [], 'knn+monitors': []}
        for _ in range(args.repeats):
            whole['knn'].append(timed(plain, device)[0])
            whole['knn+monitors'].append(timed(watched, device)[0])
        medians = {k: statistics.median(v) for k, v in whole.items()}
        result.update(end_to_end=medians, end_to_end_overhead=medians['knn+monitors'] / medians['knn'] - 1)
    print(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()
