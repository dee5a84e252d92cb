"""Self-supervised pretraining: Mixed Barlow Twins and the methods it is compared with.

    python main.py --dataset cifar10 --arch resnet18 --feature_dim 1024 --lmbda 0.0078125 \
        --corr_zero --batch_size 256 --epochs 2000 --lr 0.01 --lr_shed cosine \
        --is_mixup true --mixup_loss_scale 4.0
    torchrun --nproc_per_node=8 main.py --dataset imagenet --data_root /path/to/imagenet ...

One process per device; torchrun (or srun) starts several, and the global batch
--batch_size is split over them. See README.md for every data set, method and script.
"""
import copy
import math
import os
import time

import torch
from tqdm import tqdm

from mixbt import data as datasets
from mixbt import distributed as D
from mixbt import knn
from mixbt import probe
import visualize
from mixbt.checkpoints import atomic_save, load_strict, non_finite_entries
from mixbt.errors import MixBTError
from mixbt.config import get_args, print_config
from mixbt.methods import METHODS, Progress, method_schedule_keys
from model import build_model
from mixbt.nets import plain_batchnorm, sync_batchnorm
from mixbt.runlog import RunLog
from mixbt.identity import check_resume
from mixbt.runs import RunFolder, check_writable
from utils import LARS, warmup_cosine_factor, set_lr, step_factor
from mixbt.runtime import autocast_dtype, backward_step, grad_scaler, install_requeue_handler, rng_state, run_command, seed_everything, set_rng_state


class NonFiniteLoss(MixBTError):
    pass


# ---------------------------------------------------------------------------- data
class CPUViews:
    """torchvision/PIL views in DataLoader workers; every rank takes its slice of each global batch."""

    def __init__(self, args, train, n_views, device):
        from mixbt import augment
        views = augment.ssl_views(args.dataset, args.image_size, args.pipeline)
        transform = augment.MultiView([views[i % len(views)] for i in range(n_views)])
        if args.dataset == 'imagenet':
            self.dataset = datasets.imagenet_folder(args.data_root, 'train', transform, skip_bad=args.skip_bad_images)
        else:
            self.dataset = augment.ArrayDataset(train, transform)
        if args.subset:
            self.dataset = torch.utils.data.Subset(self.dataset, range(min(args.subset, len(self.dataset))))
        self.per_rank = args.batch_size // D.world_size()
        self.sampler = torch.utils.data.DistributedSampler(self.dataset, num_replicas=D.world_size(), rank=D.rank(),
                                                           shuffle=True, seed=args.seed, drop_last=True)
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.per_rank, sampler=self.sampler,
                                                  num_workers=args.workers, pin_memory=device.type == 'cuda',
                                                  drop_last=True, persistent_workers=False)
        self.seed, self.device = args.seed, device

    def __len__(self):
        return len(self.loader)

    def epoch(self, epoch):
        self.sampler.set_epoch(epoch)
        # Worker seeds derive from this generator: the same epoch gets the same augmentations
        # whether or not the run was interrupted and resumed.
        self.loader.generator = torch.Generator().manual_seed(self.seed * 100003 + epoch * 1009 + D.rank())
        for views, _ in self.loader:
            yield [v.to(self.device, non_blocking=True) for v in views]


def build_train_views(args, train, n_views, device):
    if args.aug == 'gpu':
        from mixbt.gpu_augment import DeviceViews
        return DeviceViews(args, train, n_views, device)
    return CPUViews(args, train, n_views, device)


def load_data(args):
    """(SSL training data, kNN memory (images, labels), kNN test (images, labels)); ImageNet: (None, None, None)."""
    from mixbt import augment
    spec = datasets.SPECS[args.dataset]
    if not spec.in_memory:
        return None, None, None
    if args.download and D.world_size() > 1:  # rank 0 downloads, the others wait
        if D.is_main():
            datasets.load(args.dataset, args.data_root, spec.splits[0], download=True, workers=args.workers,
                          skip_bad=args.skip_bad_images)
        D.barrier()
    train, memory, test = datasets.load_splits(args.dataset, args.data_root, spec.splits, args.subset,
                                               download=args.download and D.is_main(), workers=args.workers,
                                               skip_bad=args.skip_bad_images)
    return train, augment.eval_split(args.dataset, memory), augment.eval_split(args.dataset, test)


# ---------------------------------------------------------------------------- optimisation
def build_optimizer(args, model):
    scale = args.batch_size / 256
    if args.optimizer == 'lars':
        weights = [p for p in model.parameters() if p.ndim != 1]
        biases = [p for p in model.parameters() if p.ndim == 1]
        groups = [{'params': weights, 'base_lr': args.lr_weights * scale},
                  {'params': biases, 'base_lr': args.lr_biases * scale}]
        return LARS(groups, lr=0, weight_decay=args.weight_decay, weight_decay_filter=True,
                    lars_adaptation_filter=True)
    # Reference: base = lr * batch/256 with the cosine schedule; the step schedule uses lr as is.
    base = args.lr * scale if args.lr_shed in ('cosine', 'cosine_exact') else args.lr
    groups = [{'params': [p for p in model.parameters() if p.requires_grad], 'base_lr': base}]
    if args.optimizer == 'sgd':
        return torch.optim.SGD(groups, lr=base, momentum=0.9, weight_decay=args.weight_decay)
    return torch.optim.Adam(groups, lr=base, weight_decay=args.weight_decay)


def lr_factor(args, step, steps_per_epoch):
    """The factor on each group's base lr at 0-based global `step` (docs/protocol.md section 4)."""
    if args.lr_shed in ('cosine', 'cosine_exact') or args.optimizer == 'lars':
        first_epoch = 1 if args.lr_shed == 'cosine' and args.optimizer != 'lars' else 0
        return warmup_cosine_factor(step, steps_per_epoch, args.epochs, args.warmup_epochs, first_epoch=first_epoch)
    # step + 1: the W-MSE repository's warm-up, lr * (k + 1) / warmup_steps at its step k = 0, 1, ...
    return step_factor(step // steps_per_epoch, args.epochs, step=step + 1, warmup_steps=args.warmup_steps)


# ---------------------------------------------------------------------------- checkpoints
def run_prefix(args, run_id):
    """The reference's file-name stem: <wandbid>_<lmbda>_<feature_dim>_<batch>_<dataset>
    (baselines: the method's name in place of lmbda)."""
    dim = args.projector.split('-')[-1] if args.projector else args.feature_dim
    tag = args.lmbda if args.method in ('mixbt', 'barlowtwins', 'hsic') else args.method
    return f'{run_id}_{tag}_{dim}_{args.batch_size}_{args.dataset}'


def method_extra_state(method):
    return {k: v for k, v in method.state_dict().items() if not k.startswith('model.')}


def training_state(epoch, model, method, optimizer, scaler, best, history, args, run_id, rng_states):
    """What last.pth holds: everything a resumed run needs to continue as if never stopped."""
    return {'epoch': epoch, 'model': model.state_dict(), 'method': method_extra_state(method),
            'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict() if scaler else None,
            'rng': rng_states[0], 'rng_per_rank': rng_states, 'best_acc': best, 'history': history,
            'args': vars(args), 'run_id': run_id}


def is_training_state(saved):
    return isinstance(saved, dict) and 'model' in saved and 'epoch' in saved and 'optimizer' in saved


# On resume: settings that may change silently (where things live, how fast it runs, what is
# monitored), and schedule settings that may change on purpose (e.g. more --epochs), announced
# and applied. Every other setting is what the run is (identity.check_resume).
RESUME_FREE = ('resume', 'run_name', 'results_dir', 'data_root', 'workers', 'gpu', 'download', 'log_every',
               'knn_every', 'knn_init', 'save_every', 'precision', 'channels_last', 'compile', 'aug', 'fuse_views',
               'sync_bn', 'temperature', 'k', 'lambda_mixup', 'skip_bad_images', 'visuals')
RESUME_SCHEDULE = ('epochs', 'lr', 'lr_shed', 'lr_weights', 'lr_biases', 'weight_decay', 'warmup_epochs',
                   'warmup_steps', 'seed', 'ref_world_size') + method_schedule_keys()


def apply_settings(optimizer, fresh_groups):
    """After loading a saved optimizer state, its hyper-parameters become this command's (a
    resumed run's changed --lr or --weight_decay take effect); the moments stay the saved ones."""
    for group, fresh in zip(optimizer.param_groups, fresh_groups):
        group.update({k: v for k, v in fresh.items() if k != 'params'})


def gather_rng_states():
    """Every rank's generator states, in rank order (on rank 0; None elsewhere)."""
    state = rng_state()
    if D.world_size() == 1:
        return [state]
    states = [None] * D.world_size()
    torch.distributed.all_gather_object(states, state)
    return states if D.is_main() else None


def restore_rng_state(saved):
    """This rank's own generator states: a resumed multi-process run continues every rank's stream."""
    per_rank = saved.get('rng_per_rank')
    if per_rank and len(per_rank) == D.world_size():
        set_rng_state(per_rank[D.rank()])
        return
    if D.world_size() > 1 and D.is_main():
        print(f'note: the saved random state is of {len(per_rank or [1])} process(es), not {D.world_size()}: the '
              'continued run draws differently from an uninterrupted one')
    set_rng_state(saved['rng'])


# ---------------------------------------------------------------------------- training
def profile(model, size):
    """Params and FLOPs with thop, on a copy so that no profiling buffer reaches a state dict."""
    try:
        from thop import clever_format, profile as thop_profile
    except ImportError:
        return None
    clone = plain_batchnorm(copy.deepcopy(model)).to('cpu').eval()
    flops, params = thop_profile(clone, inputs=(torch.randn(1, 3, size, size),), verbose=False)
    return clever_format([flops, params])


def train_one_epoch(args, epoch, ddp_method, method, optimizer, scaler, views_source, device, amp_dtype):
    steps = len(views_source)
    method.train()
    sums = torch.zeros(1 + len(method.log_keys), device=device)
    count, seen = 0, 0
    bar = tqdm(views_source.epoch(epoch), total=steps, disable=not D.is_main(), dynamic_ncols=True,
               desc=f'Train [{epoch + 1}/{args.epochs}]', leave=False, mininterval=1.0)
    start = time.time()
    for i, views in enumerate(bar):
        step = epoch * steps + i
        set_lr(optimizer, lr_factor(args, step, steps))
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss, logs = ddp_method(views, Progress(epoch, args.epochs, step, steps))
        backward_step(loss, optimizer, scaler, grad_scale=1 / args.ref_world_size)
        method.after_step(Progress(epoch, args.epochs, step, steps))
        sums += torch.stack([loss.detach()] + [logs[k].detach() for k in method.log_keys]).float()
        count += 1
        seen += views[0].shape[0] * D.world_size()
        if (i + 1) % args.log_every == 0 or i + 1 == steps:
            means = (sums / count).tolist()  # the only host sync: every log_every steps
            if not all(math.isfinite(v) for v in means):
                raise NonFiniteLoss(f'the loss became {means[0]} in epoch {epoch + 1} (by step {i + 1}/{steps}); '
                                    f'training stopped and nothing of epoch {epoch + 1} was saved: last.pth holds '
                                    f'epoch {epoch}, the last finite state. Resume from it with a lower --lr')
            bar.set_postfix(loss=f'{means[0]:.4f}', lr=f'{optimizer.param_groups[0]["lr"]:.2e}')
    elapsed = time.time() - start
    means = (sums / max(count, 1)).tolist()
    stats = {'loss': means[0], **dict(zip(method.log_keys, means[1:]))}
    stats.update(lr=optimizer.param_groups[0]['lr'], epoch_time=elapsed, images_per_s=seen / max(elapsed, 1e-9))
    return stats


def main(argv=None):
    args = get_args(argv)
    check_writable(args.results_dir)
    device = D.init_distributed(args.gpu)
    spec = datasets.SPECS[args.dataset]
    if args.batch_size % D.world_size() or args.batch_size // D.world_size() < 2:
        raise MixBTError(f'--batch_size {args.batch_size} must be a multiple of the {D.world_size()} processes, with '
                         'at least 2 images per process')
    if args.aug is None:
        args.aug = 'gpu' if device.type == 'cuda' and spec.in_memory else 'cpu'
    if args.aug == 'gpu' and not spec.in_memory:
        raise MixBTError(f'--aug gpu needs an in-memory data set; {args.dataset} uses --aug cpu')
    seed_everything(args.seed + D.rank())
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True  # convolutions; float32 matmuls (losses, whitening) stay full precision

    folder = RunFolder(args, 'last.pth', is_state=is_training_state, what='a training state written by main.py',
                       id_from_name=True).acquire()
    try:
        saved = folder.read_state()
        schedule_changes = []
        if saved is not None:
            schedule_changes = check_resume(saved.get('args', {}), args, RESUME_FREE, RESUME_SCHEDULE,
                                              folder.resume_path)
        train, memory, test = load_data(args)
        if memory is not None and args.k > len(memory[1]):
            if D.is_main():
                print(f'note: --k {args.k} is larger than the memory bank ({len(memory[1])} images): using '
                      f'k = {len(memory[1])}')
            args.k = len(memory[1])
        if spec.in_memory and len(train.images) < args.batch_size:
            raise MixBTError(f'--batch_size {args.batch_size} is larger than the training set ({len(train.images)} '
                             'images): nothing to train on')
        run_dir = train_run(args, device, folder, saved, schedule_changes, train, memory, test)
    except BaseException:
        folder.release(failed=True)
        raise
    folder.release()
    return run_dir


def train_run(args, device, folder, saved, schedule_changes, train, memory, test):
    spec = datasets.SPECS[args.dataset]
    run_id, run_dir = folder.run_id, folder.path
    prefix = run_prefix(args, run_id)
    state_path = os.path.join(run_dir, 'last.pth')
    model_path = os.path.join(run_dir, f'{prefix}_model.pth')
    model = build_model(args)
    method = METHODS[args.method].build(args, model)
    if D.is_main():
        print_config(args, device)
        counted = profile(model, args.image_size if not spec.in_memory else spec.size)
        if counted:
            print(f'# Model Params: {counted[1]} FLOPs: {counted[0]}')
    if args.sync_bn and D.world_size() > 1:
        method = sync_batchnorm(method, device)
    method.to(device)
    if args.channels_last:
        method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(args, method)  # the method's own parameters too (BYOL predictor, SimCLR BN)
    fresh_groups = [dict(g) for g in optimizer.param_groups]
    amp_dtype = autocast_dtype(args.precision, device)
    scaler = grad_scaler(amp_dtype, device)

    start_epoch, best, history = 0, {'top1': 0.0, 'top5': 0.0, 'epoch': 0}, []
    if saved is not None:
        load_strict(model, saved['model'], f'{folder.resume_path} (model)')
        method.load_state_dict({**{f'model.{k}': v for k, v in model.state_dict().items()}, **saved['method']})
        optimizer.load_state_dict(saved['optimizer'])
        apply_settings(optimizer, fresh_groups)
        if scaler is not None and saved.get('scaler'):
            scaler.load_state_dict(saved['scaler'])
        start_epoch, best, history = saved['epoch'], saved['best_acc'], saved['history']
        restore_rng_state(saved)
        if D.is_main():
            print(f'Resumed {run_dir} at epoch {start_epoch}'
                  + (f' with changed settings: {", ".join(schedule_changes)}' if schedule_changes else ''))
    del saved

    log = RunLog(run_dir, prefix, args, f'Barlow-Twins-MixUp-{args.dataset}-{args.arch}', run_id,
                 resume=start_epoch > 0 or bool(history), history=history,
                 plot_keys=method.plot_keys + (('knn_top1', 'knn_top5', knn.EUCLID_KEY),))
    if D.is_main():
        print(f'Run folder: {run_dir}  (method {args.method}, {D.world_size()} process(es) on {device})')

    ddp_method = method
    if D.world_size() > 1:
        ddp_method = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == 'cuda' else None)
    if args.compile:
        ddp_method = torch.compile(ddp_method)
    views_source = build_train_views(args, train, method.n_views, device)
    install_requeue_handler(state_path)

    backbone = model.backbone
    wmse = args.pipeline == 'wmse'  # also the W-MSE code's evaluation: Euclidean 5-NN, linear on embeddings
    norm = datasets.select_pipeline(args.dataset, args.pipeline)  # the evaluation normalises as training does
    monitor = lambda features=False: knn.knn_metrics(
        backbone, memory, test, norm.mean, norm.std, spec.num_classes, device, k=args.k,
        temperature=args.temperature, euclid=wmse, autocast_dtype=amp_dtype, channels_last=args.channels_last,
        features=features)
    knn_keys = ('knn_top1', 'knn_top5') + ((knn.EUCLID_KEY,) if wmse else ())
    final = {}  # the last epoch's W-MSE evaluation, for the summary
    elapsed_before = next((r['elapsed_s'] for r in reversed(log.history) if r.get('elapsed_s') is not None), 0.0)
    started = time.time()
    try:
        if args.knn_init and memory is not None and start_epoch == 0 and not log.history:
            scores = monitor()  # the random-init baseline: logged, never saved as the best model
            top1, top5 = scores['knn_top1'], scores['knn_top5']
            if D.is_main():
                log.log({'epoch': 0, **scores})
                log.summary(init_knn_top1=top1, init_knn_top5=top5)
                print(f'Epoch 0 (random init) kNN top1 {top1:.2f} top5 {top5:.2f}', flush=True)
        for epoch in range(start_epoch, args.epochs):
            stats = train_one_epoch(args, epoch, ddp_method, method, optimizer, scaler, views_source, device, amp_dtype)
            if args.skip_bad_images:  # every rank counts its own
                skipped, first = datasets.take_skipped_images(getattr(views_source, 'dataset', None))
                stats['skipped_images'] = int(D.all_reduce_sum(torch.tensor([float(skipped)], device=device)).item())
                if stats['skipped_images'] and D.is_main():
                    print(f'Epoch {epoch + 1}: replaced {stats["skipped_images"]} unreadable images '
                          f'(--skip_bad_images){", e.g. " + first if first else ""}', flush=True)
            rng_states, state, bad = gather_rng_states(), None, None
            if D.is_main():
                state = training_state(epoch + 1, model, method, optimizer, scaler, best, log.history, args, run_id,
                                       rng_states)
                bad = non_finite_entries({k: state[k] for k in ('model', 'method', 'optimizer')})
            bad = D.broadcast_object(bad)  # every rank stops together
            if bad:
                raise NonFiniteLoss(
                    f'epoch {epoch + 1} left non-finite values in {", ".join(bad[:3])}'
                    f'{" ..." if len(bad) > 3 else ""}; training stopped and nothing of epoch {epoch + 1} was '
                    f'saved: last.pth holds epoch {epoch}, the last finite state. Resume from it with a lower '
                    f'--lr (or --lr_weights/--lr_biases)')
            row = {'epoch': epoch + 1, **stats, **dict.fromkeys(knn_keys)}
            last = epoch + 1 == args.epochs
            if memory is not None and ((args.knn_every and (epoch + 1) % args.knn_every == 0) or last):
                if wmse and last:  # the W-MSE code's linear evaluation of the final backbone, on its embeddings
                    scores, (bank, tested) = monitor(features=True)
                    scores.update(probe.linear_eval_on_embeddings(*bank, *tested, spec.num_classes, seed=args.seed))
                    final = scores
                    del bank, tested
                else:
                    scores = monitor()
                top1, top5 = scores['knn_top1'], scores['knn_top5']
                row.update(scores)
                if D.is_main() and (top1 > best['top1'] or not best['epoch']):  # the first evaluation always saves
                    best = {'top1': top1, 'top5': top5, 'epoch': epoch + 1}
                    atomic_save(model.state_dict(), model_path)
            elapsed = elapsed_before + time.time() - started
            done = epoch + 1 - start_epoch
            row.update(elapsed_s=elapsed, eta_s=(time.time() - started) / done * (args.epochs - epoch - 1))
            if D.is_main():
                log.log(row)
                knn_msg = '' if row['knn_top1'] is None else f' kNN top1 {top1:.2f} top5 {top5:.2f}' + ''.join(
                    f' {k} {row[k]:.2f}' for k in (knn.EUCLID_KEY, 'linear_top1') if row.get(k) is not None)
                print(f'Epoch {epoch + 1}/{args.epochs} loss {stats["loss"]:.4f} lr {stats["lr"]:.2e} '
                      f'{stats["images_per_s"]:.0f} img/s{knn_msg} | elapsed {format_time(elapsed)}, '
                      f'ETA {format_time(row["eta_s"])}', flush=True)
                if args.save_every and (epoch + 1) % args.save_every == 0:
                    atomic_save(model.state_dict(), os.path.join(run_dir, f'{prefix}_model_{epoch + 1}.pth'))
                if memory is None and last:
                    atomic_save(model.state_dict(), model_path)
                state.update(best_acc=best, history=log.history)
                atomic_save(state, state_path, checked_finite=True)  # checked after the epoch, above
            del state
            D.barrier()

        if D.is_main():
            if not spec.in_memory:
                # torchvision layout without fc: the released format (resnet50.pth by default)
                atomic_save(plain_batchnorm(copy.deepcopy(model.backbone)).state_dict(),
                            os.path.join(run_dir, f'{args.arch}.pth'))
            if best['epoch']:
                init = next((r['knn_top1'] for r in log.history if r['epoch'] == 0), None)
                gain = '' if init is None else f'; random init {init:.2f}, {best["top1"] - init:+.2f} points'
                print(f'Best kNN top-1 {best["top1"]:.2f} (top-5 {best["top5"]:.2f}) at epoch {best["epoch"]}{gain}: '
                      f'{model_path}')
            log.summary(best_knn_top1=best['top1'], best_knn_top5=best['top5'],
                        **{f'final_{k}': v for k, v in final.items() if k not in ('knn_top1', 'knn_top5')})
        if args.visuals and memory is not None:  # every rank embeds its shard, as in the kNN monitor
            visualize.write_visuals(backbone, memory, test, spec, device, run_dir, prefix, classes=train.classes,
                                    wandb_run=log.wandb, seed=args.seed, autocast_dtype=amp_dtype,
                                    channels_last=args.channels_last)
    finally:
        log.finish()  # also when a non-finite loss or a kill stops the run: wandb keeps what it has
    return run_dir


def format_time(seconds):
    seconds = int(round(seconds))
    return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def cli(argv=None):
    return run_command(lambda: main(argv))


if __name__ == '__main__':
    cli()
