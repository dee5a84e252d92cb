"""Self-supervised pretraining: Mixed Barlow Twins and the methods it is compared with.

    python main.py --dataset cifar10 --arch resnet18 --feature_dim 1024 --lmbda 0.0078125 \
        --corr_zero --batch_size 256 --epochs 2000 --lr 0.01 --lr_shed cosine \
        --is_mixup true --mixup_loss_scale 4.0
    torchrun --nproc_per_node=8 main.py --dataset imagenet --data_root /path/to/imagenet ...

One process per device; torchrun (or srun) starts several, and the global batch
--batch_size is split over them. See README.md for every data set, method and script.
"""
import argparse
import copy
import math
import os
import time

import torch
from tqdm import tqdm

import data as datasets
import distributed as D
import knn
from methods import METHODS, Progress, add_method_args, build_method, resolve_method_args
from model import ImageNetModel, CheckpointError, build_model, load_strict, plain_batchnorm, read_checkpoint, \
    sync_batchnorm
from runlog import RunLog, new_run_id
from utils import LARS, atomic_save, autocast_dtype, backward_step, changed_settings, cosine_factor, grad_scaler, \
    install_requeue_handler, rng_state, run_command, seed_everything, set_lr, set_rng_state, step_factor, str2bool


class NonFiniteLoss(RuntimeError):
    pass


def get_args(argv=None):
    p = argparse.ArgumentParser(description='Mixed Barlow Twins pretraining', allow_abbrev=False)
    a = p.add_argument
    # ---- the original flags (names, meaning and defaults of the mix-bt main.py)
    a('--dataset', default='cifar10', choices=sorted(datasets.SPECS), help='data set to pretrain on')
    a('--arch', default='resnet50', choices=['resnet18', 'resnet50'], help='backbone')
    a('--feature_dim', default=128, type=int, help='projector output dimension (small data sets)')
    a('--temperature', default=0.5, type=float, help='temperature of the weighted kNN monitor')
    a('--k', default=200, type=int, help='neighbours of the weighted kNN monitor')
    a('--batch_size', '--batch-size', default=512, type=int, help='global batch size (split over processes)')
    a('--epochs', default=1000, type=int, help='training epochs')
    a('--lr', default=None, type=float,
      help='base learning rate (x batch/256 with the cosine schedule); default 1e-3, baselines: their recipe')
    a('--lr_shed', default=None, choices=['step', 'cosine'],
      help='learning-rate schedule; default step, baselines: their recipe')
    a('--lmbda', '--lambd', default=0.005, type=float, help='weight of the off-diagonal terms (lambda_BT)')
    a('--corr_neg_one', dest='corr_neg_one', action='store_true', help='HSIC: off-diagonal target -1')
    a('--corr_zero', dest='corr_neg_one', action='store_false', help='Barlow Twins: off-diagonal target 0')
    p.set_defaults(corr_neg_one=False)
    a('--is_mixup', default=False, type=str2bool, help='add the Mix-BT regulariser (true/false)')
    a('--mixup_loss_scale', default=5.0, type=float, help='s (lambda_reg) of the mixup regulariser')
    a('--gpu', default=0, type=int, help='CUDA device of a single-process run (-1: CPU)')
    # ---- added for researchers
    a('--method', default=None, choices=METHODS, help='SSL method (default: from --is_mixup/--corr_neg_one)')
    a('--data_root', default='data', help='folder holding the data sets (ImageNet: the ImageNet folder)')
    a('--results_dir', '--checkpoint-dir', default='results', help='run folders are created here')
    a('--seed', default=0, type=int)
    a('--workers', default=min(8, os.cpu_count() or 1), type=int, help='data-loader worker processes')
    a('--knn_every', default=5, type=int, help='kNN monitor every N epochs (0: never); always at the end')
    a('--knn_init', action='store_true',
      help='also run the kNN monitor on the randomly initialised backbone, logged as epoch 0: the baseline '
           'that pretraining has to beat')
    a('--save_every', default=50, type=int, help='keep a model snapshot every N epochs (0: never)')
    a('--resume', default=None, help='run folder or last.pth to continue from')
    a('--run_name', default=None,
      help='fixed run folder name under --results_dir; a run restarted with the same name resumes from its '
           'last.pth automatically (default on SLURM: slurm<job id>, so a requeued job continues)')
    a('--download', action='store_true', help="fetch the data set with torchvision's downloader")
    a('--subset', default=0, type=int, help='use only N images of each split (quick runs, debugging)')
    a('--log_every', '--print-freq', default=20, type=int, help='progress-bar/NaN-check interval in steps')
    a('--warmup_epochs', default=None, type=float,
      help='linear warm-up epochs of the cosine schedule; default 10 (INTL: 2)')
    a('--warmup_steps', default=None, type=int,
      help='linear warm-up steps of the step schedule; default 0 (SimCLR, BYOL, W-MSE, CW-RGP: 500)')
    a('--weight_decay', '--weight-decay', default=None, type=float,
      help='default: 1e-6 (Adam, LARS)')
    a('--optimizer', default=None, choices=['adam', 'lars', 'sgd'], help='default: lars for imagenet, else adam')
    a('--fuse_views', default=True, type=str2bool, help='one forward over all views, per-view BatchNorm')
    a('--mixup_warmup_epochs', default=0.0, type=float, help='linear warm-up of the mixup weight s')
    a('--lambda_mixup', default=None, type=float,
      help='mix-bt ImageNet script flag: sets --mixup_loss_scale to 0.5 * lambda_mixup')
    # ---- ImageNet recipe (official Barlow Twins flags)
    a('--projector', default=None, help='projector MLP sizes, e.g. 8192-8192-8192 (ImageNet default)')
    a('--learning-rate-weights', dest='lr_weights', default=0.2, type=float, help='ImageNet LARS lr (weights)')
    a('--learning-rate-biases', dest='lr_biases', default=0.0048, type=float, help='ImageNet LARS lr (biases, BN)')
    a('--image_size', default=224, type=int, help='ImageNet crop size')
    a('--sync_bn', default=True, type=str2bool,
      help='BatchNorm statistics over the global batch in multi-process runs, as one process would compute them '
           '(false: per-process statistics, faster, not equal to one process)')
    a('--precision', default='auto', choices=['auto', 'fp32', 'bf16', 'fp16'],
      help='auto: bf16 on CUDA where supported (fp16 otherwise), fp32 on CPU')
    a('--channels_last', default=True, type=str2bool,
      help='NHWC memory format (faster for cuDNN and for oneDNN on CPU)')
    a('--compile', action='store_true', help='torch.compile the model')
    a('--aug', default=None, choices=['cpu', 'gpu'],
      help='cpu: torchvision/PIL views in workers; gpu: batched views on the training device')
    add_method_args(p)
    args = p.parse_args(argv)
    return resolve_args(args)


def resolve_args(args):
    if args.lambda_mixup is not None:  # mix-bt ImageNet flag: s = 0.5 * lambda_mixup (REFERENCE.md 1)
        args.mixup_loss_scale = 0.5 * args.lambda_mixup
        if args.lambda_mixup == 0:
            args.is_mixup = False
    if args.method is None:
        args.method = 'mixbt' if args.is_mixup else ('hsic' if args.corr_neg_one else 'barlowtwins')
    elif args.method == 'mixbt':
        args.is_mixup = True
    elif args.method == 'barlowtwins':
        args.is_mixup, args.corr_neg_one = False, False
    elif args.method == 'hsic':
        args.is_mixup, args.corr_neg_one = False, True
    imagenet = args.dataset == 'imagenet'
    args = resolve_method_args(args)  # per-method defaults first: they fill only the flags left unset
    if args.optimizer is None:
        args.optimizer = 'lars' if imagenet else 'adam'
    if args.weight_decay is None:
        args.weight_decay = 1e-6
    if imagenet and args.projector is None:
        args.projector = '8192-8192-8192'
    for key, value in (('lr', 1e-3), ('lr_shed', 'step'), ('warmup_epochs', 10.0), ('warmup_steps', 0)):
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# ---------------------------------------------------------------------------- data
class CPUViews:
    """torchvision/PIL views in DataLoader workers; every rank takes its slice of each global batch."""

    def __init__(self, args, train, n_views, device):
        import augment
        views = augment.ssl_views(args.dataset, args.image_size)
        transform = augment.MultiView([views[i % len(views)] for i in range(n_views)])
        if args.dataset == 'imagenet':
            self.dataset = datasets.imagenet_folder(args.data_root, 'train', transform)
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
        from gpu_augment import DeviceViews
        return DeviceViews(args, train, n_views, device)
    return CPUViews(args, train, n_views, device)


def load_data(args):
    """(SSL training data, kNN memory (images, labels), kNN test (images, labels)); ImageNet: (None, None, None)."""
    if args.dataset == 'imagenet':
        return None, None, None
    ssl_split, memory_split, test_split = datasets.SPLITS[args.dataset]
    load = lambda split: datasets.load(args.dataset, args.data_root, split, download=args.download and D.is_main(),
                                       workers=args.workers)
    if args.download and D.world_size() > 1:  # rank 0 downloads, the others wait
        if D.is_main():
            load(ssl_split)
        D.barrier()
    train = load(ssl_split)
    memory = train if memory_split == ssl_split else load(memory_split)
    test = load(test_split)
    if args.subset:
        train, memory, test = [datasets.ArrayData(d.images[:args.subset], d.labels[:args.subset], d.classes)
                               for d in (train, memory, test)]
        if memory_split == ssl_split:
            memory = train
    memory = (datasets.eval_images(args.dataset, memory), memory.labels)
    test = (datasets.eval_images(args.dataset, test), test.labels)
    return train, memory, test


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
    base = args.lr * scale if args.lr_shed == 'cosine' else args.lr
    groups = [{'params': [p for p in model.parameters() if p.requires_grad], 'base_lr': base}]
    if args.optimizer == 'sgd':
        return torch.optim.SGD(groups, lr=base, momentum=0.9, weight_decay=args.weight_decay)
    return torch.optim.Adam(groups, lr=base, weight_decay=args.weight_decay)


def lr_factor(args, step, steps_per_epoch):
    if args.lr_shed == 'cosine' or args.optimizer == 'lars':
        return cosine_factor(step, args.epochs * steps_per_epoch, int(args.warmup_epochs * steps_per_epoch))
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


def training_state(epoch, model, method, optimizer, scaler, best, history, args, run_id):
    return {'epoch': epoch, 'model': model.state_dict(), 'method': method_extra_state(method),
            'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict() if scaler else None,
            'rng': rng_state(), 'best_acc': best, 'history': history, 'args': vars(args), 'run_id': run_id}


def find_resume(path):
    if path is None:
        return None
    if os.path.isdir(path):
        path = os.path.join(path, 'last.pth')
    if not os.path.isfile(path):
        raise CheckpointError(f'--resume: no training state at {path}')
    return path


# What a run is: changing these on --resume would continue a different experiment (or cannot load).
RUN_IDENTITY = ('dataset', 'arch', 'feature_dim', 'method', 'projector', 'batch_size', 'num_views', 'optimizer',
                'subset', 'image_size', 'lmbda', 'corr_neg_one', 'is_mixup', 'mixup_loss_scale', 'emb', 'head_size',
                'tau', 'byol_tau', 'w_size', 'w_iter', 'w_eps', 'group', 'intl_iters')
# Schedule and optimiser settings: a resumed run may change them on purpose (e.g. more --epochs); said aloud.
RUN_SCHEDULE = ('epochs', 'lr', 'lr_shed', 'lr_weights', 'lr_biases', 'weight_decay', 'warmup_epochs', 'warmup_steps',
                'mixup_warmup_epochs', 'seed')


def check_resume_args(saved, args):
    """Error for a --resume whose command changes what the run is; the list of changed schedule
    settings (printed) otherwise."""
    changed = changed_settings(saved, args, RUN_IDENTITY)
    if changed:
        raise CheckpointError('--resume: this command changes what the run is (' + ', '.join(changed) + '); '
                              'resume with the run\'s own settings (args.json in its folder) or start a new run')
    return changed_settings(saved, args, RUN_SCHEDULE)


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
        backward_step(loss, optimizer, scaler)
        method.after_step(Progress(epoch, args.epochs, step, steps))
        sums += torch.stack([loss.detach()] + [logs[k].detach() for k in method.log_keys]).float()
        count += 1
        seen += views[0].shape[0] * D.world_size()
        if (i + 1) % args.log_every == 0 or i + 1 == steps:
            means = (sums / count).tolist()  # the only host sync: every log_every steps
            if not all(math.isfinite(v) for v in means):
                raise NonFiniteLoss(f'the loss became {means[0]} in epoch {epoch + 1} (by step {i + 1}/{steps}); '
                                    'training stopped. The last good checkpoints (last.pth, *_model.pth) are '
                                    'untouched in the run folder')
            bar.set_postfix(loss=f'{means[0]:.4f}', lr=f'{optimizer.param_groups[0]["lr"]:.2e}')
    elapsed = time.time() - start
    means = (sums / max(count, 1)).tolist()
    stats = {'loss': means[0], **dict(zip(method.log_keys, means[1:]))}
    stats.update(lr=optimizer.param_groups[0]['lr'], epoch_time=elapsed, images_per_s=seen / max(elapsed, 1e-9))
    return stats


def main(argv=None):
    args = get_args(argv)
    device = D.init_distributed(args.gpu)
    if args.batch_size % D.world_size():
        raise ValueError(f'--batch_size {args.batch_size} is not divisible by the {D.world_size()} processes')
    if args.aug is None:
        args.aug = 'gpu' if device.type == 'cuda' and args.dataset != 'imagenet' else 'cpu'
    if args.aug == 'gpu' and args.dataset == 'imagenet':
        raise ValueError('--aug gpu needs an in-memory data set; ImageNet uses --aug cpu')
    seed_everything(args.seed + D.rank())
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True  # convolutions; float32 matmuls (losses, whitening) stay full precision

    if args.run_name is None and 'SLURM_JOB_ID' in os.environ:
        args.run_name = f'slurm{os.environ["SLURM_JOB_ID"]}'
    if args.resume is None and args.run_name and os.path.isfile(os.path.join(args.results_dir, args.run_name, 'last.pth')):
        args.resume = os.path.join(args.results_dir, args.run_name)  # auto-resume
    resume_path = find_resume(args.resume)
    saved = read_checkpoint(resume_path) if resume_path else None
    if saved is not None:
        if not isinstance(saved, dict) or 'model' not in saved or 'epoch' not in saved:
            raise CheckpointError(f'--resume: {resume_path} is not a training state written by main.py')
        schedule_changes = check_resume_args(saved.get('args', {}), args)
    run_id = saved['run_id'] if saved else (args.run_name or D.broadcast_object(new_run_id()))
    run_dir = os.path.dirname(os.path.abspath(resume_path)) if saved else os.path.join(args.results_dir, run_id)
    prefix = run_prefix(args, run_id)
    state_path = os.path.join(run_dir, 'last.pth')
    model_path = os.path.join(run_dir, f'{prefix}_model.pth')

    train, memory, test = load_data(args)
    spec = datasets.SPECS[args.dataset]
    model = build_model(args)
    method = build_method(args, model)
    if D.is_main():
        counted = profile(model, args.image_size if args.dataset == 'imagenet' else spec.size)
        if counted:
            print(f'# Model Params: {counted[1]} FLOPs: {counted[0]}')
    if args.sync_bn and D.world_size() > 1:
        method = sync_batchnorm(method, device)
        model = method.model
        method.configure_bn()
    method.to(device)
    if args.channels_last:
        method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(args, method)  # the method's own parameters too (BYOL predictor, SimCLR BN)
    amp_dtype = autocast_dtype(args.precision, device)
    scaler = grad_scaler(amp_dtype, device)

    start_epoch, best, history = 0, {'top1': 0.0, 'top5': 0.0, 'epoch': 0}, []
    if saved is not None:
        load_strict(model, saved['model'], f'{resume_path} (model)')
        method.load_state_dict({**{f'model.{k}': v for k, v in model.state_dict().items()}, **saved['method']})
        optimizer.load_state_dict(saved['optimizer'])
        if scaler is not None and saved.get('scaler'):
            scaler.load_state_dict(saved['scaler'])
        start_epoch, best, history = saved['epoch'], saved['best_acc'], saved['history']
        set_rng_state(saved['rng'])
        if D.is_main():
            print(f'Resumed {run_dir} at epoch {start_epoch}'
                  + (f' with changed settings: {", ".join(schedule_changes)}' if schedule_changes else ''))
    del saved

    log = RunLog(run_dir, prefix, args, f'Barlow-Twins-MixUp-{args.dataset}-{args.arch}', run_id,
                 resume=resume_path is not None, history=history,
                 plot_keys=method.plot_keys + (('knn_top1', 'knn_top5'),))
    if D.is_main():
        print(f'Run folder: {run_dir}  (method {args.method}, {D.world_size()} process(es) on {device})')

    ddp_method = method
    if D.world_size() > 1:
        ddp_method = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == 'cuda' else None)
    if args.compile:
        ddp_method = torch.compile(ddp_method)
    views_source = build_train_views(args, train, method.n_views, device)
    if len(views_source) == 0:
        raise ValueError(f'--batch_size {args.batch_size} is larger than the training set; nothing to train on')
    install_requeue_handler(state_path)

    backbone = model.f if not isinstance(model, ImageNetModel) else model.backbone
    monitor = lambda: knn.knn_monitor(backbone, memory, test, spec.mean, spec.std, spec.num_classes, device,
                                      k=args.k, temperature=args.temperature, autocast_dtype=amp_dtype,
                                      channels_last=args.channels_last)
    try:
        if args.knn_init and memory is not None and start_epoch == 0 and not log.history:
            top1, top5 = monitor()  # the random-init baseline: logged, never saved as the best model
            if D.is_main():
                log.log({'epoch': 0, 'knn_top1': top1, 'knn_top5': top5})
                log.summary(init_knn_top1=top1, init_knn_top5=top5)
                print(f'Epoch 0 (random init) kNN top1 {top1:.2f} top5 {top5:.2f}', flush=True)
        for epoch in range(start_epoch, args.epochs):
            stats = train_one_epoch(args, epoch, ddp_method, method, optimizer, scaler, views_source, device, amp_dtype)
            row = {'epoch': epoch + 1, **stats, 'knn_top1': None, 'knn_top5': None}
            last = epoch + 1 == args.epochs
            if memory is not None and ((args.knn_every and (epoch + 1) % args.knn_every == 0) or last):
                top1, top5 = monitor()
                row.update(knn_top1=top1, knn_top5=top5)
                if D.is_main() and (top1 > best['top1'] or not best['epoch']):  # the first evaluation always saves
                    best = {'top1': top1, 'top5': top5, 'epoch': epoch + 1}
                    atomic_save(model.state_dict(), model_path)
            if D.is_main():
                log.log(row)
                knn_msg = '' if row['knn_top1'] is None else f' kNN top1 {top1:.2f} top5 {top5:.2f}'
                print(f'Epoch {epoch + 1}/{args.epochs} loss {stats["loss"]:.4f} lr {stats["lr"]:.2e} '
                      f'{stats["images_per_s"]:.0f} img/s{knn_msg}', flush=True)
                if args.save_every and (epoch + 1) % args.save_every == 0:
                    atomic_save(model.state_dict(), os.path.join(run_dir, f'{prefix}_model_{epoch + 1}.pth'))
                if memory is None and last:
                    atomic_save(model.state_dict(), model_path)
                atomic_save(training_state(epoch + 1, model, method, optimizer, scaler, best, log.history, args,
                                           run_id), state_path)
            D.barrier()

        if D.is_main():
            if isinstance(model, ImageNetModel):
                # torchvision layout without fc: the released format (resnet50.pth by default)
                atomic_save(plain_batchnorm(copy.deepcopy(model.backbone)).state_dict(),
                            os.path.join(run_dir, f'{args.arch}.pth'))
            if best['epoch']:
                init = next((r['knn_top1'] for r in log.history if r['epoch'] == 0), None)
                gain = '' if init is None else f'; random init {init:.2f}, {best["top1"] - init:+.2f} points'
                print(f'Best kNN top-1 {best["top1"]:.2f} (top-5 {best["top5"]:.2f}) at epoch {best["epoch"]}{gain}: '
                      f'{model_path}')
            log.summary(best_knn_top1=best['top1'], best_knn_top5=best['top5'])
    finally:
        log.finish()  # also when a non-finite loss or a kill stops the run: wandb keeps what it has
    return run_dir


def cli(argv=None):
    return run_command(lambda: main(argv), (NonFiniteLoss, CheckpointError, datasets.DatasetNotFound, ValueError))


if __name__ == '__main__':
    cli()
