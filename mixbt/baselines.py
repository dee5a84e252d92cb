"""The baselines (docs/protocol.md section 6). SimCLR, BYOL and W-MSE follow the W-MSE repository
(htdt/self-supervised), which the reference's ssl-sota/ copies; CW-RGP its own small-data code
(winci-ai/CW-RGP base/), built on the same repository; INTL winci-ai/INTL (cifar/). Each is
registered in methods.METHODS.
"""
import copy
import math

import torch

from mixbt import losses
from mixbt.errors import MixBTError
from mixbt.method_base import Method, flag, full_precision, to_device, upcast
from mixbt.nets import BatchNorm1d, mlp, set_bn_views


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
    flags = (
        flag('--num_views', '--num_samples', '--nmb_crops', default=None, type=int,
             help='views per image (W-MSE 4 / CW-RGP 4: 4); default 2'),
        flag('--emb', default=None, type=int, help='head output size (W-MSE repository name); sets --projector HEAD-EMB'),
        flag('--head_size', default=None, type=int, help='hidden width of the head (INTL: of both hidden layers)'),
    )
    head_layers = 1  # hidden layers of the head

    @classmethod
    def defaults(cls, spec, dataset):
        """The W-MSE README's command lines (32 px: lr 3e-3, emb 64; 64 px: lr 2e-3, emb 128) and
        its cfg.py: Adam, weight decay 1e-6, head 1024, 500 warm-up steps, x0.2 at epochs E-50
        and E-25."""
        small = spec.size_class == '32px'
        return dict(optimizer='adam', lr=3e-3 if small else 2e-3, weight_decay=1e-6, lr_shed='step',
                    warmup_steps=500, head_size=1024, emb=64 if small else 128)

    @classmethod
    def resolve(cls, args):
        """The head --projector from --head_size/--emb; --feature_dim follows the head."""
        if args.projector is None:
            args.projector = '-'.join(str(s) for s in [args.head_size] * cls.head_layers + [args.emb])
        args.emb = args.feature_dim = int(args.projector.split('-')[-1])
        if args.num_views is None:
            args.num_views = 2
        if args.num_views < 2:
            raise MixBTError(f'--num_views {args.num_views}: a method needs at least 2 views')

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
    flags = Baseline.flags + (flag('--tau', default=0.5, type=float, help='SimCLR: NT-Xent temperature'),)

    @classmethod
    def resolve(cls, args):
        super().resolve(args)
        if args.tau <= 0:
            raise MixBTError(f'--tau {args.tau}: the temperature must be > 0')

    @classmethod
    def build(cls, args, model):
        return cls(model, args.emb, args.tau, args.num_views, args.seed, args.fuse_views)

    def __init__(self, model, emb, tau=0.5, n_views=2, seed=0, fuse_views=True):
        super().__init__(model, n_views, seed, fuse_views)
        self.bn_last = BatchNorm1d(emb)
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

    flags = Baseline.flags + (
        flag('--byol_tau', default=0.99, type=float, help='BYOL: starting EMA rate of the target network'),)

    @classmethod
    def resolve(cls, args):
        super().resolve(args)
        if not 0 <= args.byol_tau <= 1:
            raise MixBTError(f'--byol_tau {args.byol_tau}: the EMA rate must be in [0, 1]')

    @classmethod
    def build(cls, args, model):
        return cls(model, args.emb, args.head_size, args.byol_tau, args.num_views, args.seed, args.fuse_views)

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
    whitens_embedding = True  # the whole embedding at once: a sub-batch must be larger than it
    flags = Baseline.flags + (
        flag('--w_size', default=None, type=int, help='W-MSE, CW-RGP: whitening sub-batch size (of the global batch)'),
        flag('--w_iter', default=1, type=int, help='W-MSE, CW-RGP: random sub-batch partitions per step'),
        flag('--w_eps', default=None, type=float, help='W-MSE, CW-RGP: whitening shrinkage, (1-eps) cov + eps I'),
    )

    @classmethod
    def defaults(cls, spec, dataset):
        """W-MSE: w_size 128 (32 px) / 256; w_eps 1e-4 as in the reference's ssl-sota/cfg.py."""
        return dict(super().defaults(spec, dataset), w_size=128 if spec.size_class == '32px' else 256, w_eps=1e-4)

    @classmethod
    def resolve(cls, args):
        super().resolve(args)
        if args.w_size < 1 or args.batch_size % args.w_size:
            raise MixBTError(f'--w_size {args.w_size} must divide the global batch size {args.batch_size}')
        if args.w_iter < 1:
            raise MixBTError(f'--w_iter {args.w_iter}: at least one partition per step')
        if args.w_eps < 0:
            raise MixBTError(f'--w_eps {args.w_eps} must be >= 0')
        if cls.whitens_embedding and args.w_eps == 0 and args.w_size <= args.emb:
            raise MixBTError(f'--w_size {args.w_size} must exceed the embedding size {args.emb} (or set --w_eps > 0): '
                             'the covariance of a sub-batch is singular')

    @classmethod
    def build(cls, args, model):
        return cls(model, args.w_size, args.w_iter, args.w_eps, args.num_views, args.seed, args.fuse_views)

    def __init__(self, model, w_size=128, w_iter=1, w_eps=0.0, n_views=2, seed=0, fuse_views=True):
        super().__init__(model, n_views, seed, fuse_views)
        self.w_size, self.w_iter, self.w_eps = w_size, w_iter, w_eps
        self.configure_bn()

    def sub_batches(self, z):
        n = losses.global_batch_size(z)
        if n % self.w_size:
            raise MixBTError(f'--w_size {self.w_size} must divide the global batch size {n}')
        return n, n // self.w_size

    def forward(self, views, progress=None):
        z = self.head_outputs(views)
        n, _ = self.sub_batches(z[0])
        if self.w_eps == 0 and self.w_size <= z[0].shape[1]:
            raise MixBTError(f'--w_size {self.w_size} must exceed the embedding size {z[0].shape[1]} '
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

    whitens_embedding = False  # channel groups, each of emb/group channels
    flags = WMSE.flags + (flag('--group', default=None, type=int, help='CW-RGP: channel groups whitened separately'),)

    @classmethod
    def defaults(cls, spec, dataset):
        """scripts/base.sh and base/cfg.py of winci-ai/CW-RGP: the W-MSE Adam recipe; emb 512, w_size
        64, group 4, w_eps 0; Tiny-ImageNet emb 1024, head 2048, w_size 128, group 2."""
        tiny = dataset == 'tiny_imagenet'
        return dict(Baseline.defaults(spec, dataset), head_size=2048 if tiny else 1024,
                    emb=1024 if tiny else 512, w_size=128 if tiny else 64, group=2 if tiny else 4, w_eps=0.0)

    @classmethod
    def resolve(cls, args):
        super().resolve(args)
        if args.group < 1 or args.emb % args.group:
            raise MixBTError(f'--group {args.group} must divide the embedding size {args.emb}')

    @classmethod
    def build(cls, args, model):
        return cls(model, args.w_size, args.w_iter, args.w_eps, args.group, args.num_views, args.seed, args.fuse_views)

    def __init__(self, model, w_size=64, w_iter=1, w_eps=0.0, group=4, n_views=2, seed=0, fuse_views=True):
        super().__init__(model, w_size, w_iter, w_eps, n_views, seed, fuse_views)
        self.group = group

    def forward(self, views, progress=None):
        z = self.head_outputs(views)
        n, chunks = self.sub_batches(z[0])
        dim, device = z[0].shape[1], z[0].device
        if dim % self.group:
            raise MixBTError(f'--group {self.group} must divide the embedding size {dim}')
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

    flags = Baseline.flags + (
        flag('--intl_iters', '--iters', default=4, type=int, help='INTL: Newton iterations of IterNorm (T)'),)
    head_layers = 2

    @classmethod
    def defaults(cls, spec, dataset):
        """scripts/cifar10.sh and cifar/cfg.py of winci-ai/INTL: SGD momentum 0.9, lr 0.3 x batch/256,
        weight decay 1e-4, 2 warm-up epochs then cosine to 0.001x, projector 2048-2048-2048; it
        has no STL-10/Tiny-ImageNet recipe: the same is used."""
        return dict(optimizer='sgd', lr=0.3, weight_decay=1e-4, lr_shed='cosine_exact', warmup_epochs=2, warmup_steps=0,
                    head_size=2048, emb=2048)

    @classmethod
    def resolve(cls, args):
        super().resolve(args)
        if args.intl_iters < 1:
            raise MixBTError(f'--intl_iters {args.intl_iters}: at least one Newton iteration')

    @classmethod
    def build(cls, args, model):
        return cls(model, args.intl_iters, args.num_views, args.seed, args.fuse_views)

    def __init__(self, model, iters=4, n_views=2, seed=0, fuse_views=True):
        super().__init__(model, n_views, seed, fuse_views)
        self.iters = iters
        self.configure_bn()

    def forward(self, views, progress=None):
        z = self.head_outputs(views)
        with full_precision(z[0]):
            return losses.intl_loss(z, self.iters), {}
