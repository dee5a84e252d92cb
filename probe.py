"""The probe loop shared by linear.py and transfer.py: a linear classifier on a frozen (or,
for ImageNet semi-supervised evaluation, fine-tuned) backbone.

A frozen backbone stays in eval mode, so its BatchNorm statistics never change (the
reference left it in train mode: REFERENCE.md section 5). When the training inputs are
not augmented, the frozen features are extracted once and the classifier trains on the
cached features; test features are always extracted once for a frozen backbone.

Under torchrun every rank takes part in every step and the gradients equal one process's on
the global batch (run_epoch). A run folder with a fixed name (--run_name, slurm<job id>_... on
SLURM, --checkpoint-dir of evaluate_imagenet.py) is continued when the command starts again.
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
from utils import atomic_save, backward_step, changed_settings, install_requeue_handler, rng_state, set_rng_state


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


def run_epoch(forward, batches, device, optimizer=None, amp_dtype=None, desc='', total=None, on_step=None,
              scaler=None):
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
        if on_step is not None:
            on_step(step)
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


# Flags that may change when a run is continued: where things live and how fast it runs, not
# what it computes. Any other difference means the folder holds another evaluation.
RESUME_FREE_ARGS = {'resume', 'run_name', 'results_dir', 'data_root', 'model_path', 'workers', 'gpu', 'download',
                    'print_freq', 'wandb_group', 'screen', 'precision'}


def run_name(args, prefix):
    """The fixed run-folder name: --run_name, else on SLURM slurm<job id>_<prefix> (so that a
    requeued job finds its run again, and several evaluations in one job keep apart), else None."""
    if getattr(args, 'run_name', None):
        return args.run_name
    if 'SLURM_JOB_ID' in os.environ:
        return f'slurm{os.environ["SLURM_JOB_ID"]}_{prefix}'
    return None


def check_resume_args(saved, args, path):
    """Refuse to continue a run of another evaluation (another checkpoint, data set, recipe)."""
    diff = changed_settings(saved.get('args') or {}, args, [k for k in vars(args) if k not in RESUME_FREE_ARGS])
    if saved.get('model_file') and saved['model_file'] != os.path.realpath(args.model_path):
        diff.append(f'--model_path {saved["model_file"]} -> {os.path.realpath(args.model_path)}')
    if diff:
        from model import CheckpointError
        raise CheckpointError(f'{path} holds another evaluation (this command changes {"; ".join(diff)}). Give '
                              f'this one its own run folder (--run_name, or --checkpoint-dir for evaluate_imagenet.py)')


def open_run(args, prefix, project, wandb_group=None, wandb_name=None):
    """(run folder, run id, saved state or None, RunLog) for a probe run.

    The folder is --resume (a run folder or its checkpoint.pth) if given; else <results_dir>/
    <run name> when the name is fixed (run_name above), continued automatically when it already
    holds a checkpoint.pth (as main.py and the official evaluate.py do); else a new
    <results_dir>/<random id>."""
    from model import read_checkpoint, CheckpointError
    name = run_name(args, prefix)
    resume = args.resume
    if resume is None and name and os.path.isfile(os.path.join(args.results_dir, name, 'checkpoint.pth')):
        resume = os.path.join(args.results_dir, name)
    resume = D.broadcast_object(resume)  # every rank takes rank 0's decision
    saved = None
    if resume:
        path = os.path.join(resume, 'checkpoint.pth') if os.path.isdir(resume) else resume
        saved = read_checkpoint(path)
        if not isinstance(saved, dict) or 'fc' not in saved or 'epoch' not in saved:
            raise CheckpointError(f'--resume: {path} is not a probe checkpoint written by linear.py/transfer.py')
        check_resume_args(saved, args, path)
        run_id, run_dir = saved['run_id'], os.path.dirname(os.path.abspath(path))
    else:
        run_id = D.broadcast_object(new_run_id())  # the wandb id: unique even where the folder name is fixed
        run_dir = os.path.join(args.results_dir, name or run_id)
    if 'SLURM_JOB_ID' in os.environ:
        install_requeue_handler(os.path.join(run_dir, 'checkpoint.pth'))
    log = RunLog(run_dir, prefix, args, project, run_id, resume=bool(resume), history=saved['history'] if saved else None,
                 plot_keys=(('train_loss', 'test_loss'), ('train_acc@1', 'test_acc@1', 'test_acc@5')),
                 wandb_group=wandb_group, wandb_name=wandb_name)
    return run_dir, run_id, saved, log


def fit(args, *, probe, ddp_train, train_batches, test_forward, test_batches, optimizer, scheduler, device,
        log, run_dir, run_id, saved=None, amp_dtype=None, steps_per_epoch=None, step_scheduler=None, scaler=None):
    """Train for args.epochs (continuing `saved`), evaluating each epoch; returns the result dict.

    `train_batches(epoch)` / `test_batches()` yield batches as run_epoch takes them: (input,
    label) or (input, label, global batch count); `ddp_train` maps a training
    input to logits (the probe, DDP-wrapped when distributed); `test_forward` maps a test input
    to logits. `step_scheduler(step)` (optional) sets the learning rate each step; `scaler`: a
    GradScaler (float16 autocast), saved and restored with the rest of the state."""
    start, best = 0, {'test_acc@1': 0.0, 'test_acc@5': 0.0, 'epoch': 0}
    if saved is not None:
        probe.fc.load_state_dict(saved['fc'])
        if saved.get('backbone') is not None:
            probe.backbone.load_state_dict(saved['backbone'])
        optimizer.load_state_dict(saved['optimizer'])
        if scheduler is not None and saved.get('scheduler'):
            scheduler.load_state_dict(saved['scheduler'])
        if scaler is not None and saved.get('scaler'):
            scaler.load_state_dict(saved['scaler'])
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
                                               on_step=on_step, scaler=scaler)
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
                     'scaler': scaler.state_dict() if scaler is not None else None,
                     'best': best, 'history': log.history, 'rng': rng_state(), 'args': vars(args), 'run_id': run_id,
                     'model_file': os.path.realpath(args.model_path)}
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
