"""Self-supervised pretraining: Mixed Barlow Twins and the methods it is compared with.

    python3 main.py --dataset cifar10 --arch resnet18 --feature_dim 1024 --lmbda 0.0078125 \
        --corr_zero --batch_size 256 --epochs 2000 --lr 0.01 --lr_shed cosine \
        --is_mixup true --mixup_loss_scale 4.0
    torchrun --nproc_per_node=8 main.py --dataset imagenet --data_root /path/to/imagenet ...

One process per device; torchrun (or srun) starts several, and the global batch
--batch_size is split over them. The run in phases, as `Trainer` names them: set up (the model,
the method, the optimiser), restore (a saved last.pth), train one epoch, evaluate (the kNN
monitor), save (last, best, snapshot and export, in one place). See README.md.
"""
import copy
import math
import os
import time

import torch
from tqdm import tqdm

import visualize
from mixbt import data as datasets
from mixbt import distributed as D
from mixbt import formats
from mixbt import knn
from mixbt import monitors
from mixbt import probe
from mixbt.probe import format_time
from mixbt.accumulate import accumulated_step, check_accumulate
from mixbt.checkpoints import load_strict
from mixbt.saving import atomic_save, non_finite_entries
from mixbt.config import get_args, print_config, resolve_aug
from mixbt.errors import MixBTError
from mixbt.methods import METHODS, Progress
from mixbt.nets import plain_batchnorm, sync_batchnorm
from mixbt.resume import (apply_settings, gather_rng_states, identity_tag, is_training_state, restore_point,
                          restore_rng_state, training_state)
from mixbt.runlog import RunLog
from mixbt.runs import RunFolder, check_writable
from mixbt.runtime import (autocast_dtype, backward_step, grad_scaler, install_requeue_handler, run_command,
                           seed_everything)
from mixbt.train_data import build_train_views, load_data
from model import build_model
from utils import build_optimizer, lr_factor, set_lr


class NonFiniteLoss(MixBTError):
    pass


def run_prefix(args, run_id):
    """The reference's file-name stem: <wandbid>_<lmbda>_<feature_dim>_<batch>_<dataset>
    (a method without lambda: its name in place of lmbda; Method.run_tag)."""
    dim = args.projector.split('-')[-1] if args.projector else args.feature_dim
    tag = METHODS[args.method].run_tag(args, args.method)
    return f'{run_id}_{tag}_{dim}_{args.batch_size}_{args.dataset}'


def last_finite(epochs_saved, knob):
    """What a run stopped by a non-finite value still has, truthfully."""
    if epochs_saved == 0:
        return f'no epoch had finished, so there is nothing to resume. Start again with a lower {knob}'
    return f'last.pth holds epoch {epochs_saved}, the last finite state. Resume from it with a lower {knob}'


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
    """One epoch of steps; the logged means (one host sync every --log_every steps)."""
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
        progress = Progress(epoch, args.epochs, step, steps)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            if args.accumulate > 1:  # the exact full-batch step in micro-batches (mixbt/accumulate.py)
                loss, logs = accumulated_step(method, views, args.accumulate, progress, optimizer, scaler,
                                              grad_scale=1 / args.ref_world_size)
            else:
                loss, logs = ddp_method(views, progress)
        if args.accumulate == 1:
            backward_step(loss, optimizer, scaler, grad_scale=1 / args.ref_world_size)
        method.after_step(Progress(epoch, args.epochs, step, steps))
        sums += torch.stack([loss.detach()] + [logs[k].detach() for k in method.log_keys]).float()
        count += 1
        seen += views[0].shape[0] * D.world_size()
        if (i + 1) % args.log_every == 0 or i + 1 == steps:
            means = (sums / count).tolist()
            if not all(math.isfinite(v) for v in means):
                raise NonFiniteLoss(f'the loss became {means[0]} in epoch {epoch + 1} (by step {i + 1}/{steps}); '
                                    f'training stopped and nothing of epoch {epoch + 1} was saved: '
                                    + last_finite(epoch, '--lr'))
            bar.set_postfix(loss=f'{means[0]:.4f}', lr=f'{optimizer.param_groups[0]["lr"]:.2e}')
    elapsed = time.time() - start
    means = (sums / max(count, 1)).tolist()
    stats = {'loss': means[0], **dict(zip(method.log_keys, means[1:]))}
    stats.update(lr=optimizer.param_groups[0]['lr'], epoch_time=elapsed, images_per_s=seen / max(elapsed, 1e-9))
    return stats


class Trainer:
    """One pretraining run, in phases: setup, restore, train_one_epoch, evaluate, save."""

    def __init__(self, args, device, folder, data):
        self.args, self.device, self.folder = args, device, folder
        self.train, self.memory, self.test = data
        self.spec = datasets.spec_of(args)
        self.run_id, self.run_dir = folder.run_id, folder.path
        self.prefix = run_prefix(args, self.run_id)
        self.state_path = os.path.join(self.run_dir, 'last.pth')
        self.model_path = os.path.join(self.run_dir, f'{self.prefix}_model.pth')
        # The kNN monitor's k: --k, or the whole memory bank where it is smaller (the run records which).
        self.k = min(args.k, len(self.memory[1])) if self.memory is not None else args.k
        self.start_epoch, self.best, self.history = 0, {'top1': 0.0, 'top5': 0.0, 'epoch': 0}, []
        self.final = {}  # the last epoch's W-MSE evaluation, for the summary

    # ------------------------------------------------------------------------ set up
    def setup(self):
        args, device = self.args, self.device
        self.model = build_model(args)
        method = METHODS[args.method].build(args, self.model)
        if D.is_main():
            print_config(args, device)
            counted = profile(self.model, args.image_size if self.spec.protocol == 'imagenet' else self.spec.size)
            if counted:
                print(f'# Model Params: {counted[1]} FLOPs: {counted[0]}')
            if self.k != args.k:
                print(f'note: --k {args.k} is larger than the memory bank ({self.k} images): the kNN monitor uses '
                      f'k = {self.k}')
        if args.sync_bn and D.world_size() > 1:
            method = sync_batchnorm(method, device)
        method.to(device)
        if args.channels_last:
            method.to(memory_format=torch.channels_last)
        self.method = method
        self.optimizer = build_optimizer(args, method)  # the method's own parameters too (BYOL predictor)
        self.fresh_groups = [dict(g) for g in self.optimizer.param_groups]
        self.amp_dtype = autocast_dtype(args.precision, device)
        reference = getattr(args, 'bt_loss', None) == 'imagenet_reference'  # the original ImageNet script's scaler
        self.scaler = grad_scaler(self.amp_dtype, device, growth_interval=100 if reference else 2000)

    # ------------------------------------------------------------------------ restore
    def restore(self, saved, changes):
        if saved is None:
            return
        load_strict(self.model, saved['model'], f'{self.folder.resume_path} (model)')
        self.method.load_state_dict({**{f'model.{k}': v for k, v in self.model.state_dict().items()},
                                     **saved['method']})
        self.optimizer.load_state_dict(saved['optimizer'])
        apply_settings(self.optimizer, self.fresh_groups)
        if self.scaler is not None and saved.get('scaler'):
            self.scaler.load_state_dict(saved['scaler'])
        self.start_epoch, self.best, self.history = saved['epoch'], saved['best_acc'], saved['history']
        restore_rng_state(saved)
        if D.is_main():
            print(f'Resumed {self.run_dir} at epoch {self.start_epoch}'
                  + (f' with changed settings: {", ".join(changes)}' if changes else ''))

    def start_logging_and_views(self):
        args, method = self.args, self.method
        self.log = RunLog(self.run_dir, self.prefix, args, f'Barlow-Twins-MixUp-{args.dataset}-{args.arch}',
                          self.run_id, resume=self.start_epoch > 0 or bool(self.history), history=self.history,
                          plot_keys=method.plot_keys + (('knn_top1', 'knn_top5', knn.EUCLID_KEY),)
                          + (monitors.PLOT_KEYS if args.overfitting_monitors else ()))
        if D.is_main():
            print(f'Run folder: {self.run_dir}  (method {args.method}, {D.world_size()} process(es) on '
                  f'{self.device})')
        self.ddp_method = method
        if D.world_size() > 1 and args.accumulate == 1:  # --accumulate averages the gradients itself
            self.ddp_method = torch.nn.parallel.DistributedDataParallel(
                method, device_ids=[self.device.index] if self.device.type == 'cuda' else None)
        if args.compile:
            self.ddp_method = torch.compile(self.ddp_method)
        self.views = build_train_views(args, self.train, method.n_views, self.device)
        install_requeue_handler(self.state_path)

    # ------------------------------------------------------------------------ evaluate
    def monitor(self, features=False):
        """The kNN monitor of the backbone (W-MSE pipeline: also its Euclidean 5-NN), and with
        --overfitting_monitors the monitors of mixbt/monitors.py from the same features."""
        args = self.args
        norm = datasets.select_pipeline(args.dataset, args.pipeline)  # evaluation normalises as training does
        common = dict(k=self.k, temperature=args.temperature, euclid=args.pipeline == 'wmse',
                      autocast_dtype=self.amp_dtype, channels_last=args.channels_last, features=features)
        if args.overfitting_monitors:
            return monitors.overfitting_metrics(self.model.backbone, self.model, self.memory, self.test, norm.mean,
                                                norm.std, self.spec.num_classes, self.device, norm.recipe, **common)
        return knn.knn_metrics(self.model.backbone, self.memory, self.test, norm.mean, norm.std,
                               self.spec.num_classes, self.device, **common)

    def evaluate_init(self):
        """The random-init baseline (--knn_init): logged as epoch 0, never saved as the best model."""
        scores = self.monitor()
        if D.is_main():
            self.log.log({'epoch': 0, **scores})
            self.log.summary(init_knn_top1=scores['knn_top1'], init_knn_top5=scores['knn_top5'])
            print(f'Epoch 0 (random init) kNN top1 {scores["knn_top1"]:.2f} top5 {scores["knn_top5"]:.2f}',
                  flush=True)

    def evaluate(self, epoch, last):
        """The monitor's scores after `epoch` epochs (an empty dict when it does not run); a new best
        is remembered (and saved by `save`)."""
        args = self.args
        if not ((args.knn_every and epoch % args.knn_every == 0) or last):
            return {}
        if self.memory is None:
            return self.label_free_monitors()
        if args.pipeline == 'wmse' and last:  # the W-MSE code's linear evaluation of the final backbone
            scores, (bank, tested) = self.monitor(features=True)
            scores.update(probe.linear_eval_on_embeddings(*bank, *tested, self.spec.num_classes, seed=args.seed))
            self.final = scores
        else:
            scores = self.monitor()
        if D.is_main() and (scores['knn_top1'] > self.best['top1'] or not self.best['epoch']):
            self.best = {'top1': scores['knn_top1'], 'top5': scores['knn_top5'], 'epoch': epoch,
                         'new': True}  # the first evaluation always saves
        return scores

    def label_free_monitors(self):
        """Without labels (an unlabelled folder) the kNN monitor cannot run: the label-free monitors
        (effective ranks, off-diagonal mass) run instead, on a fixed sample of the training images."""
        if not self.args.overfitting_monitors or self.train is None or self.spec.streamed:
            return {}
        images = self.train.images
        if not hasattr(self, 'unlabelled_sample'):
            pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:1000].sort().values
            self.unlabelled_sample = (images[pick.numpy()], None)
            if D.is_main():
                print(f'note: {self.args.dataset} has no labels: the kNN monitor is skipped; the label-free monitors '
                      f'run on {len(pick)} training images', flush=True)
        norm = datasets.select_pipeline(self.args.dataset, self.args.pipeline)
        return monitors.overfitting_metrics(self.model.backbone, self.model, None, self.unlabelled_sample, norm.mean,
                                            norm.std, self.spec.num_classes, self.device, norm.recipe,
                                            autocast_dtype=self.amp_dtype, channels_last=self.args.channels_last)

    def check_finite(self, epoch):
        """No state with a non-finite tensor is saved: every rank stops together."""
        state, bad = None, None
        rng_states = gather_rng_states()
        if D.is_main():
            state = training_state(epoch, self.model, self.method, self.optimizer, self.scaler, self.best,
                                   self.log.history, self.args, self.run_id, rng_states)
            bad = non_finite_entries({k: state[k] for k in ('model', 'method', 'optimizer')})
        bad = D.broadcast_object(bad)
        if bad:
            raise NonFiniteLoss(
                f'epoch {epoch} left non-finite values in {", ".join(bad[:3])}{" ..." if len(bad) > 3 else ""}; '
                f'training stopped and nothing of epoch {epoch} was saved: '
                + last_finite(epoch - 1, '--lr (or --lr_weights/--lr_biases)'))
        return state

    # ------------------------------------------------------------------------ save
    def save(self, epoch, state, last):
        """Every file a run writes after an epoch (main process): the best model, a snapshot, the
        ImageNet export, then last.pth (written last: a run killed before it redoes this epoch)."""
        args = self.args
        if self.best.pop('new', False):
            atomic_save(self.model.state_dict(), self.model_path)
        if args.save_every and epoch % args.save_every == 0:
            atomic_save(self.model.state_dict(), os.path.join(self.run_dir, f'{self.prefix}_model_{epoch}.pth'))
        if self.memory is None and last:
            atomic_save(self.model.state_dict(), self.model_path)
        if last and self.spec.protocol == 'imagenet':  # torchvision layout without fc: the released format (resnet50.pth)
            atomic_save(plain_batchnorm(copy.deepcopy(self.model.backbone)).state_dict(),
                        os.path.join(self.run_dir, f'{args.arch}.pth'))
        state.update(best_acc=self.best, history=self.log.history)
        atomic_save(state, self.state_path, checked_finite=True)  # checked in check_finite

    # ------------------------------------------------------------------------ the run
    def report_epoch(self, epoch, row, elapsed):
        knn_msg = '' if row.get('knn_top1') is None else \
            f' kNN top1 {row["knn_top1"]:.2f} top5 {row["knn_top5"]:.2f}' + ''.join(
                f' {k} {row[k]:.2f}' for k in (knn.EUCLID_KEY, 'linear_top1', 'gen_gap') if row.get(k) is not None)
        print(f'Epoch {epoch}/{self.args.epochs} loss {row["loss"]:.4f} lr {row["lr"]:.2e} '
              f'{row["images_per_s"]:.0f} img/s{knn_msg} | elapsed {format_time(elapsed)}, '
              f'ETA {format_time(row["eta_s"])}', flush=True)

    def run(self):
        args = self.args
        knn_keys = ('knn_top1', 'knn_top5') + ((knn.EUCLID_KEY,) if args.pipeline == 'wmse' else ()) + \
            (monitors.KEYS if args.overfitting_monitors else ())
        elapsed_before = next((r['elapsed_s'] for r in reversed(self.log.history) if r.get('elapsed_s') is not None),
                              0.0)
        started = time.time()
        try:
            if args.knn_init and self.memory is not None and self.start_epoch == 0 and not self.log.history:
                self.evaluate_init()
            for epoch in range(self.start_epoch + 1, args.epochs + 1):
                stats = train_one_epoch(args, epoch - 1, self.ddp_method, self.method, self.optimizer, self.scaler,
                                        self.views, self.device, self.amp_dtype)
                self.count_skipped_images(epoch, stats)
                state = self.check_finite(epoch)
                last = epoch == args.epochs
                row = {'epoch': epoch, **stats, **dict.fromkeys(knn_keys), **self.evaluate(epoch, last)}
                elapsed = elapsed_before + time.time() - started
                row.update(elapsed_s=elapsed,
                           eta_s=(time.time() - started) / (epoch - self.start_epoch) * (args.epochs - epoch))
                if D.is_main():
                    self.log.log(row)
                    self.report_epoch(epoch, row, elapsed)
                    self.save(epoch, state, last)
                del state
                D.barrier()
            self.finish()
        finally:
            self.log.finish()  # also when a non-finite loss or a kill stops the run: wandb keeps what it has
        return self.run_dir

    def count_skipped_images(self, epoch, stats):
        """--skip_bad_images: every rank counts its own, the sum is logged."""
        if not self.args.skip_bad_images:
            return
        skipped, first = formats.take_skipped_images(getattr(self.views, 'dataset', None))
        stats['skipped_images'] = int(D.all_reduce_sum(torch.tensor([float(skipped)], device=self.device)).item())
        if stats['skipped_images'] and D.is_main():
            print(f'Epoch {epoch}: replaced {stats["skipped_images"]} unreadable images '
                  f'(--skip_bad_images){", e.g. " + first if first else ""}', flush=True)

    def finish(self):
        """The summary (best kNN, gain over random init) and, at the end, the visuals."""
        best = self.best
        if D.is_main():
            if best['epoch']:
                init = next((r['knn_top1'] for r in self.log.history if r['epoch'] == 0), None)
                gain = '' if init is None else f'; random init {init:.2f}, {best["top1"] - init:+.2f} points'
                print(f'Best kNN top-1 {best["top1"]:.2f} (top-5 {best["top5"]:.2f}) at epoch {best["epoch"]}{gain}: '
                      f'{self.model_path}')
            self.log.summary(best_knn_top1=best['top1'], best_knn_top5=best['top5'], knn_k=self.k,
                             **{f'final_{k}': v for k, v in self.final.items() if k not in ('knn_top1', 'knn_top5')})
        if self.args.visuals and self.memory is not None:  # every rank embeds its shard, as the kNN monitor
            visualize.write_visuals(self.model.backbone, self.memory, self.test, self.spec, self.device, self.run_dir,
                                    self.prefix, classes=self.train.classes, wandb_run=self.log.wandb,
                                    seed=self.args.seed, autocast_dtype=self.amp_dtype,
                                    channels_last=self.args.channels_last)


def main(argv=None):
    args = get_args(argv)
    check_writable(args.results_dir)
    device = D.init_distributed(args.gpu)
    spec = datasets.spec_of(args)  # a folder is read here: its faults stop the run before its folder is made
    datasets.check_image_folder(args.dataset, args.data_root, spec.splits[:1])  # ImageNet: its train/ exists
    resolve_aug(args, spec)  # a folder's default waits for its row (streamed or in memory)
    if args.batch_size % D.world_size() or args.batch_size // D.world_size() < 2:
        raise MixBTError(f'--batch_size {args.batch_size} must be a multiple of the {D.world_size()} processes, with '
                         'at least 2 images per process')
    check_accumulate(args, METHODS[args.method], D.world_size())
    if hasattr(METHODS[args.method], 'check_processes'):  # before any folder is made
        METHODS[args.method].check_processes(args, D.world_size())
    seed_everything(args.seed + D.rank())
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True  # convolutions; float32 matmuls (losses, whitening) stay full precision

    folder = RunFolder(args, 'last.pth', is_state=is_training_state, what='a training state written by main.py',
                       id_from_name=True, slurm_tag=identity_tag(args), refuse_foreign=True).acquire()
    try:
        saved, changes = restore_point(folder, args)
        train, memory, test = load_data(args)
        if spec.in_memory and len(train.images) < args.batch_size:
            raise MixBTError(f'--batch_size {args.batch_size} is larger than the training set ({len(train.images)} '
                             'images): nothing to train on')
        trainer = Trainer(args, device, folder, (train, memory, test))
        trainer.setup()
        trainer.restore(saved, changes)
        del saved
        trainer.start_logging_and_views()
        run_dir = trainer.run()
    except BaseException:
        folder.release(failed=True)
        raise
    folder.release()
    return run_dir


def cli(argv=None):
    return run_command(lambda: main(argv))


if __name__ == '__main__':
    cli()
