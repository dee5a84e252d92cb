"""SimCLR, as the W-MSE repository's `contrastive` method.
"""

import torch

from mixbt import losses
from mixbt.errors import MixBTError
from mixbt.methods.base import flag, full_precision, upcast
from mixbt.methods.baseline import Baseline
from mixbt.nets import BatchNorm1d


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
