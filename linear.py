"""Linear evaluation of a pretrained backbone (REFERENCE.md section 5).

Small data sets (the reference linear.py):
    python linear.py --dataset cifar10 --arch resnet18 --model_path checkpoints/<file>.pth
frozen backbone (BatchNorm in eval mode) + Linear; Adam 1e-2 decaying exponentially to 1e-6,
weight decay 5e-6, 200 epochs, batch 512, training view = the data set's SSL view.

ImageNet (the official Barlow Twins evaluate.py recipe), one process per GPU with torchrun:
    torchrun --nproc_per_node=8 linear.py --dataset imagenet --data_root /path/to/imagenet \
        --model_path resnet50.pth --lr-classifier 0.3
    ... --weights finetune --train-percent 1 --epochs 20 --lr-backbone 0.005 --lr-classifier 0.5 --weight-decay 0
"""
import argparse
import os
import urllib.request

import torch
import torch.nn as nn

import augment
import data as datasets
import distributed as D
from model import CheckpointError, load_backbone, resolve_dataset_arg
from probe import Probe, extract_features, feature_batches, fit, open_run
from utils import autocast_dtype, grad_scaler, run_command, seed_everything

SIMCLR_SUBSETS = 'https://raw.githubusercontent.com/google-research/simclr/master/imagenet_subsets/{}percent.txt'


def get_args(argv=None):
    p = argparse.ArgumentParser(description='Linear evaluation', allow_abbrev=False)
    a = p.add_argument
    a('--dataset', default=None, choices=sorted(datasets.SPECS),
      help="data set to evaluate on (default: the one the checkpoint's file name or run folder names, else cifar10)")
    a('--arch', default=None, choices=['resnet18', 'resnet50'], help='default: inferred from the checkpoint')
    a('--model_path', required=True, help='pretrained checkpoint (*_model.pth, last.pth, resnet50.pth, ...)')
    a('--batch_size', '--batch-size', default=None, type=int, help='default 512 (ImageNet: 256)')
    a('--epochs', default=None, type=int, help='default 200 (ImageNet: 100)')
    a('--data_root', default='data')
    a('--results_dir', '--checkpoint-dir', default=os.path.join('results', 'linear'), help='run folders are made here')
    a('--run_name', default=None,
      help='fixed run folder name under --results_dir; a run restarted with the same name continues from its '
           'checkpoint.pth automatically (default on SLURM: slurm<job id>_<run>, so a requeued job continues)')
    a('--seed', default=0, type=int)
    a('--workers', default=min(8, os.cpu_count() or 1), type=int)
    a('--gpu', default=0, type=int, help='CUDA device of a single-process run (-1: CPU)')
    a('--no_aug', action='store_true',
      help='train on un-augmented images: features are extracted once and cached (much faster)')
    a('--download', action='store_true')
    a('--subset', default=0, type=int, help='use only N images of each split')
    a('--resume', default=None, help='probe run folder (or its checkpoint.pth) to continue')
    a('--precision', default='auto', choices=['auto', 'fp32', 'bf16', 'fp16'])
    # ImageNet (official evaluate.py flags)
    a('--weights', default='freeze', choices=['freeze', 'finetune'])
    # '--train-perc' is how the official README spells it (its parser allows abbreviations; ours does not)
    a('--train-percent', '--train-perc', dest='train_percent', default=100, type=int, choices=[100, 10, 1])
    a('--train-files', dest='train_files', default=None,
      help='SimCLR subset list for --train-percent 1/10: local file or URL (default: its public URL)')
    a('--lr-backbone', dest='lr_backbone', default=0.0, type=float)
    a('--lr-classifier', dest='lr_classifier', default=0.3, type=float)
    a('--weight-decay', dest='weight_decay', default=None, type=float, help='default 5e-6 (ImageNet: 1e-6)')
    a('--image_size', default=224, type=int, help='ImageNet crop size')
    a('--print-freq', dest='print_freq', default=100, type=int, help='accepted for compatibility')
    args = resolve_dataset_arg(p.parse_args(argv), datasets.SPECS)
    imagenet = args.dataset == 'imagenet'
    args.batch_size = args.batch_size or (256 if imagenet else 512)
    args.epochs = args.epochs or (100 if imagenet else 200)
    args.weight_decay = args.weight_decay if args.weight_decay is not None else (1e-6 if imagenet else 5e-6)
    if args.weights == 'finetune' and not imagenet:
        raise SystemExit('error: --weights finetune is the ImageNet semi-supervised protocol (--dataset imagenet)')
    if args.train_percent != 100 and not imagenet:
        raise SystemExit('error: --train-percent 1/10 selects the SimCLR ImageNet subsets (--dataset imagenet)')
    if args.train_files and args.train_percent == 100:
        raise SystemExit('error: --train-files is the subset list of --train-percent 1 or 10; with --train-percent 100 '
                         'the whole training set is used (give --train-percent too)')
    return args


def wrap_ddp(module, device):
    if D.world_size() == 1:
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == 'cuda' else None)


def image_batches(dataset, args, device, shuffle=True):
    """A function epoch -> this rank's batches of `dataset` (global batch args.batch_size).
    Without shuffling (evaluation) every sample is seen exactly once over all ranks."""
    if shuffle:
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=D.world_size(), rank=D.rank(),
                                                      shuffle=True, seed=args.seed)
    else:
        sampler = range(D.rank(), len(dataset), D.world_size())
    loader = torch.utils.data.DataLoader(dataset, batch_size=max(args.batch_size // D.world_size(), 1),
                                         sampler=sampler, num_workers=args.workers,
                                         pin_memory=device.type == 'cuda')

    def batches(epoch):
        if shuffle:
            sampler.set_epoch(epoch)
        loader.generator = torch.Generator().manual_seed(args.seed * 100003 + epoch * 1009 + D.rank())
        return loader
    return batches, len(loader)


def frozen_probe(args, *, backbone, emb, num_classes, train_ds, train_is_augmented, test_ds, device, amp,
                 optimizer_fn, scheduler_fn, prefix, project, wandb_group=None, wandb_name=None, fc_init=None):
    """Run a frozen-backbone probe: cached features where the inputs are deterministic."""
    probe = Probe(backbone, emb, num_classes, freeze=True)
    if fc_init is not None:
        fc_init(probe.fc)
    probe.to(device)
    run_dir, run_id, saved, log = open_run(args, prefix, project, wandb_group, wandb_name)
    if D.is_main():
        print(f'Run folder: {run_dir}')
    optimizer = optimizer_fn(probe.fc.parameters())
    scheduler = scheduler_fn(optimizer)
    if saved is not None and saved['epoch'] >= args.epochs:  # finished already (a requeued job): report only
        no_batches = lambda *_: iter(())
        return fit(args, probe=probe, ddp_train=probe, train_batches=no_batches, test_forward=probe.fc,
                   test_batches=no_batches, optimizer=optimizer, scheduler=scheduler, device=device, log=log,
                   run_dir=run_dir, run_id=run_id, saved=saved, amp_dtype=amp)
    test_f, test_y = extract_features(probe.backbone, test_ds, device, args.batch_size, args.workers, amp, 'test features')
    test_batches = lambda: feature_batches(test_f, test_y, args.batch_size)
    if train_is_augmented:
        train_batches, steps = image_batches(train_ds, args, device)
        ddp_train = wrap_ddp(probe, device)
    else:
        train_f, train_y = extract_features(probe.backbone, train_ds, device, args.batch_size, args.workers, amp,
                                            'train features')
        train_batches = lambda epoch: feature_batches(train_f, train_y, args.batch_size, True, args.seed + epoch)
        steps = -(-len(train_f) // args.batch_size)
        ddp_train = wrap_ddp(probe.fc, device)
    return fit(args, probe=probe, ddp_train=ddp_train, train_batches=train_batches, test_forward=probe.fc,
               test_batches=test_batches, optimizer=optimizer, scheduler=scheduler, device=device, log=log,
               run_dir=run_dir, run_id=run_id, saved=saved, amp_dtype=amp, steps_per_epoch=steps,
               scaler=grad_scaler(amp, device))


def read_subset_list(source, percent):
    """File names in a SimCLR 1% / 10% ImageNet subset list (a local file or a URL)."""
    if os.path.isfile(source):
        with open(source) as f:
            return [line.strip() for line in f if line.strip()]
    if source.startswith(('http://', 'https://')):
        try:
            with urllib.request.urlopen(source, timeout=30) as r:
                return [line.decode().strip() for line in r.readlines() if line.strip()]
        except OSError as e:
            raise FileNotFoundError(
                f'could not download the {percent}% subset list from {source} ({e}). Download it '
                f'where the network allows and pass --train-files /path/to/{percent}percent.txt') from None
    raise FileNotFoundError(f'--train-files {source}: no such file')


def subset_list(args):
    """The subset list of --train-percent 1/10 (--train-files, default the SimCLR URL). Rank 0
    reads or downloads it once and sends it to the other ranks (the error too, so that no rank
    waits for a list that never comes)."""
    source = args.train_files or SIMCLR_SUBSETS.format(args.train_percent)
    names, error = None, None
    if D.is_main():
        try:
            names = read_subset_list(source, args.train_percent)
        except FileNotFoundError as e:
            error = str(e)
    names, error = D.broadcast_object((names, error))
    if error:
        raise FileNotFoundError(error)
    if not names:
        raise FileNotFoundError(f'the {args.train_percent}% subset list {source} is empty')
    return names


def subset_samples(train_ds, names, percent):
    """The ImageFolder samples of the listed files (SimCLR format: <wnid>_<number>.JPEG, class =
    wnid), in list order. Every listed file must be an image of the training folder: checked
    for the whole list up front, not discovered by a worker in the middle of an epoch."""
    prefix = os.path.join(train_ds.root, '')
    present = {path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, train_ds.root): (path, target)
               for path, target in train_ds.samples}
    wanted = [os.path.join(name.split('_')[0], name) for name in names]
    missing = [name for name, rel in zip(names, wanted) if rel not in present]
    if missing:
        raise FileNotFoundError(f'{len(missing)} of the {len(names)} files of the {percent}% subset list are not '
                                f'images in {train_ds.root}, e.g. {", ".join(missing[:5])}')
    return [present[rel] for rel in wanted]


def imagenet_eval(args, device, amp):
    from torchvision import transforms as T
    normalize = augment.normalize('imagenet')
    train_tf = T.Compose([T.RandomResizedCrop(args.image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    train_ds = datasets.imagenet_folder(args.data_root, 'train', train_tf)
    val_ds = datasets.imagenet_folder(args.data_root, 'val', augment.eval_transform('imagenet', args.image_size))
    if args.train_percent in (1, 10):
        train_ds.samples = subset_samples(train_ds, subset_list(args), args.train_percent)
        train_ds.targets = [t for _, t in train_ds.samples]
        train_ds.imgs = train_ds.samples
    if args.subset:
        train_ds = torch.utils.data.Subset(train_ds, range(min(args.subset, len(train_ds))))
        val_ds = torch.utils.data.Subset(val_ds, range(min(args.subset, len(val_ds))))
    backbone, emb, arch = load_backbone(args.model_path, 'imagenet', args.arch)

    def fc_init(fc):  # official evaluate.py
        fc.weight.data.normal_(mean=0.0, std=0.01)
        fc.bias.data.zero_()

    def optimizer_fn(fc_params, backbone_params=()):
        groups = [{'params': list(fc_params), 'lr': args.lr_classifier}]
        if backbone_params:
            groups.append({'params': list(backbone_params), 'lr': args.lr_backbone})
        return torch.optim.SGD(groups, lr=0, momentum=0.9, weight_decay=args.weight_decay)
    scheduler_fn = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    stem = os.path.splitext(os.path.basename(args.model_path))[0]
    project = 'Barlow-Twins-MixUp-Linear-imagenet-resnet50'
    if args.weights == 'freeze':
        return frozen_probe(args, backbone=backbone, emb=emb, num_classes=1000, train_ds=train_ds,
                            train_is_augmented=True, test_ds=val_ds, device=device, amp=amp,
                            optimizer_fn=optimizer_fn, scheduler_fn=scheduler_fn, prefix=f'{stem}_linear',
                            project=project, fc_init=fc_init)
    # Semi-supervised fine-tuning: the backbone trains too (BatchNorm in train mode).
    probe = Probe(backbone, emb, 1000, freeze=False)
    fc_init(probe.fc)
    probe.to(device)
    run_dir, run_id, saved, log = open_run(args, f'{stem}_semisup{args.train_percent}', project)
    optimizer = optimizer_fn(probe.fc.parameters(), probe.backbone.parameters())
    scheduler = scheduler_fn(optimizer)
    train_batches, steps = image_batches(train_ds, args, device)
    val_batches, _ = image_batches(val_ds, args, device, shuffle=False)
    ddp = wrap_ddp(probe, device)
    return fit(args, probe=probe, ddp_train=ddp, train_batches=train_batches, test_forward=probe,
               test_batches=lambda: val_batches(0), optimizer=optimizer, scheduler=scheduler, device=device, log=log,
               run_dir=run_dir, run_id=run_id, saved=saved, amp_dtype=amp, steps_per_epoch=steps,
               scaler=grad_scaler(amp, device))


def small_eval(args, device, amp):
    backbone, emb, arch = load_backbone(args.model_path, args.dataset, args.arch)
    _, train_split, test_split = datasets.SPLITS[args.dataset]
    load = lambda split: datasets.load(args.dataset, args.data_root, split, args.download, args.workers)
    train, test = load(train_split), load(test_split)
    if args.subset:
        train, test = [datasets.ArrayData(d.images[:args.subset], d.labels[:args.subset], d.classes)
                       for d in (train, test)]
    train_tf = augment.eval_transform(args.dataset) if args.no_aug else augment.train_view(args.dataset)
    train_ds = augment.ArrayDataset(train, train_tf)
    test_ds = augment.ArrayDataset(test, augment.eval_transform(args.dataset))
    gamma = (1e-6 / 1e-2) ** (1 / args.epochs)
    stem = os.path.splitext(os.path.basename(args.model_path))[0]
    return frozen_probe(
        args, backbone=backbone, emb=emb, num_classes=datasets.SPECS[args.dataset].num_classes, train_ds=train_ds,
        train_is_augmented=not args.no_aug, test_ds=test_ds, device=device, amp=amp,
        optimizer_fn=lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=args.weight_decay),
        scheduler_fn=lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma),
        prefix=f'{stem}_linear', project=f'Barlow-Twins-MixUp-Linear-{args.dataset}-{arch}')


def main(argv=None):
    args = get_args(argv)
    device = D.init_distributed(args.gpu)
    seed_everything(args.seed + D.rank())
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    amp = autocast_dtype(args.precision, device)
    if args.dataset == 'imagenet':
        return imagenet_eval(args, device, amp)
    return small_eval(args, device, amp)


def cli(argv=None):
    return run_command(lambda: main(argv), (CheckpointError, datasets.DatasetNotFound, FileNotFoundError, ValueError))


if __name__ == '__main__':
    cli()
