"""CW-RGP (Weng et al. 2022): W-MSE with group channel whitening, as its small-data code.
"""

import torch

from mixbt import losses
from mixbt.errors import MixBTError
from mixbt.methods.base import flag, full_precision, to_device
from mixbt.methods.baseline import Baseline
from mixbt.methods.wmse import WMSE


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
