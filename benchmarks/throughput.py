"""Throughput of the data path and of whole Mix-BT training steps, reference-style vs ours.

    python benchmarks/throughput.py                          # CUDA: ResNet-18, batch 256, 32x32
    python benchmarks/throughput.py --device cpu --small     # a quick CPU run
    python benchmarks/throughput.py --compile                # ours with torch.compile

Prints one JSON object (images/s count images, each delivered as its two views):
(a) the data path alone: torchvision/PIL views in --workers DataLoader workers (main.CPUViews)
    vs the batched on-device views (gpu_augment.DeviceViews);
(b) full training steps through main.train_one_epoch, in the same run on the same device:
    reference-style = PIL workers, one forward per view (--fuse_views false), fp32, NCHW;
    ours = on-device views, fused views, channels_last, bf16 autocast on CUDA, optional
    --compile. Also the epoch time for 50k images and, on CUDA, the model-FLOP utilisation:
    the FLOPs of one training step per image (forward and backward of every view and of the
    mixup pass, counted by torch.utils.flop_counter on a CPU copy) x images/s / --peak.
Data: the real training set when data.load finds it under --data_root, else random uint8
images of the data set's shape (speed does not depend on the pixels).
"""
import argparse
import copy
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import data as datasets  # noqa: E402
import gpu_augment  # noqa: E402
import main  # noqa: E402
from methods import Progress, build_method  # noqa: E402
from model import build_model  # noqa: E402
from utils import autocast_dtype, grad_scaler  # noqa: E402


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    a = p.add_argument
    a('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a('--dataset', default='cifar10', choices=sorted(gpu_augment.RECIPES))
    a('--data_root', default='data')
    a('--size', type=int, default=None, help='side of the random source images (default: the data set\'s)')
    a('--arch', default='resnet18', choices=['resnet18', 'resnet50'])
    a('--feature_dim', type=int, default=1024)
    a('--batch_size', type=int, default=256)
    a('--steps', type=int, default=30, help='timed steps (batches)')
    a('--warmup', type=int, default=5, help='untimed steps first (worker start-up, cuDNN autotune, compile)')
    a('--workers', type=int, default=2, help='DataLoader workers of the PIL pipeline')
    a('--threads', type=int, default=None, help='torch threads of this process (default: torch\'s)')
    a('--channels_last', default='true', choices=['auto', 'true', 'false'], help='ours (main.py default: true); auto: on for CUDA only')
    a('--compile', action='store_true', help='torch.compile ours')
    a('--peak', type=float, default=989e12, help='peak FLOP/s for the MFU (default: H100 bf16 dense)')
    a('--small', action='store_true', help='CPU-sized run: batch 32, 5 steps, 2 warm-up steps')
    a('--skip_train', action='store_true', help='measure the data path only')
    args = p.parse_args(argv)
    if args.small:
        args.batch_size, args.steps, args.warmup = 32, 5, 2
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
            return datasets.ArrayData(real.images[:n], real.labels[:n], real.classes), f'{args.dataset} train'
    except (datasets.DatasetNotFound, FileNotFoundError, ValueError, RuntimeError):
        pass
    side = args.size or {'stl10': 96, 'tiny_imagenet': 64}.get(args.dataset, 32)
    images = np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    return datasets.ArrayData(images, np.zeros(n, np.int64), ['x']), f'random uint8 {images.shape}'


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


class Timed:
    """A views source whose clock starts when step `warmup` is requested (device synced), so
    that worker start-up, autotuning and compilation stay out of the measurement."""

    def __init__(self, source, warmup, device):
        self.source, self.warmup, self.device, self.start = source, warmup, device, None

    def __len__(self):
        return len(self.source)

    def epoch(self, epoch):
        views = self.source.epoch(epoch)
        for i in range(len(self)):
            if i == self.warmup:
                sync(self.device)
                self.start = time.perf_counter()
            yield next(views)


def data_path_rate(args, train, device, ours):
    """Images/s of the views source alone (two views per image, delivered on the device)."""
    targs = trainer_args(args, ours)
    timed = Timed(main.build_train_views(targs, train, 2, device), args.warmup, device)
    for views in timed.epoch(0):
        pass
    sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - timed.start)


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


def training_rate(args, train, device, ours):
    """(images/s, FLOPs of one step per image, settings) of main.train_one_epoch."""
    targs = trainer_args(args, ours)
    torch.manual_seed(0)
    model = build_model(targs)
    method = build_method(targs, model)
    flops = step_flops_per_image(targs, method, datasets.SPECS[args.dataset].size)
    method.to(device)
    if targs.channels_last:
        method.to(memory_format=torch.channels_last)
    optimizer = main.build_optimizer(targs, method)  # as main.main: the method's own parameters too
    amp_dtype, scaler = mixed_precision(targs, device)
    runner = torch.compile(method) if ours and args.compile else method
    timed = Timed(main.build_train_views(targs, train, method.n_views, device), args.warmup, device)
    main.train_one_epoch(targs, 0, runner, method, optimizer, scaler, timed, device, amp_dtype)
    sync(device)
    rate = args.steps * args.batch_size / (time.perf_counter() - timed.start)
    settings = {'aug': targs.aug, 'fuse_views': targs.fuse_views, 'channels_last': targs.channels_last,
                'precision': str(amp_dtype).replace('torch.', '') if amp_dtype else 'fp32',
                'compile': bool(ours and args.compile)}
    return rate, flops, settings


def run(argv=None):
    args = get_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = setup_device(args.device)
    train, described = training_set(args, args.batch_size * (args.warmup + args.steps))
    out = {'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
           'torch': torch.__version__, 'threads': torch.get_num_threads(), 'dataset': args.dataset, 'data': described,
           'arch': args.arch, 'batch_size': args.batch_size, 'steps': args.steps, 'warmup': args.warmup,
           'workers': args.workers}
    pil = data_path_rate(args, train, device, ours=False)
    ours = data_path_rate(args, train, device, ours=True)
    out['aug_images_per_s'] = {'pil_workers': pil, 'device': ours}
    out['aug_speedup'] = ours / pil
    if not args.skip_train:
        ref_rate, step_flops, ref_settings = training_rate(args, train, device, ours=False)
        our_rate, _, our_settings = training_rate(args, train, device, ours=True)
        out.update(reference=ref_settings, ours=our_settings,
                   train_images_per_s={'reference': ref_rate, 'ours': our_rate}, train_speedup=our_rate / ref_rate,
                   epoch_time_50k_s={'reference': 50000 / ref_rate, 'ours': 50000 / our_rate})
        out['train_flops_per_image'] = step_flops
        if device.type == 'cuda':
            out['peak_flops'] = args.peak
            out['mfu'] = {'reference': ref_rate * step_flops / args.peak, 'ours': our_rate * step_flops / args.peak}
    print(json.dumps(out, indent=1))
    return out


if __name__ == '__main__':
    run()
