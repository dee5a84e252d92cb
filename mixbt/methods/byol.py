"""BYOL, as the W-MSE repository's.
"""
import copy
import math

import torch

from mixbt import losses
from mixbt.errors import MixBTError
from mixbt.methods.base import flag, full_precision, upcast
from mixbt.methods.baseline import Baseline
from mixbt.nets import mlp, set_bn_views


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
        self.predictor = mlp([emb, head_size, emb], last_bias=True, hidden_bias=True)  # W-MSE's: biases throughout
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
