"""SSL methods: each owns its extra state and turns a batch of views into (loss, logged terms).

The trainer (main.py) does not know which method it runs; a method does not know about
files. `Method.embed` runs the model once over the concatenated views with per-view
BatchNorm statistics (model.set_bn_views), which is exactly what separate forward passes
compute, or view by view with --fuse_views false.
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

import losses
from model import set_bn_views


@dataclass
class Progress:
    epoch: int            # 0-based epoch of the step being taken
    epochs: int
    step: int             # global step, 0-based
    steps_per_epoch: int

    @property
    def epoch_float(self):
        return self.step / max(self.steps_per_epoch, 1)


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
        """Projector outputs of each view, in float32 for the loss."""
        model = self.model if model is None else model
        if self.fuse_views and len(views) > 1:
            return [z.float() for z in model(torch.cat(views))[1].chunk(len(views))]
        return [model(v)[1].float() for v in views]

    @torch.no_grad()
    def after_step(self, progress):
        """Called after each optimiser step (e.g. BYOL's EMA update)."""


class BarlowTwins(Method):
    """Barlow Twins / HSIC (--corr_neg_one) with the optional Mix-BT regulariser.

    loss = L_BT + s * lmbda * (||C_ma - C_ma_gt||^2 + ||C_mb - C_mb_gt||^2), REFERENCE.md 1.
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
        if not self.is_mixup:
            za, zb = [losses.standardize(z) for z in self.embed([xa, xb])]
            loss_bt = losses.barlow_twins_loss(losses.cross_correlation(za, zb), self.lmbda, self.corr_neg_one)
            return loss_bt, {'loss_bt': loss_bt, 'loss_mix': torch.zeros_like(loss_bt)}
        alpha = float(self.alpha_rng.beta(1.0, 1.0))
        perm = torch.randperm(xa.shape[0], device=xa.device)
        xm = alpha * xa + (1 - alpha) * xb[perm]
        za, zb, zm = [losses.standardize(z) for z in self.embed([xa, xb, xm])]
        loss_bt = losses.barlow_twins_loss(losses.cross_correlation(za, zb), self.lmbda, self.corr_neg_one)
        reg = losses.mixup_regulariser(zm, za, zb, perm, alpha)
        loss_mix = self.mixup_scale(progress) * self.lmbda * reg
        return loss_bt + loss_mix, {'loss_bt': loss_bt, 'loss_mix': loss_mix}

    def get_extra_state(self):
        return {'alpha_rng': self.alpha_rng.bit_generator.state}

    def set_extra_state(self, state):
        if state and 'alpha_rng' in state:
            self.alpha_rng.bit_generator.state = state['alpha_rng']


METHODS = ('mixbt', 'barlowtwins', 'hsic')


def build_method(args, model):
    """The method object for --method (default: the original behaviour from --is_mixup /
    --corr_neg_one)."""
    name = args.method
    fuse = args.fuse_views
    if name in ('mixbt', 'barlowtwins', 'hsic'):
        return BarlowTwins(model, args.lmbda, corr_neg_one=args.corr_neg_one, is_mixup=args.is_mixup,
                           mixup_loss_scale=args.mixup_loss_scale, mixup_warmup_epochs=args.mixup_warmup_epochs,
                           seed=args.seed, fuse_views=fuse)
    raise ValueError(f'unknown --method {name!r}; choose one of {METHODS}')
