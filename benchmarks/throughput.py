"""Throughput of the data path and of whole Mix-BT training steps, reference-style vs ours.

    python3 -m benchmarks.throughput                          # CUDA: ResNet-18, batch 256, 32x32
    python3 -m benchmarks.throughput --device cpu --small     # a quick CPU run
    python3 -m benchmarks.throughput --compile                # ours with torch.compile
    python3 -m benchmarks.throughput --device cpu --skip_train --profile 5   # where the views' time goes

Prints one JSON object on stdout (images/s count images, each delivered as its two views), and
one line per round on stderr:
(a) the data path alone: the reference's DataLoader (torchvision/PIL views in --workers
    workers, pinned memory on CUDA) vs the batched on-device views (gpu_augment.DeviceViews);
(b) full training steps: reference-style = the reference's own train() loop
    (benchmarks/reference_loop.py: that DataLoader, one fp32 NCHW forward per view, the loss
    inline, three .item() syncs and a tqdm redraw per step) vs ours = main.train_one_epoch
    with on-device views, fused views, channels_last, bf16 autocast on CUDA, optional
    --compile. Also the epoch time for 50k images and, on CUDA, the model-FLOP utilisation:
    the FLOPs of one training step per image (forward and backward of every view and of the
    mixup pass, counted by torch.utils.flop_counter on a CPU copy) x images/s / --peak.
Every number is measured in --rounds interleaved rounds (reference, ours, reference, ours,
...; each with the same --warmup and --steps) on the same device in the same run; the
reported rates and ratios are the medians over the rounds, each round is kept under "rounds".
Data: the real training set when data.load finds it under --data_root, else random uint8
images of the data set's shape (the worst case for the caches of the on-device colour tables).
On a busy machine (load above the core count, recorded as "load_average"), OpenMP threads that
spin while they wait stall each other at every operation of ours: OMP_WAIT_POLICY=PASSIVE (recorded)
or --threads 1 measure the work rather than the contention.
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mixbt import data as datasets  # noqa: E402
from mixbt import gpu_augment  # noqa: E402
from mixbt import readers  # noqa: E402
import main  # noqa: E402
from benchmarks import reference_loop  # noqa: E402
from mixbt.methods import METHODS, Progress  # noqa: E402
from model import build_model  # noqa: E402
from mixbt.runtime import autocast_dtype, grad_scaler  # noqa: E402

CPU_WORKERS = 2  # this benchmark's CPU setting from the start: the reference itself never ran on a CPU


def default_workers(device_type, cpus=None):
    """The reference's 16 DataLoader workers on CUDA (no more than the machine's cores); 2 on a CPU,
    where the workers take cores from the training process itself."""
    cpus = cpus or os.cpu_count() or 1
    return min(reference_loop.REFERENCE_WORKERS, cpus) if device_type == 'cuda' else min(CPU_WORKERS, cpus)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    a = p.add_argument
    a('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a('--dataset', default='cifar10', choices=sorted(gpu_augment.RECIPES))
    a('--data_root', default='data')
    a('--size', type=int, default=None, help='side of the random source images (default: the data set\'s)')
    a('--arch', default='resnet18', choices=['resnet18', 'resnet50'])
    a('--feature_dim', type=int, default=1024)
    a('--batch_size', type=int, default=None, help='default 256 (--small: 32)')
    a('--steps', type=int, default=None, help='timed steps (batches) of each measurement; default 30 (--small: 5)')
    a('--warmup', type=int, default=None,
      help='untimed steps first (worker start-up, cuDNN autotune, compile); default 5 (--small: 2)')
    a('--rounds', type=int, default=3, help='interleaved rounds (reference, ours, reference, ours, ...); '
                                            'the reported rates and ratios are their medians')
    a('--workers', type=int, default=None,
      help='DataLoader workers of the reference-style PIL pipeline (default: 16 on CUDA as the reference ran, '
           f'at most the CPU count; {CPU_WORKERS} on CPU)')
    a('--threads', type=int, default=None, help='torch threads of this process (default: torch\'s)')
    a('--channels_last', default='true', choices=['auto', 'true', 'false'], help='ours (main.py default: true); auto: on for CUDA only')
    a('--compile', action='store_true', help='torch.compile ours')
    a('--peak', type=float, default=989e12, help='peak FLOP/s for the MFU (default: H100/H200 SXM bf16 dense)')
    a('--small', action='store_true', help='CPU-sized run: batch 32, 5 steps, 2 warm-up steps (unless given)')
    a('--skip_train', action='store_true', help='measure the data path only')
    a('--out', default=None, help='also write the JSON object to this file')
    a('--profile', type=int, default=0, metavar='STEPS',
      help='then profile STEPS steps of the on-device views (torch.profiler): their costliest operations, '
           'on stderr and as "aug_profile" in the JSON')
    args = p.parse_args(argv)
    for key, value in zip(('batch_size', 'steps', 'warmup'), (32, 5, 2) if args.small else (256, 30, 5)):
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.workers is None:
        args.workers = default_workers(torch.device(args.device).type)
    for key in ('rounds', 'steps', 'batch_size'):
        if getattr(args, key) < 1:
            p.error(f'--{key} must be at least 1')
    if args.warmup < 0 or args.workers < 0:
        p.error('--warmup and --workers must be >= 0')
    return args


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def setup_device(name):
    """torch.device of --device; on CUDA with an explicit index (torch.cuda.set_device refuses a
    bare 'cuda'), made current, with main.py's cuDNN/TF32 settings."""
    device = torch.device(name)
    if device.type == 'cuda':
        if device.index is None:
            device = torch.device('cuda', torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True  # convolutions; float32 matmuls (losses, whitening) stay full precision
    return device


def mixed_precision(targs, device):
    """(autocast dtype or None, GradScaler or None) for main.py's --precision, as main.main picks them."""
    amp_dtype = autocast_dtype(targs.precision, device)
    return amp_dtype, grad_scaler(amp_dtype, device)


def training_set(args, n):
    """(ArrayData of n images, description): the real set when present, else random uint8."""
    try:
        real = datasets.load(args.dataset, args.data_root, 'train')
        if len(real) >= n and args.size is None:
            return readers.ArrayData(real.images[:n], real.labels[:n], real.classes), f'{args.dataset} train'
    except (readers.DatasetNotFound, FileNotFoundError, ValueError, RuntimeError):
        pass
    side = args.size or {'stl10': 96, 'tiny_imagenet': 64}.get(args.dataset, 32)
    images = np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    return readers.ArrayData(images, np.zeros(n, np.int64), ['x']), f'random uint8 {images.shape}'


def trainer_args(args, ours):
    """main.py's own arguments for the two settings (the CIFAR-10 ResNet-18 Mix-BT recipe)."""
    channels_last = {'auto': args.device.startswith('cuda'), 'true': True, 'false': False}[args.channels_last]
    argv = ['--dataset', args.dataset, '--arch', args.arch, '--feature_dim', str(args.feature_dim),
            '--batch_size', str(args.batch_size), '--lmbda', '0.0078125', '--is_mixup', 'true',
            '--mixup_loss_scale', '4.0', '--lr', '0.01', '--lr_shed', 'cosine', '--epochs', '1',
            '--workers', str(args.workers), '--log_every', str(10 ** 9),
            '--aug', 'gpu' if ours else 'cpu', '--fuse_views', str(ours).lower(),
            '--channels_last', str(ours and channels_last).lower(), '--precision', 'auto' if ours else 'fp32']
    return main.get_args(argv)


class Clock:
    """Starts when step `warmup` is requested (device synced), so that worker start-up,
    autotuning and compilation stay out of the measurement."""

    def __init__(self, warmup, device):
        self.warmup, self.device, self.start = warmup, device, None

    def tick(self, i):
        if i == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()

    def rate(self, images):
        sync(self.device)
        return images / (time.perf_counter() - self.start)


class Timed:
    """A main.py views source (its .epoch(e) generator) that runs a Clock."""

    def __init__(self, source, clock):
        self.source, self.clock = source, clock

    def __len__(self):
        return len(self.source)

    def epoch(self, epoch):
        views = self.source.epoch(epoch)
        for i in range(len(self)):
            self.clock.tick(i)
            yield next(views)


class TimedLoader:
    """A DataLoader (iterated as the reference iterates it, len() included) that runs a Clock."""

    def __init__(self, loader, clock):
        self.loader, self.clock = loader, clock

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        for i in range(len(self)):
            self.clock.tick(i)  # before the batch is fetched, as Timed: both windows hold `steps` fetches
            yield next(batches)


def data_path_rate(args, train, device, ours):
    """Images/s of the views source alone (two views per image, delivered on the device)."""
    targs = trainer_args(args, ours)
    clock = Clock(args.warmup, device)
    if ours:
        for views in Timed(main.build_train_views(targs, train, 2, device), clock).epoch(0):
            pass
    else:
        loader = reference_loop.reference_loader(targs, train, device, args.workers)
        for (pos_1, pos_2), _ in TimedLoader(loader, clock):
            pos_1, pos_2 = pos_1.to(device, non_blocking=True), pos_2.to(device, non_blocking=True)
    return clock.rate(args.steps * args.batch_size)


def step_flops_per_image(targs, method, size, batch=4):
    """FLOPs of one training step per image: torch.utils.flop_counter over the forward and the
    backward of a CPU copy of the method (every view, the mixup pass and the loss) on `batch` images."""
    from torch.utils.flop_counter import FlopCounterMode
    clone = copy.deepcopy(method).to('cpu', memory_format=torch.contiguous_format).train()
    views = [torch.randn(batch, 3, size, size) for _ in range(clone.n_views)]
    with FlopCounterMode(display=False) as counter:
        loss, _ = clone(views, Progress(0, targs.epochs, 0, 1))
        loss.backward()
    return counter.get_total_flops() / batch


def reference_training_rate(args, train, device):
    """(images/s, settings) of the reference's train() loop: its DataLoader, fp32, NCHW, one forward per view."""
    targs = trainer_args(args, ours=False)
    torch.manual_seed(0)
    net = build_model(targs).to(device)
    optimizer = reference_loop.reference_optimizer(net)
    clock = Clock(args.warmup, device)
    loader = TimedLoader(reference_loop.reference_loader(targs, train, device, args.workers), clock)
    reference_loop.train(targs, 1, net, loader, optimizer, device)  # the reference counts epochs from 1
    rate = clock.rate(args.steps * args.batch_size)
    settings = {'loop': 'reference train()', 'aug': 'cpu', 'workers': args.workers,
                'pin_memory': device.type == 'cuda', 'fuse_views': False, 'channels_last': False,
                'precision': 'fp32', 'compile': False, 'host_syncs_per_step': 3}
    return rate, settings


def training_rate(args, train, device, count_flops=True):
    """(images/s, FLOPs of one step per image (None unless count_flops), settings) of ours: main.train_one_epoch."""
    targs = trainer_args(args, ours=True)
    torch.manual_seed(0)
    model = build_model(targs)
    method = METHODS[targs.method].build(targs, model)  # as main.train_run
    flops = step_flops_per_image(targs, method, datasets.SPECS[args.dataset].size) if count_flops else None
    method.to(device)
    if targs.channels_last:
        method.to(memory_format=torch.channels_last)
    optimizer = main.build_optimizer(targs, method)  # as main.main: the method's own parameters too
    amp_dtype, scaler = mixed_precision(targs, device)
    runner = torch.compile(method) if args.compile else method
    clock = Clock(args.warmup, device)
    timed = Timed(main.build_train_views(targs, train, method.n_views, device), clock)
    main.train_one_epoch(targs, 0, runner, method, optimizer, scaler, timed, device, amp_dtype)
    rate = clock.rate(args.steps * args.batch_size)
    settings = {'loop': 'main.train_one_epoch', 'aug': targs.aug, 'fuse_views': targs.fuse_views,
                'channels_last': targs.channels_last,
                'precision': str(amp_dtype).replace('torch.', '') if amp_dtype else 'fp32',
                'compile': bool(args.compile)}
    return rate, flops, settings


def profile_views(args, train, device, steps, top=15):
    """Where the on-device views' time goes: torch.profiler over `steps` steps (after one untimed
    step that builds the tables), the `top` operations by self CPU time, costliest first, as
    {'op', 'self_cpu_ms_per_step', 'calls_per_step'} (and 'self_device_ms_per_step' on CUDA)."""
    from torch.profiler import ProfilerActivity, profile
    views = main.build_train_views(trainer_args(args, ours=True), train, 2, device)
    steps = max(1, min(steps, len(views) - 1))
    batches = views.epoch(0)
    next(batches)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            next(batches)
        sync(device)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    rows = []
    for e in events:
        row = {'op': e.key, 'self_cpu_ms_per_step': e.self_cpu_time_total / 1e3 / steps,
               'calls_per_step': e.count / steps}
        if device.type == 'cuda':
            row['self_device_ms_per_step'] = e.self_device_time_total / 1e3 / steps
        rows.append(row)
    return rows


def median_pair(rounds, key):
    """{'reference', 'ours'} medians over the rounds of rounds[i][key], and the median of the per-round ratios."""
    pairs = [r[key] for r in rounds]
    medians = {side: statistics.median(p[side] for p in pairs) for side in ('reference', 'ours')}
    return medians, statistics.median(p['ours'] / p['reference'] for p in pairs)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def summarise(out, rounds, args, device, settings, step_flops):
    """`out` with the medians over `rounds` (and the rounds themselves), and its one-line message."""
    n = len(rounds)
    out = dict(out, rounds_run=n, complete=n == args.rounds)
    out['aug_images_per_s'], out['aug_speedup'] = median_pair(rounds, 'aug_images_per_s')
    msg = f'median of {n} rounds: data path x{out["aug_speedup"]:.2f}'
    if not args.skip_train:
        rates, out['train_speedup'] = median_pair(rounds, 'train_images_per_s')
        out.update(settings, train_images_per_s=rates, epoch_time_50k_s={k: 50000 / v for k, v in rates.items()},
                   train_flops_per_image=step_flops)
        msg += (f' | training reference {rates["reference"]:.1f} img/s, ours {rates["ours"]:.1f} img/s, '
                f'x{out["train_speedup"]:.2f} (median of the per-round ratios)')
        if device.type == 'cuda':
            out['peak_flops'] = args.peak
            out['mfu'] = {k: v * step_flops / args.peak for k, v in rates.items()}
            msg += f' | MFU reference {out["mfu"]["reference"]:.1%}, ours {out["mfu"]["ours"]:.1%}'
    out['rounds'] = rounds
    return out, msg


def write_json(path, out):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(json.dumps(out, indent=1) + '\n')
    os.replace(tmp, path)


def busy_note():
    """The 1-minute load average (None where the OS has none), with a note on stderr when it exceeds the cores."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = os.cpu_count() or 1
    if load > cores and os.environ.get('OMP_WAIT_POLICY', '').lower() != 'passive':
        log(f'note: load {load:.1f} on {cores} cores: spinning OpenMP threads stall each other; '
            'OMP_WAIT_POLICY=PASSIVE or --threads 1 measure the work rather than the contention')
    return load


def run(argv=None):
    args = get_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = setup_device(args.device)
    train, described = training_set(args, args.batch_size * (args.warmup + args.steps))
    head = {'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
            'torch': torch.__version__, 'threads': torch.get_num_threads(), 'dataset': args.dataset, 'data': described,
            'arch': args.arch, 'batch_size': args.batch_size, 'steps': args.steps, 'warmup': args.warmup,
            'workers': args.workers, 'rounds_asked': args.rounds, 'load_average': busy_note(),
            'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY')}
    rounds, step_flops, settings = [], None, {}
    for r in range(1, args.rounds + 1):
        row = {'round': r, 'aug_images_per_s': {'reference': data_path_rate(args, train, device, ours=False),
                                                 'ours': data_path_rate(args, train, device, ours=True)}}
        aug = row['aug_images_per_s']
        row['aug_speedup'] = aug['ours'] / aug['reference']
        msg = f'round {r}/{args.rounds}: data path reference {aug["reference"]:.0f} img/s, ours {aug["ours"]:.0f} ' \
              f'img/s, x{row["aug_speedup"]:.2f}'
        if not args.skip_train:
            ref_rate, settings['reference'] = reference_training_rate(args, train, device)
            our_rate, flops, settings['ours'] = training_rate(args, train, device, count_flops=step_flops is None)
            step_flops = step_flops or flops
            row['train_images_per_s'] = {'reference': ref_rate, 'ours': our_rate}
            row['train_speedup'] = our_rate / ref_rate
            msg += f' | training reference {ref_rate:.1f} img/s, ours {our_rate:.1f} img/s, x{row["train_speedup"]:.2f}'
        rounds.append(row)
        log(msg)
        out, summary = summarise(head, rounds, args, device, settings, step_flops)
        if args.out:  # after every round: a run stopped early still leaves the rounds it measured
            write_json(args.out, out)
    log(summary)
    if args.profile:
        out['aug_profile'] = profile_views(args, train, device, args.profile)
        log('on-device views, self CPU ms per step: ' + ', '.join(
            f'{r["op"]} {r["self_cpu_ms_per_step"]:.2f} ({r["calls_per_step"]:g} calls)' for r in out['aug_profile']))
        if args.out:
            write_json(args.out, out)
    print(json.dumps(out, indent=1), flush=True)
    return out


if __name__ == '__main__':
    run()
