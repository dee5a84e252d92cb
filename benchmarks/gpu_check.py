"""The Python half of benchmarks/gpu_check.sh: size the Fashion-MNIST run to the time left, and
write summary.json with its one-line summary.

    python3 -m benchmarks.gpu_check plan --throughput OUT/throughput.json --seconds 300 [--subset N] [--batch 256]
        prints: EPOCHS KNN_EVERY IMAGES_PER_S (the rate the plan used)
    python3 -m benchmarks.gpu_check summarize --out OUT [--stage name=status:rc:seconds ...] [--plan E K R]
        writes OUT/summary.json, prints the one-line summary

Reads only what the stages wrote: a stage that failed leaves its keys null, the others still count.
"""
import argparse
import csv
import json
import math
import os
import sys

FASHION_TRAIN, FASHION_TEST = 60000, 10000  # Fashion-MNIST's splits; the kNN memory bank is the training set
EVALUATIONS = 10  # kNN evaluations in a planned run (besides the random-init one and the last epoch's)


def plan_epochs(rate, seconds, n_train, n_test, batch, max_epochs=100, startup_s=30.0, epoch_overhead_s=1.0,
                safety=1.15, evaluations=EVALUATIONS):
    """(epochs, knn_every, estimated seconds): the most epochs (1 to max_epochs) whose training and kNN
    evaluations fit in `seconds` at `rate` training images/s (main.py's img/s, as benchmarks/throughput.py
    measures it for the same model, batch and views). An epoch: its whole batches at that rate, x `safety`,
    plus `epoch_overhead_s` (last.pth, CSV, plot). A kNN evaluation forwards one view of the memory bank and
    the test set without gradients, about a ninth of a training image's work (three views, forward and
    backward); it is counted at a third, with 2 s of fixed cost. One evaluation every knn_every epochs, about
    `evaluations` in all, plus the random-init one (--knn_init) and the last epoch's."""
    if rate <= 0:
        raise ValueError(f'rate {rate} must be positive')
    images = max(1, n_train // batch) * batch
    epoch_s = images / rate * safety + epoch_overhead_s
    knn_s = (n_train + n_test) / (3 * rate) + 2.0

    def cost(epochs):
        every = max(1, math.ceil(epochs / evaluations))
        knn_runs = 1 + epochs // every + (epochs % every != 0)
        return every, startup_s + epochs * epoch_s + knn_runs * knn_s

    for epochs in range(max(1, max_epochs), 0, -1):
        every, seconds_needed = cost(epochs)
        if seconds_needed <= seconds:
            return epochs, every, seconds_needed
    every, seconds_needed = cost(1)
    return 1, every, seconds_needed  # not even one epoch fits: one, and the stage's time limit decides


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def number(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def run_statistics(path):
    """The Fashion-MNIST run's numbers from its statistics CSV (main.py's RunLog: epoch 0 = random init)."""
    try:
        with open(path, newline='') as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    knn = [(int(float(r['epoch'])), number(r.get('knn_top1'))) for r in rows if r.get('epoch') not in (None, '')]
    init = next((v for e, v in knn if e == 0 and v is not None), None)
    trained = [(e, v) for e, v in knn if e > 0 and v is not None]
    best_epoch, best = max(trained, key=lambda ev: ev[1]) if trained else (None, None)
    rates = [number(r.get('images_per_s')) for r in rows if number(r.get('epoch')) not in (None, 0.0)]
    rates = [v for v in rates if v]
    epochs_run = max((e for e, _ in knn), default=0)
    elapsed = [number(r.get('elapsed_s')) for r in rows]
    elapsed = [v for v in elapsed if v is not None]
    return {'epochs_run': epochs_run, 'init_knn_top1': init, 'best_knn_top1': best, 'best_epoch': best_epoch,
            'last_knn_top1': trained[-1][1] if trained else None,
            'knn_gain': best - init if best is not None and init is not None else None,
            'images_per_s': sorted(rates)[len(rates) // 2] if rates else None,
            'elapsed_s': elapsed[-1] if elapsed else None}


def summarize(out_dir, stages, plan=None):
    bench = read_json(os.path.join(out_dir, 'throughput.json')) or {}
    run = run_statistics(os.path.join(out_dir, 'fashionmnist_statistics.csv'))
    rates = bench.get('train_images_per_s') or {}
    mfu = bench.get('mfu') or {}
    summary = {
        'device': bench.get('device'), 'torch': bench.get('torch'),
        'images_per_s': rates.get('ours'), 'reference_images_per_s': rates.get('reference'),
        'ratio': bench.get('train_speedup'), 'rounds': bench.get('rounds_run'),
        'throughput_complete': bench.get('complete'),
        'round_ratios': [r.get('train_speedup') for r in bench.get('rounds', []) if 'train_speedup' in r] or None,
        'mfu': mfu.get('ours'), 'reference_mfu': mfu.get('reference'),
        'epoch_time_50k_s': (bench.get('epoch_time_50k_s') or {}).get('ours'),
        'reference_epoch_time_50k_s': (bench.get('epoch_time_50k_s') or {}).get('reference'),
        'throughput_data': bench.get('data'), 'reference_workers': bench.get('workers'),
        'epochs_planned': plan[0] if plan else None, 'knn_every': plan[1] if plan else None,
        'plan_images_per_s': plan[2] if plan else None,
        'epochs_run': run.get('epochs_run'), 'init_knn_top1': run.get('init_knn_top1'),
        'best_knn_top1': run.get('best_knn_top1'), 'best_epoch': run.get('best_epoch'),
        'last_knn_top1': run.get('last_knn_top1'), 'knn_gain': run.get('knn_gain'),
        'run_images_per_s': run.get('images_per_s'), 'run_elapsed_s': run.get('elapsed_s'),
        'stages': stages,
    }
    tmp = os.path.join(out_dir, 'summary.json.tmp')
    with open(tmp, 'w') as f:
        json.dump(summary, f, indent=1)
        f.write('\n')
    os.replace(tmp, os.path.join(out_dir, 'summary.json'))
    return summary


def one_line(s):
    fmt = lambda v, spec: '?' if v is None else format(v, spec)
    parts = [f'gpu_check {s["device"] or "?"}',
             f'train {fmt(s["images_per_s"], ".0f")} img/s ours vs {fmt(s["reference_images_per_s"], ".0f")} '
             f'reference: x{fmt(s["ratio"], ".2f")} (median of {s["rounds"] or "?"} rounds)']
    if s['mfu'] is not None:
        parts.append(f'MFU {s["mfu"]:.1%} (reference {fmt(s["reference_mfu"] and 100 * s["reference_mfu"], ".1f")}%)')
    parts.append(f'50k-image epoch {fmt(s["epoch_time_50k_s"], ".1f")} s')
    parts.append(f'Fashion-MNIST {s["epochs_run"] if s["epochs_run"] is not None else "?"}/'
                 f'{s["epochs_planned"] or "?"} epochs: kNN {fmt(s["init_knn_top1"], ".2f")} random init -> '
                 f'{fmt(s["best_knn_top1"], ".2f")} best ({fmt(s["knn_gain"], "+.2f")})')
    parts.append('stages ' + ', '.join(f'{k} {v["status"]}' for k, v in s['stages'].items()))
    return ' | '.join(parts)


def parse_stage(text):
    name, _, rest = text.partition('=')
    status, rc, seconds = (rest.split(':') + ['', '', ''])[:3]
    return name, {'status': status, 'rc': int(rc) if rc.lstrip('-').isdigit() else None,
                  'seconds': int(seconds) if seconds.isdigit() else None}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = p.add_subparsers(dest='command', required=True)
    a = sub.add_parser('plan')
    a.add_argument('--throughput', required=True, help="throughput.json: its median 'ours' training img/s")
    a.add_argument('--fallback_rate', type=float, default=None, help='img/s when throughput.json has none')
    a.add_argument('--seconds', type=float, required=True, help='time the run may take, start-up included')
    a.add_argument('--subset', type=int, default=0, help="main.py's --subset (0: the whole data set)")
    a.add_argument('--batch', type=int, default=256)
    a.add_argument('--max_epochs', type=int, default=100)
    a.add_argument('--startup_s', type=float, default=30.0)
    s = sub.add_parser('summarize')
    s.add_argument('--out', required=True)
    s.add_argument('--stage', action='append', default=[], help='name=status:rc:seconds, in order')
    s.add_argument('--plan', nargs=3, type=float, default=None, metavar=('EPOCHS', 'KNN_EVERY', 'RATE'))
    args = p.parse_args(argv)
    if args.command == 'plan':
        rate = number(((read_json(args.throughput) or {}).get('train_images_per_s') or {}).get('ours'))
        rate = rate or args.fallback_rate
        if not rate:
            p.error(f'no training img/s in {args.throughput} and no --fallback_rate')
        n_train = min(args.subset, FASHION_TRAIN) if args.subset else FASHION_TRAIN
        n_test = min(args.subset, FASHION_TEST) if args.subset else FASHION_TEST
        epochs, every, needed = plan_epochs(rate, args.seconds, n_train, n_test, args.batch, args.max_epochs,
                                            args.startup_s)
        print(f'plan: {epochs} epochs, kNN every {every}, about {needed:.0f} s of {args.seconds:.0f} s at '
              f'{rate:.1f} img/s', file=sys.stderr)
        print(epochs, every, f'{rate:.6g}')
        return
    plan = [int(args.plan[0]), int(args.plan[1]), args.plan[2]] if args.plan else None
    print(one_line(summarize(args.out, dict(parse_stage(t) for t in args.stage), plan)))


if __name__ == '__main__':
    main()
