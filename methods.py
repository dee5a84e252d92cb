"""SSL methods: each owns its extra state and turns a batch of views into (loss, logged terms).

The trainer (main.py) does not know which method it runs; a method does not know about
files. `Method.embed` runs the model once over the concatenated views with per-view
BatchNorm statistics (model.set_bn_views), which is exactly what separate forward passes
compute, or view by view with --fuse_views false.
"""
import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

import losses
from model import mlp, set_bn_views


@dataclass
class Progress:
    epoch: int            # 0-based epoch of the step being taken
    epochs: int
    step: int             # global step, 0-based
    steps_per_epoch: int

    @property
    def epoch_float(self):
        return self.step / max(self.steps_per_epoch, 1)


def upcast(z):
    """Half precision (autocast's output) raised to float32; float32 and float64 kept as they are."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def full_precision(z):
    """Autocast off, around the loss of every method: the embeddings are upcast (`upcast`), but
    inside the trainer's autocast the loss's matmuls (cross-correlations, covariances,
    whitening) would run in bf16/fp16 again; batch statistics need float32."""
    return torch.autocast(z.device.type, enabled=False)


def to_device(t, device):
    """A host-to-device copy that does not stall the host: a pageable `.to('cuda')` waits for
    all the GPU work queued before it (a per-step sync); pinned memory + non_blocking does not
    (the caching host allocator keeps the pinned buffer alive until the copy is done)."""
    if device.type != 'cuda':
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class Method(nn.Module):
    n_views = 2                  # views the data pipeline must deliver
    log_keys = ('loss',)         # per-step terms returned in the logs dict (besides 'loss')
    plot_keys = (('loss',),)

    def __init__(self, model, fuse_views=True):
        super().__init__()
        self.model = model
        self.fuse_views = fuse_views

    def embedding_views(self):
        """How many tensors go through the model per step (may exceed n_views, e.g. mixup)."""
        return self.n_views

    def configure_bn(self):
        set_bn_views(self.model, self.embedding_views() if self.fuse_views else 1)

    def embed(self, views, model=None):
        """Projector outputs of each view; half precision (autocast) is raised to float32 for the
        loss, which then runs outside autocast (`full_precision`)."""
        model = self.model if model is None else model
        if self.fuse_views and len(views) > 1:
            return [upcast(z) for z in model(torch.cat(views))[1].chunk(len(views))]
        return [upcast(model(v)[1]) for v in views]

    @torch.no_grad()
    def after_step(self, progress):
        """Called after each optimiser step (e.g. BYOL's EMA update)."""


class BarlowTwins(Method):
    """Barlow Twins / HSIC (--corr_neg_one) with the optional Mix-BT regulariser.

    loss = L_BT + s * lmbda * (||C_ma - C_ma_gt||^2 + ||C_mb - C_mb_gt||^2), REFERENCE.md 1,
    computed in float32 (or the model's float64) outside autocast (`full_precision`).
    alpha ~ Beta(1, 1) is drawn from a generator seeded identically on every rank (so all
    ranks mix with the same alpha, with no communication); the permutation is per rank.
    """
    log_keys = ('loss_bt', 'loss_mix')
    plot_keys = (('loss', 'loss_bt', 'loss_mix'),)

    def __init__(self, model, lmbda, corr_neg_one=False, is_mixup=True, mixup_loss_scale=4.0,
                 mixup_warmup_epochs=0.0, seed=0, fuse_views=True):
        super().__init__(model, fuse_views)
        self.lmbda, self.corr_neg_one = lmbda, corr_neg_one
        self.is_mixup, self.mixup_loss_scale = is_mixup, mixup_loss_scale
        self.mixup_warmup_epochs = mixup_warmup_epochs
        self.alpha_rng = np.random.default_rng(seed)
        self.configure_bn()

    def embedding_views(self):
        return 3 if self.is_mixup else 2

    def mixup_scale(self, progress):
        """s, linearly warmed up over --mixup_warmup_epochs (the reference ImageNet script's option)."""
        if progress is None or self.mixup_warmup_epochs <= 0:
            return self.mixup_loss_scale
        return self.mixup_loss_scale * min(1.0, progress.epoch_float / self.mixup_warmup_epochs)

    def forward(self, views, progress=None):
        xa, xb = views[0], views[1]
        if self.is_mixup:
            alpha, perm = self.draw_mixup(xa.shape[0], xa.device)
            z = self.embed([xa, xb, alpha * xa + (1 - alpha) * xb[perm]])
        else:
            z = self.embed([xa, xb])
        with full_precision(z[0]):
            za, zb, *zm = [losses.standardize(v) for v in z]
            loss_bt = losses.barlow_twins_loss(losses.cross_correlation(za, zb), self.lmbda, self.corr_neg_one)
            if not self.is_mixup:
                return loss_bt, {'loss_bt': loss_bt, 'loss_mix': torch.zeros_like(loss_bt)}
            reg = losses.mixup_regulariser(zm[0], za, zb, perm, alpha)
            loss_mix = self.mixup_scale(progress) * self.lmbda * reg
            return loss_bt + loss_mix, {'loss_bt': loss_bt, 'loss_mix': loss_mix}

    @torch.compiler.disable
    def draw_mixup(self, n, device):
        """alpha ~ Beta(1, 1), the same on every rank; a permutation of this rank's n samples.
        alpha is a 0-d tensor on the device: under --compile a Python float would be baked into
        the compiled graph and recompile it at every step (and then fall back to eager)."""
        alpha = torch.full((), float(self.alpha_rng.beta(1.0, 1.0)), device=device)
        return alpha, torch.randperm(n, device=device)

    def get_extra_state(self):
        return {'alpha_rng': self.alpha_rng.bit_generator.state}

    def set_extra_state(self, state):
        if state and 'alpha_rng' in state:
            self.alpha_rng.bit_generator.state = state['alpha_rng']


# ----------------------------------------------------------------------------------------
# Baselines (REFERENCE.md section 6). SimCLR, BYOL and W-MSE follow the W-MSE repository
# (htdt/self-supervised), which the reference's ssl-sota/ copies; CW-RGP its own small-data
# code (winci-ai/CW-RGP base/), built on the same repository; INTL winci-ai/INTL (cifar/).
# ----------------------------------------------------------------------------------------
def head_of(model):
    return model.g if hasattr(model, 'g') else model.projector


class Baseline(Method):
    """Shared by the baselines. As in the W-MSE repository, the backbone sees each view
    separately (per-view BatchNorm, fused into one forward); the head sees either each view
    separately (BYOL, INTL) or all views at once with joint BatchNorm statistics (`joint_head`:
    the originals' SimCLR, W-MSE and CW-RGP call head(torch.cat(h))). The losses run in
    float32 outside autocast (`full_precision`; whitening in bf16 is not whitening). `rng`, a
    CPU generator, draws the sub-batch and channel permutations: seeded alike on every rank,
    so all ranks draw the same ones without communicating; its state is saved with the method
    (get_extra_state). A step's permutations go to the device in one non-blocking copy
    (`to_device`), so drawing them never makes the host wait for the GPU."""
    joint_head = False
    log_keys = ()

    def __init__(self, model, n_views=2, seed=0, fuse_views=True):
        super().__init__(model, fuse_views)
        self.n_views = n_views
        self.rng = torch.Generator().manual_seed(seed)

    def bn_views(self):
        return self.n_views if self.fuse_views else 1

    def configure_bn(self):
        set_bn_views(self.model, self.bn_views())
        if self.joint_head:
            set_bn_views(head_of(self.model), 1)

    def head_outputs(self, views, model=None):
        """Un-normalised head outputs g(f(x)) of each view, in float32 (float64 for a float64 model)."""
        model = self.model if model is None else model
        head = head_of(model)
        h = model.features(torch.cat(views)) if self.fuse_views else torch.cat([model.features(v) for v in views])
        z = head(h) if self.fuse_views or self.joint_head else torch.cat([head(c) for c in h.chunk(len(views))])
        return list(upcast(z).chunk(len(views)))

    def get_extra_state(self):
        return {'rng': self.rng.get_state()}

    def set_extra_state(self, state):
        if state and 'rng' in state:
            self.rng.set_state(state['rng'])


class SimCLR(Baseline):
    """SimCLR as the W-MSE repository's `contrastive` method: head output -> BatchNorm1d
    (`bn_last`, over all views) -> losses.nt_xent with temperature --tau, over all views."""
    joint_head = True

    def __init__(self, model, emb, tau=0.5, n_views=2, seed=0, fuse_views=True):
        super().__init__(model, n_views, seed, fuse_views)
        self.bn_last = nn.BatchNorm1d(emb)
        self.tau = tau
        self.configure_bn()

    def forward(self, views, progress=None):
        z = upcast(self.bn_last(torch.cat(self.head_outputs(views))))
        with full_precision(z):
            return losses.nt_xent(z.chunk(len(views)), self.tau), {}


class BYOL(Baseline):
    """BYOL as the W-MSE repository's: predictor Linear(emb, head_size)-BN-ReLU-Linear(head_size,
    emb); `target` = EMA of backbone + head (parameters only: its BatchNorm statistics are its
    own, from its forward in train mode, as in the original), never trained, updated after every
    step with tau = 1 - (1 - byol_tau)(cos(pi * epoch / epochs) + 1) / 2. losses.byol_loss."""

    def __init__(self, model, emb, head_size=1024, byol_tau=0.99, n_views=2, seed=0, fuse_views=True):
        super().__init__(model, n_views, seed, fuse_views)
        self.predictor = mlp([emb, head_size, emb], last_bias=True)
        self.target = copy.deepcopy(model).requires_grad_(False)
        self.byol_tau = byol_tau
        self.configure_bn()

    def configure_bn(self):
        super().configure_bn()
        set_bn_views(self.target, self.bn_views())
        set_bn_views(self.predictor, self.bn_views())

    def forward(self, views, progress=None):
        z = self.head_outputs(views)
        p = self.predictor(torch.cat(z)).chunk(len(views)) if self.fuse_views else [self.predictor(x) for x in z]
        with torch.no_grad():
            targets = self.head_outputs(views, self.target)
        with full_precision(z[0]):
            return losses.byol_loss([upcast(x) for x in p], targets), {}

    def target_tau(self, progress):
        return 1 - (1 - self.byol_tau) * (math.cos(math.pi * progress.epoch / progress.epochs) + 1) / 2

    @torch.no_grad()
    def after_step(self, progress):
        tau = self.target_tau(progress)
        for t, s in zip(self.target.parameters(), self.model.parameters()):
            t.copy_(t * tau + s * (1 - tau))


class WMSE(Baseline):
    """W-MSE: losses.wmse_loss on the head outputs, whitened in sub-batches of --w_size samples
    of the global batch, --w_iter random permutations per step (drawn from `rng`).

    A Cholesky factorisation that fails (covariance not positive definite) is not checked at
    each step (checking is a host sync on CUDA): losses.cholesky_whiten turns it into a NaN
    loss, which the trainer's periodic finiteness check stops on. The one predictable cause,
    a sub-batch too small for the embedding (w_size <= emb with w_eps 0: the covariance is
    singular), is refused up front."""
    joint_head = True

    def __init__(self, model, w_size=128, w_iter=1, w_eps=0.0, n_views=2, seed=0, fuse_views=True):
        super().__init__(model, n_views, seed, fuse_views)
        self.w_size, self.w_iter, self.w_eps = w_size, w_iter, w_eps
        self.configure_bn()

    def sub_batches(self, z):
        n = losses.global_batch_size(z)
        if n % self.w_size:
            raise ValueError(f'--w_size {self.w_size} must divide the global batch size {n}')
        return n, n // self.w_size

    def forward(self, views, progress=None):
        z = self.head_outputs(views)
        n, _ = self.sub_batches(z[0])
        if self.w_eps == 0 and self.w_size <= z[0].shape[1]:
            raise ValueError(f'--w_size {self.w_size} must exceed the embedding size {z[0].shape[1]} '
                             '(or set --w_eps > 0): the covariance of a sub-batch is singular')
        perms = to_device(torch.stack([torch.randperm(n, generator=self.rng) for _ in range(self.w_iter)]),
                          z[0].device)
        with full_precision(z[0]):
            return losses.wmse_loss(z, perms, self.w_size, self.w_eps), {}


class CWRGP(WMSE):
    """CW-RGP: as W-MSE, with losses.cwrgp_loss: channel whitening in --group groups, a fresh
    random channel permutation for every (permutation, sub-batch, view), drawn from `rng`, in
    the order of the original loops. All of a step's permutations travel in one copy. One
    host sync per step remains on CUDA: the eigendecomposition (torch.linalg.eigh, one batched
    call for all sub-batches, views and groups) checks its error codes on the host, and
    PyTorch has no unchecked variant."""

    def __init__(self, model, w_size=64, w_iter=1, w_eps=0.0, group=4, n_views=2, seed=0, fuse_views=True):
        super().__init__(model, w_size, w_iter, w_eps, n_views, seed, fuse_views)
        self.group = group

    def forward(self, views, progress=None):
        z = self.head_outputs(views)
        n, chunks = self.sub_batches(z[0])
        dim, device = z[0].shape[1], z[0].device
        if dim % self.group:
            raise ValueError(f'--group {self.group} must divide the embedding size {dim}')
        per_perm = chunks * len(views)  # channel permutations per sub-batch permutation
        drawn = []
        for _ in range(self.w_iter):
            drawn.append(torch.randperm(n, generator=self.rng))
            drawn.append(torch.cat([torch.randperm(dim, generator=self.rng) for _ in range(per_perm)]))
        parts = to_device(torch.cat(drawn), device).split([n, per_perm * dim] * self.w_iter)
        perms = torch.stack(parts[0::2])                                                     # [k]
        shuffles = torch.stack(parts[1::2]).view(self.w_iter, chunks, len(views), dim)        # [k][c][i]
        with full_precision(z[0]):
            return losses.cwrgp_loss(z, perms, shuffles, self.w_size, self.group, self.w_eps), {}


class INTL(Baseline):
    """INTL: losses.intl_loss (IterNorm with --intl_iters Newton steps + trace loss) on each
    view's head output; the head sees each view separately, as in INTL's forward."""

    def __init__(self, model, iters=4, n_views=2, seed=0, fuse_views=True):
        super().__init__(model, n_views, seed, fuse_views)
        self.iters = iters
        self.configure_bn()

    def forward(self, views, progress=None):
        z = self.head_outputs(views)
        with full_precision(z[0]):
            return losses.intl_loss(z, self.iters), {}


BASELINES = ('simclr', 'byol', 'wmse', 'intl', 'cwrgp')
METHODS = ('mixbt', 'barlowtwins', 'hsic') + BASELINES


def recipe(method, dataset):
    """The defaults of a baseline on a data set (used for the flags left unset).

    SimCLR, BYOL, W-MSE: the W-MSE README's command lines (32 px: lr 3e-3, emb 64; STL-10,
    Tiny-ImageNet: lr 2e-3, emb 128; W-MSE w_size 128 / 256) and its cfg.py (Adam, weight
    decay 1e-6, head 1024, 500 warm-up steps, x0.2 at epochs E-50 and E-25; w_eps 1e-4 as in
    the reference's ssl-sota/cfg.py). CW-RGP: scripts/base.sh and base/cfg.py of winci-ai/CW-RGP
    (the same Adam recipe; emb 512, w_size 64, group 4; Tiny-ImageNet emb 1024, head 2048,
    w_size 128, group 2; w_eps 0). INTL: scripts/cifar10.sh and cifar/cfg.py of winci-ai/INTL
    (SGD momentum 0.9, lr 0.3 x batch/256, weight decay 1e-4, 2 warm-up epochs then cosine to
    0.001x, projector 2048-2048-2048); it has no STL-10/Tiny-ImageNet recipe: the same is used."""
    small = dataset in ('cifar10', 'cifar100', 'fashionmnist')
    tiny = dataset == 'tiny_imagenet'
    if method == 'intl':
        return dict(optimizer='sgd', lr=0.3, weight_decay=1e-4, lr_shed='cosine', warmup_epochs=2, warmup_steps=0,
                    head_size=2048, emb=2048)
    common = dict(optimizer='adam', lr=3e-3 if small else 2e-3, weight_decay=1e-6, lr_shed='step', warmup_steps=500)
    if method == 'cwrgp':
        return dict(common, head_size=2048 if tiny else 1024, emb=1024 if tiny else 512, w_size=128 if tiny else 64,
                    group=2 if tiny else 4, w_eps=0.0)
    out = dict(common, head_size=1024, emb=64 if small else 128)
    if method == 'wmse':
        out.update(w_size=128 if small else 256, w_eps=1e-4)
    return out


def add_method_args(parser):
    """Flags of the methods beyond the Barlow Twins family (main.py calls this)."""
    g = parser.add_argument_group('baselines (simclr, byol, wmse, intl, cwrgp)',
                                  'flags left unset take the method\'s recipe (methods.recipe), and so do '
                                  '--lr, --lr_shed, --optimizer, --weight_decay, --warmup_steps, --warmup_epochs')
    a = g.add_argument
    a('--num_views', '--num_samples', '--nmb_crops', default=None, type=int,
      help='views per image (W-MSE 4 / CW-RGP 4: 4); default 2')
    a('--emb', default=None, type=int, help='head output size (W-MSE repository name); sets --projector HEAD-EMB')
    a('--head_size', default=None, type=int, help='hidden width of the head (INTL: of both hidden layers)')
    a('--tau', default=0.5, type=float, help='SimCLR: NT-Xent temperature')
    a('--byol_tau', default=0.99, type=float, help='BYOL: starting EMA rate of the target network')
    a('--w_size', default=None, type=int, help='W-MSE, CW-RGP: whitening sub-batch size (of the global batch)')
    a('--w_iter', default=1, type=int, help='W-MSE, CW-RGP: random sub-batch partitions per step')
    a('--w_eps', default=None, type=float, help='W-MSE, CW-RGP: whitening shrinkage, (1-eps) cov + eps I')
    a('--group', default=None, type=int, help='CW-RGP: channel groups whitened separately')
    a('--intl_iters', '--iters', default=4, type=int, help='INTL: Newton iterations of IterNorm (T)')


def resolve_method_args(args):
    """Per-method defaults applied after parsing (main.py calls this, before its own defaults):
    a baseline fills each flag the user left unset (None) from `recipe`, and its head
    --projector from --head_size/--emb (INTL: HEAD-HEAD-EMB); --feature_dim follows the head."""
    if args.method not in BASELINES:
        if args.num_views not in (None, 2):
            raise ValueError(f'--num_views {args.num_views}: --method {args.method} uses two views')
        return args
    for key, value in recipe(args.method, args.dataset).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.projector is None:
        hidden = [args.head_size] * (2 if args.method == 'intl' else 1)
        args.projector = '-'.join(str(s) for s in hidden + [args.emb])
    args.emb = args.feature_dim = int(args.projector.split('-')[-1])
    if args.num_views is None:
        args.num_views = 2
    return args


def build_method(args, model):
    """The method object for --method (default: the original behaviour from --is_mixup /
    --corr_neg_one)."""
    name = args.method
    fuse = args.fuse_views
    if name in ('mixbt', 'barlowtwins', 'hsic'):
        return BarlowTwins(model, args.lmbda, corr_neg_one=args.corr_neg_one, is_mixup=args.is_mixup,
                           mixup_loss_scale=args.mixup_loss_scale, mixup_warmup_epochs=args.mixup_warmup_epochs,
                           seed=args.seed, fuse_views=fuse)
    views, seed = args.num_views, args.seed
    if name == 'simclr':
        return SimCLR(model, args.emb, args.tau, views, seed, fuse)
    if name == 'byol':
        return BYOL(model, args.emb, args.head_size, args.byol_tau, views, seed, fuse)
    if name == 'wmse':
        return WMSE(model, args.w_size, args.w_iter, args.w_eps, views, seed, fuse)
    if name == 'cwrgp':
        return CWRGP(model, args.w_size, args.w_iter, args.w_eps, args.group, views, seed, fuse)
    if name == 'intl':
        return INTL(model, args.intl_iters, views, seed, fuse)
    raise ValueError(f'unknown --method {name!r}; choose one of {METHODS}')
