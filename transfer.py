"""Transfer evaluation of a small-data backbone on fine-grained data sets (docs/protocol.md section 5).

    python3 transfer.py --dataset cifar10 --transfer_dataset dtd --arch resnet18 \
        --model_path checkpoints/4wdhbpcf_0.0078125_1024_256_cifar10_model.pth

Frozen backbone, images resized to the pretraining size (32 for CIFAR, 64 otherwise; a folder:
its --image_size), the transfer set's normalisation, a linear classifier trained with SGD lr
0.01, momentum 0.9, x0.1 at epochs 60 and 80, 100 epochs, batch 128. The backbone's BatchNorm as the original
evaluate_transfer.py: train mode while the classifier trains, eval mode for the test pass.
With --probe_bn eval it stays in eval mode, and as the inputs are not augmented the features
are extracted once and cached (much faster; torchrun-ready: each process takes its part of
every global batch, and the result equals one process's). Same probe loop as linear.py.
"""
import os

import torch
from torchvision import transforms as T

from mixbt import cli_args
from mixbt import data as datasets
from mixbt import distributed as D
from mixbt import folder_data
from mixbt.checkpoints import load_backbone, resolve_dataset_arg
from mixbt.errors import MixBTError
from mixbt.identity import file_sha256
from mixbt.runs import check_writable
from mixbt.probe import frozen_probe
from mixbt.transfer_data import TRANSFER
from mixbt.transfer_readers import load_transfer
from mixbt.runtime import autocast_dtype, run_command, seed_everything


def get_args(argv=None):
    p = cli_args.parser('Transfer evaluation')
    a = p.add_argument
    a('--dataset', default=None, choices=[*datasets.IN_MEMORY, datasets.FOLDER],
      help="pretraining data set of the checkpoint (default: the one its file name or run folder names, else cifar10)")
    a('--transfer_dataset', default='dtd', choices=sorted(TRANSFER), help='data set to evaluate on')
    cli_args.add_common(p, 'arch', 'model_path')
    a('--batch_size', default=128, type=int)
    a('--epochs', default=100, type=int)
    a('--lr', default=0.01, type=float)
    a('--milestones', default=[60, 80], type=int, nargs='*', help='epochs where the lr is multiplied by 0.1')
    a('--screen', default=None, help='accepted for compatibility with the original scripts; unused')
    a('--wandb_group', default=None)
    cli_args.add_common(p, 'data_root', 'results_dir', 'run_name', 'seed', 'workers', 'gpu', 'download', 'subset',
                   'resume', 'precision', 'probe_bn', results_dir=os.path.join('results', 'transfer'))
    a('--flowers_split', default='reference', choices=['reference', 'official'],
      help="vgg_flower: the original's seeded 80/20 split of each class (reference) or setid.mat's train+val/test")
    folder_data.add_folder_args(p, evaluation=True)
    args = resolve_dataset_arg(p.parse_args(argv), [*datasets.IN_MEMORY, datasets.FOLDER])
    folder_data.run_settings(args, args.model_path)  # a folder checkpoint: the size (stem) it was pretrained at
    cli_args.check_ranges(args, at_least_1=('batch_size', 'epochs'), non_negative=('workers', 'subset'), positive=('lr',))
    if any(m < 0 for m in args.milestones):
        raise MixBTError(f'--milestones {args.milestones}: epochs must be >= 0')
    return args


def main(argv=None):
    args = get_args(argv)
    # A folder checkpoint: the row of its image size (its stem); its own images are not needed here.
    size = datasets.spec_of(args, read_folder=False).size
    check_writable(args.results_dir)
    device = D.init_distributed(args.gpu)
    seed_everything(args.seed + D.rank())
    amp = autocast_dtype(args.precision, device)
    args.model_sha256 = file_sha256(args.model_path) if os.path.isfile(args.model_path) else None  # linear.main
    backbone, emb, arch = load_backbone(args.model_path, args.dataset, args.arch)
    spec = TRANSFER[args.transfer_dataset]
    tf = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(spec.mean, spec.std)])
    train = load_transfer(args.transfer_dataset, args.data_root, True, tf, args.download,
                          flowers_split=args.flowers_split)
    test = load_transfer(args.transfer_dataset, args.data_root, False, tf, args.download,
                         flowers_split=args.flowers_split)
    if args.subset:
        train = torch.utils.data.Subset(train, range(min(args.subset, len(train))))
        test = torch.utils.data.Subset(test, range(min(args.subset, len(test))))
    stem = os.path.splitext(os.path.basename(args.model_path))[0]
    name = args.transfer_dataset + ('-official' if args.transfer_dataset == 'vgg_flower'
                                    and args.flowers_split == 'official' else '')
    return frozen_probe(
        args, backbone=backbone, emb=emb, num_classes=spec.num_classes, train_ds=train, train_is_augmented=False,
        test_ds=test, device=device, amp=amp,
        optimizer_fn=lambda params: torch.optim.SGD(params, lr=args.lr, momentum=0.9),
        scheduler_fn=lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, args.milestones, gamma=0.1),
        prefix=f'{stem}_transfer_{name}',
        project=f'Barlow-Twins-MixUp-TransferLearn-[{args.dataset}-to-X]-{arch}',
        wandb_group=args.wandb_group, wandb_name=name)


def cli(argv=None):
    return run_command(lambda: main(argv))


if __name__ == '__main__':
    cli()
