"""Linear evaluation of a pretrained backbone (docs/protocol.md section 5).

Small data sets (the reference linear.py):
    python3 linear.py --dataset cifar10 --arch resnet18 --model_path checkpoints/<file>.pth
frozen backbone + Linear; Adam 1e-2 decaying exponentially to 1e-6, weight decay 5e-6, 200
epochs, batch 512, training view = the data set's SSL view. The backbone's BatchNorm as the
original: train mode while the classifier trains (its running statistics follow the training
batches), eval mode for the test pass; --probe_bn eval keeps it in eval mode throughout (and,
with --no_aug, trains on cached features: much faster).

ImageNet (the official Barlow Twins evaluate.py recipe), one process per GPU with torchrun:
    torchrun --nproc_per_node=8 linear.py --dataset imagenet --data_root /path/to/imagenet \
        --model_path resnet50.pth --lr-classifier 0.3
    ... --weights finetune --train-percent 1 --epochs 20 --lr-backbone 0.005 --lr-classifier 0.5 --weight-decay 0
"""
import os
import urllib.request

import torch

from mixbt import augment
from mixbt import cli_args
from mixbt import data as datasets
from mixbt import distributed as D
from mixbt import folder_data
from mixbt import formats
from mixbt import readers
from mixbt.checkpoints import load_backbone, resolve_dataset_arg
from mixbt.errors import MixBTError
from mixbt.identity import file_sha256
from mixbt.runs import check_writable
from mixbt.probe import Probe, fit, frozen_probe, image_batches, wrap_ddp
from mixbt.probe_runs import folder_held, open_run
from mixbt.runtime import autocast_dtype, grad_scaler, run_command, seed_everything

SIMCLR_SUBSETS = 'https://raw.githubusercontent.com/google-research/simclr/master/imagenet_subsets/{}percent.txt'


def get_args(argv=None):
    p = cli_args.parser('Linear evaluation')
    a = p.add_argument
    a('--dataset', default=None, choices=datasets.DATASETS,
      help="data set to evaluate on (default: the one the checkpoint's file name or run folder names, else cifar10)")
    cli_args.add_common(p, 'arch', 'model_path')
    a('--batch_size', '--batch-size', default=None, type=int, help='default 512 (ImageNet: 256)')
    a('--epochs', default=None, type=int, help='default 200 (ImageNet: 100)')
    cli_args.add_common(p, 'data_root', 'results_dir', 'run_name', 'seed', 'workers', 'gpu',
                   results_dir=os.path.join('results', 'linear'))
    a('--no_aug', action='store_true',
      help='train on un-augmented images (with --probe_bn eval the features are extracted once and cached)')
    cli_args.add_common(p, 'probe_bn', probe_bn=dict(
        default=None, help="the frozen backbone's BatchNorm while the classifier trains: train (the original "
                           "linear.py: batch statistics, running statistics updated; eval mode at test) or eval "
                           "(ours: never changed; cached features with --no_aug). Default train; ImageNet: eval, as "
                           "the official evaluate.py"))
    cli_args.add_common(p, 'download', 'skip_bad_images', 'subset', 'resume', 'precision')
    # ImageNet (official evaluate.py flags)
    a('--weights', default='freeze', choices=['freeze', 'finetune'])
    # '--train-perc' is how the official README spells it (its parser allows abbreviations; ours does not)
    a('--train-percent', '--train-perc', dest='train_percent', default=100, type=int, choices=[100, 10, 1])
    a('--train-files', dest='train_files', default=None,
      help='SimCLR subset list for --train-percent 1/10: local file or URL (default: its public URL)')
    a('--lr-backbone', dest='lr_backbone', default=None, type=float, help='ImageNet: default 0.0')
    a('--lr-classifier', dest='lr_classifier', default=None, type=float, help='ImageNet: default 0.3')
    a('--weight-decay', dest='weight_decay', default=None, type=float, help='default 5e-6 (ImageNet: 1e-6)')
    folder_data.add_folder_args(p, evaluation=True)  # --image_size: also the ImageNet crop size (default 224)
    a('--print-freq', dest='print_freq', default=100, type=int, help='accepted for compatibility')
    return resolve(resolve_dataset_arg(p.parse_args(argv), datasets.DATASETS))


def resolve(args):
    """The data set's protocol fills the defaults left unset; settings that cannot apply are refused."""
    folder_data.run_settings(args, args.model_path)  # a folder: the pretraining run's size, labels, memory
    args.image_size = args.image_size or 224
    spec = datasets.spec_of(args)  # a folder is read here, before any work
    folder_data.require(spec, 'linear.py')
    if args.dataset == datasets.FOLDER:  # its files: a probe is continued or reused only on the same images
        args.folder_identity = spec.identity
    imagenet = spec.protocol == 'imagenet'
    for key, value in (('batch_size', 256 if imagenet else 512), ('epochs', 100 if imagenet else 200),
                       ('weight_decay', 1e-6 if imagenet else 5e-6)):
        if getattr(args, key) is None:
            setattr(args, key, value)
    cli_args.check_ranges(args, at_least_1=('batch_size', 'epochs'), non_negative=('workers', 'subset', 'weight_decay'))
    if not imagenet:
        given = [f'--{k.replace("_", "-")}' for k in ('lr_classifier', 'lr_backbone') if getattr(args, k) is not None]
        if given:
            raise MixBTError(f'{" and ".join(given)}: the ImageNet protocol\'s learning rates; the small-data probe uses '
                             'Adam 1e-2 decaying to 1e-6 (docs/protocol.md section 5). Leave them out')
    else:
        args.lr_classifier = 0.3 if args.lr_classifier is None else args.lr_classifier
        args.lr_backbone = 0.0 if args.lr_backbone is None else args.lr_backbone
    if args.weights == 'finetune' and not imagenet:
        raise MixBTError('--weights finetune is the ImageNet semi-supervised protocol (--dataset imagenet)')
    if args.weights == 'finetune' and args.probe_bn is not None:
        raise MixBTError('--probe_bn is the BatchNorm mode of a frozen backbone; with --weights finetune the backbone '
                         'trains, BatchNorm included. Leave it out')
    if args.weights == 'freeze' and args.probe_bn is None:
        args.probe_bn = 'eval' if imagenet else 'train'
    if args.train_percent != 100 and not imagenet:
        raise MixBTError('--train-percent 1/10 selects the SimCLR ImageNet subsets (--dataset imagenet)')
    if args.train_files and args.train_percent == 100:
        raise MixBTError('--train-files is the subset list of --train-percent 1 or 10; with --train-percent 100 '
                         'the whole training set is used (give --train-percent too)')
    return args


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
            raise readers.DatasetNotFound(
                f'could not download the {percent}% subset list from {source} ({e}). Download it '
                f'where the network allows and pass --train-files /path/to/{percent}percent.txt') from None
    raise readers.DatasetNotFound(f'--train-files {source}: no such file')


def subset_list(args):
    """The subset list of --train-percent 1/10 (--train-files, default the SimCLR URL). Rank 0
    reads or downloads it once and sends it to the other ranks (the error too, so that no rank
    waits for a list that never comes)."""
    source = args.train_files or SIMCLR_SUBSETS.format(args.train_percent)
    names, error = None, None
    if D.is_main():
        try:
            names = read_subset_list(source, args.train_percent)
        except readers.DatasetNotFound as e:
            error = str(e)
    names, error = D.broadcast_object((names, error))
    if error:
        raise readers.DatasetNotFound(error)
    if not names:
        raise readers.DatasetNotFound(f'the {args.train_percent}% subset list {source} is empty')
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
        raise readers.DatasetNotFound(f'{len(missing)} of the {len(names)} files of the {percent}% subset list are not '
                                f'images in {train_ds.root}, e.g. {", ".join(missing[:5])}')
    return [present[rel] for rel in wanted]


def imagenet_eval(args, device, amp):
    from torchvision import transforms as T
    normalize = augment.normalize(args.dataset)
    train_tf = T.Compose([T.RandomResizedCrop(args.image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    train_ds = datasets.image_folder(args.dataset, args.data_root, 'train', train_tf, skip_bad=args.skip_bad_images)
    val_ds = datasets.image_folder(args.dataset, args.data_root, 'val',
                                   augment.eval_transform(args.dataset, args.image_size))
    if args.train_percent in (1, 10):
        train_ds.samples = subset_samples(train_ds, subset_list(args), args.train_percent)
        train_ds.targets = [t for _, t in train_ds.samples]
        train_ds.imgs = train_ds.samples
    if args.subset:
        train_ds = torch.utils.data.Subset(train_ds, range(min(args.subset, len(train_ds))))
        val_ds = torch.utils.data.Subset(val_ds, range(min(args.subset, len(val_ds))))
    backbone, emb, arch = load_backbone(args.model_path, args.dataset, args.arch)
    images = {'train_images': len(train_ds), 'test_images': len(val_ds)}
    num_classes = datasets.spec_of(args).num_classes

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
    project = f'Barlow-Twins-MixUp-Linear-{args.dataset}-resnet50'
    if args.weights == 'freeze':
        result = frozen_probe(args, backbone=backbone, emb=emb, num_classes=num_classes, train_ds=train_ds,
                              train_is_augmented=True, test_ds=val_ds, device=device, amp=amp,
                              optimizer_fn=optimizer_fn, scheduler_fn=scheduler_fn, prefix=f'{stem}_linear',
                              project=project, fc_init=fc_init)
        report_skipped(args, train_ds, device)
        return result
    # Semi-supervised fine-tuning: the backbone trains too (BatchNorm in train mode).
    probe = Probe(backbone, emb, num_classes, freeze=False)
    fc_init(probe.fc)
    probe.to(device)
    folder, saved, log = open_run(args, f'{stem}_semisup{args.train_percent}', project)
    with folder_held(folder):
        optimizer = optimizer_fn(probe.fc.parameters(), probe.backbone.parameters())
        scheduler = scheduler_fn(optimizer)
        train_batches, steps = image_batches(train_ds, args, device)
        val_batches, _ = image_batches(val_ds, args, device, shuffle=False)
        ddp = wrap_ddp(probe, device)
        result = fit(args, probe=probe, ddp_train=ddp, train_batches=train_batches, test_forward=probe,
                     test_batches=lambda: val_batches(0), optimizer=optimizer, scheduler=scheduler, device=device,
                     log=log, run_dir=folder.path, run_id=folder.run_id, saved=saved, amp_dtype=amp,
                     steps_per_epoch=steps, scaler=grad_scaler(amp, device), images=images)
    report_skipped(args, train_ds, device)
    return result


def small_eval(args, device, amp):
    backbone, emb, arch = load_backbone(args.model_path, args.dataset, args.arch)
    spec = datasets.spec_of(args)
    _, train_split, test_split = spec.splits
    load = lambda split: datasets.load(args.dataset, args.data_root, split, args.download, args.workers,
                                       skip_bad=args.skip_bad_images and split == train_split, subset=args.subset)
    train, test = load(train_split), load(test_split)
    train_tf = augment.eval_transform(args.dataset) if args.no_aug else augment.train_view(args.dataset)
    train_ds = augment.ArrayDataset(train, train_tf)
    test_ds = augment.ArrayDataset(test, augment.eval_transform(args.dataset))
    gamma = (1e-6 / 1e-2) ** (1 / args.epochs)
    stem = os.path.splitext(os.path.basename(args.model_path))[0]
    return frozen_probe(
        args, backbone=backbone, emb=emb, num_classes=spec.num_classes, train_ds=train_ds,
        train_is_augmented=not args.no_aug, test_ds=test_ds, device=device, amp=amp,
        optimizer_fn=lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=args.weight_decay),
        scheduler_fn=lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma),
        prefix=f'{stem}_linear', project=f'Barlow-Twins-MixUp-Linear-{args.dataset}-{arch}')


def report_skipped(args, dataset, device):
    """The unreadable training images that --skip_bad_images replaced, over all ranks."""
    if not args.skip_bad_images:
        return
    skipped, first = formats.take_skipped_images(dataset)
    skipped = int(D.all_reduce_sum(torch.tensor([float(skipped)], device=device)).item())
    if skipped and D.is_main():
        print(f'replaced {skipped} unreadable training images (--skip_bad_images){", e.g. " + first if first else ""}')


def main(argv=None):
    args = get_args(argv)
    check_writable(args.results_dir)
    # The backbone's identity, taken before it is read: a probe is continued (and its result reused)
    # only on the same content (probe_runs.probe_identity).
    args.model_sha256 = file_sha256(args.model_path) if os.path.isfile(args.model_path) else None
    device = D.init_distributed(args.gpu)
    seed_everything(args.seed + D.rank())
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    amp = autocast_dtype(args.precision, device)
    if datasets.spec_of(args).protocol == 'imagenet':
        return imagenet_eval(args, device, amp)
    return small_eval(args, device, amp)


def cli(argv=None):
    return run_command(lambda: main(argv))


if __name__ == '__main__':
    cli()
