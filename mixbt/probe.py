"""The probe's training shared by linear.py and transfer.py: a linear classifier on a frozen (or,
for ImageNet semi-supervised evaluation, fine-tuned) backbone, trained and tested epoch by epoch.

The frozen backbone's BatchNorm (--probe_bn): `train`, the original linear.py and
evaluate_transfer.py, which call net.train() while the classifier trains (batch statistics, and
the running statistics overwritten by the probe's training batches; the weights stay frozen) and
net.eval() for the test pass; or `eval`, where the statistics never change and inputs that are not
augmented are embedded once, the classifier training on the cached features. Under torchrun every
rank takes part in every step and the gradients equal one process's on the global batch
(run_epoch). The run folder, and when a saved probe is continued, are probe_runs.py's.
"""
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from mixbt import distributed as D
from mixbt.saving import atomic_save
from mixbt.errors import MixBTError
from mixbt.identity import write_json
from mixbt.nets import sync_batchnorm
from mixbt.probe_runs import folder_held, open_run, probe_identity
from mixbt.runtime import backward_step, grad_scaler, rng_state, set_rng_state


def format_time(seconds):
    seconds = int(round(seconds))
    return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class Probe(nn.Module):
    """backbone -> flatten -> fc. With freeze=True the backbone has no gradients; its BatchNorm
    follows the probe's mode with bn='train' (the original), and stays in eval mode with bn='eval'."""

    def __init__(self, backbone, embedding_size, num_classes, freeze=True, bn='eval'):
        super().__init__()
        self.backbone, self.freeze = backbone, freeze
        self.bn_train = freeze and bn == 'train'
        self.fc = nn.Linear(embedding_size, num_classes)
        if freeze:
            self.backbone.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        if self.freeze and not self.bn_train:
            self.backbone.eval()
        return self

    def features(self, x):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            return torch.flatten(self.backbone(x), start_dim=1)

    def forward(self, x):
        return self.fc(self.features(x))


@torch.no_grad()
def extract_features(backbone, dataset, device, batch_size=256, workers=0, amp_dtype=None, desc='features'):
    """(features float32 (N, E), labels (N,)) of a whole data set in its order, each rank
    embedding a round-robin shard (gathered at the end)."""
    backbone.eval()
    idx, _ = D.shard_indices(len(dataset))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, idx.tolist()), batch_size=batch_size,
                                         num_workers=workers, pin_memory=device.type == 'cuda')
    feats, labels = [], []
    for x, y in tqdm(loader, desc=desc, disable=not D.is_main(), leave=False, dynamic_ncols=True):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            f = torch.flatten(backbone(x.to(device, non_blocking=True)), start_dim=1)
        feats.append(f.float())
        labels.append(y.to(device, non_blocking=True))
    feats = torch.cat(feats) if feats else torch.zeros(0, 1, device=device)
    labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    n = len(dataset)
    return D.unshard(D.all_gather_cat(feats), n), D.unshard(D.all_gather_cat(labels), n)


def feature_batches(features, labels, batch_size, shuffle=False, seed=0):
    """Batches of cached features as (x, y, global batch count). Under torch.distributed each
    rank takes its part of every global batch (torch.tensor_split: sizes differ by at most one,
    possibly zero), so every rank runs every step and no sample is dropped."""
    n = len(features)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    order = order.to(features.device)
    for start in range(0, n, batch_size):
        chunk = order[start:start + batch_size]
        mine = torch.tensor_split(chunk, D.world_size())[D.rank()] if D.world_size() > 1 else chunk
        yield features[mine], labels[mine], len(chunk)


def linear_eval_on_embeddings(train_x, train_y, test_x, test_y, num_classes=None, epochs=500, batch_size=1000,
                              lr=1e-2, lr_end=1e-6, weight_decay=5e-6, seed=0):
    """The W-MSE code's linear evaluation at the end of training (eval/sgd.py; docs/protocol.md
    section 6): {'linear_top1', 'linear_top5'} (%) of a linear layer trained on precomputed
    embeddings (no augmentation): Adam with weight decay 5e-6, lr 1e-2 decayed exponentially after
    each epoch to reach 1e-6 after 500 epochs, cross-entropy over mini-batches of 1000 of a new
    permutation each epoch. The original reshapes the permutation to (-1, 1000), so it needs a
    multiple of 1000 samples (all four data sets are); here a last, smaller batch takes the rest.
    The layer starts as nn.Linear does (U(+-1/sqrt(in))), drawn, like the permutations, from `seed`."""
    device = train_x.device
    num_classes = num_classes or int(train_y.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    clf = nn.Linear(train_x.shape[1], num_classes)
    bound = 1 / math.sqrt(train_x.shape[1])
    with torch.no_grad():
        clf.weight.uniform_(-bound, bound, generator=gen)
        clf.bias.uniform_(-bound, bound, generator=gen)
    clf.to(device).train()
    optimizer = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=(lr_end / lr) ** (1 / epochs))
    train_x, test_x = train_x.float(), test_x.float()
    with torch.enable_grad():
        for _ in range(epochs):
            for idx in torch.randperm(len(train_x), generator=gen).to(device).split(batch_size):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(clf(train_x[idx]), train_y[idx]).backward()
                optimizer.step()
            scheduler.step()
    clf.eval()
    with torch.no_grad():
        top = clf(test_x).topk(min(5, num_classes), dim=1).indices == test_y[:, None]
    return {'linear_top1': top[:, :1].any(1).float().mean().item() * 100,
            'linear_top5': top.any(1).float().mean().item() * 100}


def run_epoch(forward, batches, device, optimizer=None, amp_dtype=None, desc='', total=None, scaler=None):
    """One pass: (loss, top-1 %, top-5 %) over every rank's samples. Trains when given an optimizer.

    `batches` yields (x, y) where every rank holds an equal share of the global batch (a
    DistributedSampler), or (x, y, global batch count) where the shares may differ or be empty.
    The loss is sum(per-sample losses) * W / global count: after DDP's average over the W ranks
    the gradient is that of the global-batch mean, as in one process, whatever each rank holds.
    A rank with no samples still runs forward and backward (a zero loss), so DDP's collectives
    line up. `scaler`: a GradScaler for float16 autocast."""
    training = optimizer is not None
    ws = D.world_size()
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss*n, top1 hits, top5 hits, n
    bar = tqdm(batches, desc=desc, total=total, disable=not D.is_main(), leave=False, dynamic_ncols=True,
               mininterval=1.0)
    for step, batch in enumerate(bar):
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        n_global = batch[2] if len(batch) > 2 else len(y) * ws
        with torch.set_grad_enabled(training), \
                torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = forward(x)
        out = out.float()
        loss_sum = F.cross_entropy(out, y, reduction='sum')
        if training:
            backward_step(loss_sum * (ws / max(n_global, 1)), optimizer, scaler)
        with torch.no_grad():
            top = out.topk(min(5, out.shape[1]), dim=1).indices == y[:, None]
            sums[:3] += torch.stack([loss_sum.detach().double(), top[:, :1].any(1).sum().double(),
                                     top.any(1).sum().double()])
            sums[3] += len(y)  # a Python number: no host-to-device copy, so no sync per step
    sums = D.all_reduce_sum(sums) if ws > 1 else sums
    loss_sum, top1, top5, n = sums.tolist()
    n = max(n, 1)
    return loss_sum / n, 100 * top1 / n, 100 * top5 / n


def bn_buffers(probe):
    """The running statistics of a frozen backbone whose BatchNorm trains (bn='train'): part of the
    probe's state, since the test pass uses them."""
    return {name: buf.detach().clone() for name, buf in probe.backbone.named_buffers()} if probe.bn_train else None


def _restore(saved, probe, optimizer, scheduler, scaler):
    probe.fc.load_state_dict(saved['fc'])
    if saved.get('backbone') is not None:
        probe.backbone.load_state_dict(saved['backbone'])
    if probe.bn_train:  # the same --probe_bn (probe_identity), so the same buffers
        with torch.no_grad():
            for name, buf in probe.backbone.named_buffers():
                buf.copy_(saved['bn_buffers'][name])
    optimizer.load_state_dict(saved['optimizer'])
    if scheduler is not None and saved.get('scheduler'):
        scheduler.load_state_dict(saved['scheduler'])
    if scaler is not None and saved.get('scaler'):
        scaler.load_state_dict(saved['scaler'])
    set_rng_state(saved['rng'])


def _non_finite(epoch):
    saved = (f'checkpoint.pth holds epoch {epoch}, the last finite state' if epoch else
             'nothing was saved, as no epoch had finished')
    return MixBTError(f'the probe loss became non-finite in epoch {epoch + 1}; stopped, nothing of epoch {epoch + 1} '
                      f'was saved and {saved}. Check the backbone file (non-finite weights?) and the learning rate')


def fit(args, *, probe, ddp_train, train_batches, test_forward, test_batches, optimizer, scheduler, device,
        log, run_dir, run_id, saved=None, amp_dtype=None, steps_per_epoch=None, scaler=None, images=None):
    """Train for args.epochs (continuing `saved`), evaluating each epoch; returns the result dict.

    `train_batches(epoch)` / `test_batches()` yield batches as run_epoch takes them: (input,
    label) or (input, label, global batch count); `ddp_train` maps a training
    input to logits (the probe, DDP-wrapped when distributed); `test_forward` maps a test input
    to logits. `scaler`: a GradScaler (float16 autocast), saved and restored with the rest of the state.
    `images`: {'train_images', 'test_images'}, the counts used, recorded in results.json."""
    start, best = 0, {'test_acc@1': 0.0, 'test_acc@5': 0.0, 'epoch': 0}
    if saved is not None:
        _restore(saved, probe, optimizer, scheduler, scaler)
        start, best = saved['epoch'], saved['best']
        if D.is_main():
            print(f'Resumed {run_dir} at epoch {start}')
    identity = probe_identity(args)
    state_path = os.path.join(run_dir, 'checkpoint.pth')
    started, elapsed_before = time.time(), (log.history[-1].get('elapsed_s') or 0.0) if log.history else 0.0
    for epoch in range(start, args.epochs):
        t0 = time.time()
        probe.train()
        train_loss, train1, train5 = run_epoch(ddp_train, train_batches(epoch), device, optimizer, amp_dtype,
                                               desc=f'Train [{epoch + 1}/{args.epochs}]', total=steps_per_epoch,
                                               scaler=scaler)
        if scheduler is not None:
            scheduler.step()
        probe.eval()
        test_loss, test1, test5 = run_epoch(test_forward, test_batches(), device, None, amp_dtype, desc='Test')
        if not all(math.isfinite(v) for v in (train_loss, test_loss)):
            raise _non_finite(epoch)
        if test1 > best['test_acc@1'] or not best['epoch']:  # the first evaluation always counts
            best = {'test_acc@1': test1, 'test_acc@5': test5, 'epoch': epoch + 1}
        now = time.time()
        row = {'epoch': epoch + 1, 'lr': optimizer.param_groups[0]['lr'], 'train_loss': train_loss,
               'train_acc@1': train1, 'train_acc@5': train5, 'test_loss': test_loss, 'test_acc@1': test1,
               'test_acc@5': test5, 'best_acc@1': best['test_acc@1'], 'epoch_time': now - t0,
               'elapsed_s': elapsed_before + now - started,
               'eta_s': (now - started) / (epoch + 1 - start) * (args.epochs - epoch - 1)}
        if D.is_main():
            log.log(row)
            print(f'Epoch {epoch + 1}/{args.epochs} train loss {train_loss:.4f} acc@1 {train1:.2f} | test loss '
                  f'{test_loss:.4f} acc@1 {test1:.2f} acc@5 {test5:.2f} | elapsed {format_time(row["elapsed_s"])}, '
                  f'ETA {format_time(row["eta_s"])}', flush=True)
            state = {'epoch': epoch + 1, 'fc': probe.fc.state_dict(),
                     'backbone': None if probe.freeze else probe.backbone.state_dict(), 'bn_buffers': bn_buffers(probe),
                     'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict() if scheduler else None,
                     'scaler': scaler.state_dict() if scaler is not None else None,
                     'best': best, 'history': log.history, 'rng': rng_state(), 'args': vars(args), 'run_id': run_id,
                     'model_file': os.path.realpath(args.model_path), 'identity': identity}
            atomic_save(state, state_path)
        D.barrier()
    return _finish(log, best, run_dir, identity, images)


def _finish(log, best, run_dir, identity, images):
    """results.json (written whole or not at all, with the identity of what it was computed from)."""
    last = log.history[-1] if log.history else {}
    result = {'final_acc@1': last.get('test_acc@1'), 'final_acc@5': last.get('test_acc@5'),
              'best_acc@1': best['test_acc@1'], 'best_acc@5': best['test_acc@5'], 'best_epoch': best['epoch'],
              'run_dir': run_dir}
    if D.is_main():
        write_json(os.path.join(run_dir, 'results.json'), {**result, **(images or {}), 'identity': identity})
        print(f'Final test acc@1 {result["final_acc@1"]:.2f} acc@5 {result["final_acc@5"]:.2f}; '
              f'best acc@1 {result["best_acc@1"]:.2f} (epoch {result["best_epoch"]})')
        log.summary(**{k: v for k, v in result.items() if k != 'run_dir'})
    log.finish()
    return result


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
    """Run a frozen-backbone probe, its BatchNorm as args.probe_bn says: cached features where the
    backbone is in eval mode and the inputs are deterministic."""
    probe = Probe(backbone, emb, num_classes, freeze=True, bn=args.probe_bn)
    if fc_init is not None:
        fc_init(probe.fc)
    probe.to(device)
    folder, saved, log = open_run(args, prefix, project, wandb_group, wandb_name)
    with folder_held(folder):
        return _frozen_fit(args, probe, folder, saved, log, train_ds, train_is_augmented, test_ds, device, amp,
                           optimizer_fn, scheduler_fn)


def _frozen_fit(args, probe, folder, saved, log, train_ds, train_is_augmented, test_ds, device, amp, optimizer_fn,
                scheduler_fn):
    run_dir, run_id = folder.path, folder.run_id
    images = {'train_images': len(train_ds), 'test_images': len(test_ds)}
    if D.is_main():
        print(f'Run folder: {run_dir} ({images["train_images"]} training / {images["test_images"]} test images, '
              f'BatchNorm of the frozen backbone in {"train" if probe.bn_train else "eval"} mode)')
    optimizer = optimizer_fn(probe.fc.parameters())
    scheduler = scheduler_fn(optimizer)
    run = lambda **kw: fit(args, probe=probe, optimizer=optimizer, scheduler=scheduler, device=device, log=log,
                           run_dir=run_dir, run_id=run_id, saved=saved, amp_dtype=amp, images=images, **kw)
    if saved is not None and saved['epoch'] >= args.epochs:  # finished already (a requeued job): report only
        no_batches = lambda *_: iter(())
        return run(ddp_train=probe, train_batches=no_batches, test_forward=probe.fc, test_batches=no_batches)
    if probe.bn_train:  # batch statistics while training, updated running ones at test: nothing can be cached
        if D.world_size() > 1:  # the statistics of the global batch, as one process computes them
            sync_batchnorm(probe.backbone, device)
        train_batches, steps = image_batches(train_ds, args, device)
        test_loader, _ = image_batches(test_ds, args, device, shuffle=False)
        return run(ddp_train=wrap_ddp(probe, device), train_batches=train_batches, test_forward=probe,
                   test_batches=lambda: test_loader(0), steps_per_epoch=steps, scaler=grad_scaler(amp, device))
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
    return run(ddp_train=ddp_train, train_batches=train_batches, test_forward=probe.fc, test_batches=test_batches,
               steps_per_epoch=steps, scaler=grad_scaler(amp, device))
