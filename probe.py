"""The probe loop shared by linear.py and transfer.py: a linear classifier on a frozen (or,
for ImageNet semi-supervised evaluation, fine-tuned) backbone.

A frozen backbone stays in eval mode, so its BatchNorm statistics never change (the
reference left it in train mode: REFERENCE.md section 5). When the training inputs are
not augmented, the frozen features are extracted once and the classifier trains on the
cached features; test features are always extracted once for a frozen backbone.
"""
import json
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import distributed as D
from runlog import RunLog, new_run_id
from utils import atomic_save, rng_state, set_rng_state


class Probe(nn.Module):
    """backbone -> flatten -> fc. With freeze=True the backbone has no gradients and stays in eval mode."""

    def __init__(self, backbone, embedding_size, num_classes, freeze=True):
        super().__init__()
        self.backbone, self.freeze = backbone, freeze
        self.fc = nn.Linear(embedding_size, num_classes)
        if freeze:
            self.backbone.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        if self.freeze:
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
        labels.append(y.to(device))
    feats = torch.cat(feats) if feats else torch.zeros(0, 1, device=device)
    labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    n = len(dataset)
    return D.unshard(D.all_gather_cat(feats), n), D.unshard(D.all_gather_cat(labels), n)


def feature_batches(features, labels, batch_size, shuffle=False, seed=0):
    """Batches of cached features; this rank's slice of each global batch under torch.distributed."""
    n = len(features)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    order = order.to(features.device)
    per_rank = max(batch_size // D.world_size(), 1)
    for start in range(0, n, batch_size):
        chunk = order[start:start + batch_size]
        mine = chunk[D.rank() * per_rank:(D.rank() + 1) * per_rank] if D.world_size() > 1 else chunk
        if len(mine):
            yield features[mine], labels[mine]


def run_epoch(forward, batches, device, optimizer=None, amp_dtype=None, desc='', total=None, on_step=None):
    """One pass: (loss, top-1 %, top-5 %) over every rank's samples. Trains when given an optimizer."""
    training = optimizer is not None
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss*n, top1 hits, top5 hits, n
    bar = tqdm(batches, desc=desc, total=total, disable=not D.is_main(), leave=False, dynamic_ncols=True,
               mininterval=1.0)
    for step, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if on_step is not None:
            on_step(step)
        with torch.set_grad_enabled(training), \
                torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = forward(x)
        out = out.float()
        loss = F.cross_entropy(out, y)
        if training:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            top = out.topk(min(5, out.shape[1]), dim=1).indices == y[:, None]
            sums += torch.stack([loss.detach().double() * len(y), top[:, :1].any(1).sum().double(),
                                 top.any(1).sum().double(), torch.tensor(len(y), device=device, dtype=torch.float64)])
    sums = D.all_reduce_sum(sums) if D.world_size() > 1 else sums
    loss_sum, top1, top5, n = sums.tolist()
    n = max(n, 1)
    return loss_sum / n, 100 * top1 / n, 100 * top5 / n


def open_run(args, prefix, project, resume, wandb_group=None, wandb_name=None):
    """(run folder, saved state or None, RunLog) for a probe run; --resume takes the run folder."""
    saved = None
    if resume:
        path = os.path.join(resume, 'checkpoint.pth') if os.path.isdir(resume) else resume
        from model import read_checkpoint, CheckpointError
        saved = read_checkpoint(path)
        if not isinstance(saved, dict) or 'fc' not in saved or 'epoch' not in saved:
            raise CheckpointError(f'--resume: {path} is not a probe checkpoint written by linear.py/transfer.py')
        run_id, run_dir = saved['run_id'], os.path.dirname(os.path.abspath(path))
    else:
        run_id = D.broadcast_object(new_run_id())
        run_dir = os.path.join(args.results_dir, run_id)
    log = RunLog(run_dir, prefix, args, project, run_id, resume=bool(resume), history=saved['history'] if saved else None,
                 plot_keys=(('train_loss', 'test_loss'), ('train_acc@1', 'test_acc@1', 'test_acc@5')),
                 wandb_group=wandb_group, wandb_name=wandb_name)
    return run_dir, run_id, saved, log


def fit(args, *, probe, ddp_train, train_batches, test_forward, test_batches, optimizer, scheduler, device,
        log, run_dir, run_id, saved=None, amp_dtype=None, steps_per_epoch=None, step_scheduler=None):
    """Train for args.epochs (continuing `saved`), evaluating each epoch; returns the result dict.

    `train_batches(epoch)` / `test_batches()` yield (input, label); `ddp_train` maps a training
    input to logits (the probe, DDP-wrapped when distributed); `test_forward` maps a test input
    to logits. `step_scheduler(step)` (optional) sets the learning rate each step."""
    start, best = 0, {'test_acc@1': 0.0, 'test_acc@5': 0.0, 'epoch': 0}
    if saved is not None:
        probe.fc.load_state_dict(saved['fc'])
        if saved.get('backbone') is not None:
            probe.backbone.load_state_dict(saved['backbone'])
        optimizer.load_state_dict(saved['optimizer'])
        if scheduler is not None and saved.get('scheduler'):
            scheduler.load_state_dict(saved['scheduler'])
        start, best = saved['epoch'], saved['best']
        set_rng_state(saved['rng'])
        if D.is_main():
            print(f'Resumed {run_dir} at epoch {start}')
    state_path = os.path.join(run_dir, 'checkpoint.pth')
    row = None
    for epoch in range(start, args.epochs):
        t0 = time.time()
        probe.train()
        on_step = (lambda s, e=epoch: step_scheduler(e * steps_per_epoch + s)) if step_scheduler else None
        train_loss, train1, train5 = run_epoch(ddp_train, train_batches(epoch), device, optimizer, amp_dtype,
                                               desc=f'Train [{epoch + 1}/{args.epochs}]', total=steps_per_epoch,
                                               on_step=on_step)
        if scheduler is not None:
            scheduler.step()
        probe.eval()
        test_loss, test1, test5 = run_epoch(test_forward, test_batches(), device, None, amp_dtype, desc='Test')
        if not all(math.isfinite(v) for v in (train_loss, test_loss)):
            raise RuntimeError(f'the probe loss became non-finite in epoch {epoch + 1}; stopped')
        if test1 > best['test_acc@1']:
            best = {'test_acc@1': test1, 'test_acc@5': test5, 'epoch': epoch + 1}
        row = {'epoch': epoch + 1, 'lr': optimizer.param_groups[0]['lr'], 'train_loss': train_loss,
               'train_acc@1': train1, 'train_acc@5': train5, 'test_loss': test_loss, 'test_acc@1': test1,
               'test_acc@5': test5, 'best_acc@1': best['test_acc@1'], 'epoch_time': time.time() - t0}
        if D.is_main():
            log.log(row)
            print(f'Epoch {epoch + 1}/{args.epochs} train loss {train_loss:.4f} acc@1 {train1:.2f} | '
                  f'test loss {test_loss:.4f} acc@1 {test1:.2f} acc@5 {test5:.2f}', flush=True)
            state = {'epoch': epoch + 1, 'fc': probe.fc.state_dict(),
                     'backbone': None if probe.freeze else probe.backbone.state_dict(),
                     'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict() if scheduler else None,
                     'best': best, 'history': log.history, 'rng': rng_state(), 'args': vars(args), 'run_id': run_id}
            atomic_save(state, state_path)
        D.barrier()
    last = log.history[-1] if log.history else {}
    result = {'final_acc@1': last.get('test_acc@1'), 'final_acc@5': last.get('test_acc@5'),
              'best_acc@1': best['test_acc@1'], 'best_acc@5': best['test_acc@5'], 'best_epoch': best['epoch'],
              'run_dir': run_dir}
    if D.is_main():
        with open(os.path.join(run_dir, 'results.json'), 'w') as f:
            json.dump(result, f, indent=2)
        print(f'Final test acc@1 {result["final_acc@1"]:.2f} acc@5 {result["final_acc@5"]:.2f}; '
              f'best acc@1 {result["best_acc@1"]:.2f} (epoch {result["best_epoch"]})')
        log.summary(**{k: v for k, v in result.items() if k != 'run_dir'})
    log.finish()
    return result
