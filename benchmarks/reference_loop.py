"""The reference implementation's training loop, kept as the baseline of benchmarks/throughput.py.

mix-bt's main.py trained CIFAR-sized data like this on one GPU: a DataLoader of torchvision/PIL
view pairs with 16 workers and pinned memory, one fp32 forward per view (and one for the mixed
images), the loss written out inline, three `.item()` host synchronisations and a tqdm redraw
every step. `train` below is its train() with these changes only: the globals it read
(batch_size, lmbda, epochs, feature_dim, dataset) come from `args` (main.py's resolved
arguments), `.cuda()` is `.to(device)` so that the same loop also runs on a CPU, and
`args.is_mixup` is main.py's boolean rather than the string 'true'. The model is this
repository's (the same ResNet, projector and normalised outputs), with plain BatchNorm.
"""
import math

import numpy as np
import torch
from tqdm import tqdm

from mixbt import augment

REFERENCE_WORKERS = 16  # the reference's DataLoader(num_workers=16, pin_memory=True) on its GPUs


def reference_loader(args, train, device, workers):
    """The reference's train_loader: the data set's two SSL views of each image (its
    CifarPairTransform), shuffled, whole batches only, pinned memory on CUDA."""
    views = augment.ssl_views(args.dataset, args.image_size, args.pipeline)
    dataset = augment.ArrayDataset(train, augment.MultiView([views[0], views[1 % len(views)]]))
    return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                                       pin_memory=device.type == 'cuda', drop_last=True)


def reference_optimizer(net):
    return torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-6)


def off_diagonal(x):
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def adjust_learning_rate(args, optimizer, loader, step):
    max_steps = args.epochs * len(loader)
    warmup_steps = 10 * len(loader)
    base_lr = args.batch_size / 256
    if step < warmup_steps:
        lr = base_lr * step / warmup_steps
    else:
        step -= warmup_steps
        max_steps -= warmup_steps
        q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
        end_lr = base_lr * 0.001
        lr = base_lr * q + end_lr * (1 - q)
    optimizer.param_groups[0]['lr'] = lr * args.lr


def train(args, epoch, net, data_loader, train_optimizer, device):
    batch_size, lmbda, epochs = args.batch_size, args.lmbda, args.epochs
    feature_dim, dataset = args.feature_dim, args.dataset
    net.train()
    total_loss, total_loss_bt, total_loss_mix, total_num, train_bar = 0.0, 0.0, 0.0, 0, tqdm(data_loader)
    for step, data_tuple in enumerate(train_bar, start=epoch * len(train_bar)):
        if args.lr_shed == "cosine":
            adjust_learning_rate(args, train_optimizer, data_loader, step)
        (pos_1, pos_2), _ = data_tuple
        pos_1, pos_2 = pos_1.to(device, non_blocking=True), pos_2.to(device, non_blocking=True)
        _, out_1 = net(pos_1)
        _, out_2 = net(pos_2)

        out_1_norm = (out_1 - out_1.mean(dim=0)) / out_1.std(dim=0)
        out_2_norm = (out_2 - out_2.mean(dim=0)) / out_2.std(dim=0)
        c = torch.matmul(out_1_norm.T, out_2_norm) / batch_size
        on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
        off_diag = off_diagonal(c).pow_(2).sum()
        loss_bt = on_diag + lmbda * off_diag

        if args.is_mixup:
            index = torch.randperm(batch_size).to(device, non_blocking=True)
            alpha = np.random.beta(1.0, 1.0)
            pos_m = alpha * pos_1 + (1 - alpha) * pos_2[index, :]

            _, out_m = net(pos_m)
            out_m_norm = (out_m - out_m.mean(dim=0)) / out_m.std(dim=0)

            cc_m_1 = torch.matmul(out_m_norm.T, out_1_norm) / batch_size
            cc_m_1_gt = alpha * torch.matmul(out_1_norm.T, out_1_norm) / batch_size + \
                (1 - alpha) * torch.matmul(out_2_norm[index, :].T, out_1_norm) / batch_size

            cc_m_2 = torch.matmul(out_m_norm.T, out_2_norm) / batch_size
            cc_m_2_gt = alpha * torch.matmul(out_1_norm.T, out_2_norm) / batch_size + \
                (1 - alpha) * torch.matmul(out_2_norm[index, :].T, out_2_norm) / batch_size

            loss_mix = args.mixup_loss_scale * lmbda * ((cc_m_1 - cc_m_1_gt).pow_(2).sum()
                                                        + (cc_m_2 - cc_m_2_gt).pow_(2).sum())
        else:
            loss_mix = torch.zeros(1).to(device)

        loss = loss_bt + loss_mix
        train_optimizer.zero_grad()
        loss.backward()
        train_optimizer.step()

        total_num += batch_size
        total_loss += loss.item() * batch_size
        total_loss_bt += loss_bt.item() * batch_size
        total_loss_mix += loss_mix.item() * batch_size

        train_bar.set_description(
            'Train Epoch: [{}/{}] lr: {:.3f}x10-3 Loss: {:.4f} lmbda:{:.4f} bsz:{} f_dim:{} dataset: {}'.format(
                epoch, epochs, train_optimizer.param_groups[0]['lr'] * 1000, total_loss / total_num, lmbda,
                batch_size, feature_dim, dataset))
    return total_loss_bt / total_num, total_loss_mix / total_num, total_loss / total_num
