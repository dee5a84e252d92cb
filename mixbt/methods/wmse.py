"""W-MSE (Ermolov et al. 2021), as its own repository.
"""

import torch

from mixbt import losses
from mixbt.errors import MixBTError
from mixbt.methods.base import flag, full_precision, to_device
from mixbt.methods.baseline import Baseline


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
