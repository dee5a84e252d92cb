"""Peak memory and time of one training step with --accumulate N (mixbt/accumulate.py).

    python3 -m benchmarks.accumulate_memory                    # CPU: ResNet-18, batch 128, 32x32, N = 1 2 4
    python3 -m benchmarks.accumulate_memory --device cuda --batch_size 512

Each N runs in its own process (CPU: the peak resident set, ru_maxrss, above the resident set once
the model and the batch exist; CUDA: torch.cuda.max_memory_allocated above the same point), so one
N's allocations never hide another's. Prints one JSON object.
"""
import argparse
import json
import subprocess
import sys
import time


def one(args):
    import resource

    import torch

    from mixbt.accumulate import accumulated_step
    from mixbt.methods import MixBT
    from model import Model
    torch.manual_seed(0)
    device = torch.device(args.device)
    method = MixBT(Model(args.feature_dim, 'resnet18'), 0.0078125, is_mixup=True, mixup_loss_scale=4.0).to(device)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)
    views = [torch.randn(args.batch_size, 3, 32, 32, device=device) for _ in range(2)]

    def step():
        if args.n == 1:
            optimizer.zero_grad(set_to_none=True)
            method(views)[0].backward()
            optimizer.step()
        else:
            accumulated_step(method, views, args.n, None, optimizer)
    step()  # the optimiser's moments and every lazy buffer exist from here on
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {'n': args.n, 'peak_mb_above_model': round(peak / 2**20, 1),
            'seconds_per_step': round((time.perf_counter() - start) / args.steps, 3)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu')
    p.add_argument('--batch_size', type=int, default=128)
    p.add_argument('--feature_dim', type=int, default=1024)
    p.add_argument('--steps', type=int, default=2)
    p.add_argument('--ns', type=int, nargs='+', default=[1, 2, 4])
    p.add_argument('--n', type=int, default=None, help=argparse.SUPPRESS)  # one measurement (the child)
    args = p.parse_args()
    if args.n is not None:
        print(json.dumps(one(args)))
        return
    rows = []
    for n in args.ns:
        cmd = [sys.executable, '-m', 'benchmarks.accumulate_memory', '--device', args.device, '--batch_size',
               str(args.batch_size), '--feature_dim', str(args.feature_dim), '--steps', str(args.steps), '--n', str(n)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    print(json.dumps({'device': args.device, 'batch_size': args.batch_size, 'rows': rows}))


if __name__ == '__main__':
    main()
