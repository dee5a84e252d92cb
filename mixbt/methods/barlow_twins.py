"""Barlow Twins, HSIC and Mixed Barlow Twins: one class, the mixup regulariser and the off-diagonal
target as options (docs/protocol.md section 1)."""
from contextlib import nullcontext

import numpy as np
import torch

from mixbt import distributed as D
from mixbt import losses
from mixbt.errors import MixBTError
from mixbt.methods.base import Method, flag, full_precision, to_device
from mixbt.runtime import str2bool

BT_LOSSES = ('global', 'imagenet_reference')


class BarlowTwins(Method):
    """Barlow Twins / HSIC (--corr_neg_one) with the optional Mix-BT regulariser.

    loss = L_BT + s * lmbda * (||C_ma - C_ma_gt||^2 + ||C_mb - C_mb_gt||^2), docs/protocol.md section 1,
    computed in float32 (or the model's float64) outside autocast (`full_precision`).
    alpha ~ Beta(1, 1) is drawn from a generator seeded identically on every rank (so all
    ranks mix with the same alpha, with no communication); the permutation is per rank.
    --bt_loss imagenet_reference: the original ImageNet script's loss instead (`loss_of`).
    """
    log_keys = ('loss_bt', 'loss_mix')
    plot_keys = (('loss', 'loss_bt', 'loss_mix'),)
    # The original main.py's flags, names and meaning kept (--lambda_mixup: its ImageNet script's).
    flags = (
        flag('--lmbda', '--lambd', default=0.005, type=float, help='weight of the off-diagonal terms (lambda_BT)'),
        flag('--corr_neg_one', dest='corr_neg_one', action='store_true', help='HSIC: off-diagonal target -1'),
        flag('--corr_zero', dest='corr_neg_one', action='store_false', help='Barlow Twins: off-diagonal target 0'),
        flag('--is_mixup', default=False, type=str2bool, help='add the Mix-BT regulariser (true/false)'),
        flag('--mixup_loss_scale', default=5.0, type=float, help='s (lambda_reg) of the mixup regulariser'),
        flag('--mixup_warmup_epochs', default=0.0, type=float, help='linear warm-up of the mixup weight s'),
        flag('--lambda_mixup', default=None, type=float,
             help='mix-bt ImageNet script flag: sets --mixup_loss_scale to 0.5 * lambda_mixup'),
        flag('--bt_loss', default=None, choices=BT_LOSSES,
             help="global: ours, each embedding standardised over the global batch, one alpha per step, the "
                  "paper's mixup target alpha z_a^T z_b (the small-data code's loss); imagenet_reference: the "
                  "original ImageNet script's loss, which the released ImageNet runs were trained with: the "
                  "global batch split into --ref_world_size groups (its GPUs' shares), each standardised on its "
                  "own and mixed with its own alpha and permutation, matrices divided by --batch_size and "
                  "summed, mixup target alpha z_b^T z_b. Default: imagenet_reference on ImageNet, else global"),
    )
    resume_schedule = ('mixup_warmup_epochs',)
    resume_free = ('lambda_mixup',)  # recorded through --mixup_loss_scale, which it sets
    run_tag_key = 'lmbda'
    fixed = {'is_mixup': False, 'corr_neg_one': False}  # what the registered name implies

    @classmethod
    def defaults(cls, spec, dataset):
        """A data set whose row names the GPUs of the original's released runs (ImageNet: 8): their
        loss and update scale, each GPU with its own share of the batch (--bt_loss
        imagenet_reference), whose matrices were summed with a plain all_reduce, so each gradient
        was 1/R of the true one (docs/protocol.md sections 1 and 4). Elsewhere the global loss."""
        if not spec.ref_world_size:
            return {'bt_loss': 'global'}
        return {'ref_world_size': spec.ref_world_size, 'bt_loss': 'imagenet_reference'}

    @classmethod
    def resolve(cls, args):
        super().resolve(args)
        for key, value in cls.fixed.items():
            setattr(args, key, value)
        if args.lmbda < 0:
            raise MixBTError(f'--lmbda {args.lmbda}: lambda_BT must be >= 0')
        if args.is_mixup and args.mixup_loss_scale < 0:
            raise MixBTError(f'--mixup_loss_scale {args.mixup_loss_scale}: s must be >= 0')
        groups = args.ref_world_size or 1
        if args.bt_loss == 'imagenet_reference' and (args.batch_size % groups or args.batch_size < 2 * groups):
            raise MixBTError(f'--bt_loss imagenet_reference splits --batch_size {args.batch_size} into '
                             f'--ref_world_size {groups} equal groups of at least 2 images (the original\'s GPUs): '
                             f'use a multiple of {groups}, at least {2 * groups}, or --bt_loss global')

    @classmethod
    def check_processes(cls, args, world):
        """MixBTError unless every one of `world` processes holds whole groups of the reference loss."""
        if args.bt_loss == 'imagenet_reference':
            groups_per_process(args.ref_world_size, world)

    @classmethod
    def build(cls, args, model):
        cls.check_processes(args, D.world_size())
        method = cls(model, args.lmbda, corr_neg_one=args.corr_neg_one, is_mixup=args.is_mixup,
                     mixup_loss_scale=args.mixup_loss_scale, mixup_warmup_epochs=args.mixup_warmup_epochs,
                     seed=args.seed, fuse_views=args.fuse_views, bt_loss=args.bt_loss or 'global',
                     ref_groups=args.ref_world_size or 1, batch_size=args.batch_size)
        # The original ImageNet script autocast its loss too: under fp16 its C was an fp16 matmul.
        method.loss_in_autocast = args.bt_loss == 'imagenet_reference' and args.precision == 'fp16'
        return method

    def __init__(self, model, lmbda, corr_neg_one=False, is_mixup=True, mixup_loss_scale=4.0,
                 mixup_warmup_epochs=0.0, seed=0, fuse_views=True, bt_loss='global', ref_groups=8, batch_size=None):
        super().__init__(model, fuse_views)
        if bt_loss not in BT_LOSSES:
            raise MixBTError(f'bt_loss {bt_loss!r}: choose one of {list(BT_LOSSES)}')
        self.lmbda, self.corr_neg_one = lmbda, corr_neg_one
        self.is_mixup, self.mixup_loss_scale = is_mixup, mixup_loss_scale
        self.mixup_warmup_epochs = mixup_warmup_epochs
        self.bt_loss, self.ref_groups, self.batch_size = bt_loss, ref_groups, batch_size
        self.alpha_rng = np.random.default_rng(seed)
        self.loss_in_autocast = False  # build(): True for the reference loss under --precision fp16
        self.configure_bn()

    def embedding_views(self):
        return 3 if self.is_mixup else 2

    def mixup_scale(self, progress):
        """s, linearly warmed up over --mixup_warmup_epochs (the reference ImageNet script's option)."""
        if progress is None or self.mixup_warmup_epochs <= 0:
            return self.mixup_loss_scale
        return self.mixup_loss_scale * min(1.0, progress.epoch_float / self.mixup_warmup_epochs)

    def forward(self, views, progress=None):
        inputs, draws = self.inputs(views)
        return self.loss_of(self.embed(inputs), draws, progress)

    def inputs(self, views):
        """The tensors the model embeds this step (the mixed batch included), and the draws the loss
        needs (alpha and the permutation), drawn once for the whole batch (also under --accumulate)."""
        xa, xb = views[0], views[1]
        if not self.is_mixup:
            return [xa, xb], None
        if self.bt_loss == 'imagenet_reference':
            groups = groups_per_process(self.ref_groups, D.world_size(), xa.shape[0])
            alpha, perm = self.draw_group_mixup(groups, xa.shape[0] // groups, xa)
            mixed = alpha.view(-1, *[1] * (xa.dim() - 1))
            return [xa, xb, mixed * xa + (1 - mixed) * xb[perm]], (alpha, perm)
        alpha, perm = self.draw_mixup(xa.shape[0], xa.device)
        return [xa, xb, alpha * xa + (1 - alpha) * xb[perm]], (alpha, perm)

    def loss_of(self, z, draws, progress=None):
        """(loss, logged terms) of the embeddings `z` of `inputs`, computed in full precision.
        --bt_loss imagenet_reference: the original ImageNet script's loss (losses.group_standardize,
        losses.reference_mixup_regulariser) on this process's whole groups of the global batch, each
        group of rows one of its GPUs' share; the matrices are divided by the full --batch_size, also
        on a short last step, as the original's."""
        reference = self.bt_loss == 'imagenet_reference'
        if reference:
            groups = groups_per_process(self.ref_groups, D.world_size(), z[0].shape[0])
            n = self.batch_size or z[0].shape[0] * D.world_size()
        with (nullcontext() if self.loss_in_autocast else full_precision(z[0])):
            if reference:
                za, zb, *zm = [losses.group_standardize(v, groups) for v in z]
                c = losses.cross_correlation(za, zb, n)
            else:
                za, zb, *zm = [losses.standardize(v) for v in z]
                c = losses.cross_correlation(za, zb)
            loss_bt = losses.barlow_twins_loss(c, self.lmbda, self.corr_neg_one)
            if not self.is_mixup:
                return loss_bt, {'loss_bt': loss_bt, 'loss_mix': torch.zeros_like(loss_bt)}
            alpha, perm = draws
            if reference:
                reg = losses.reference_mixup_regulariser(zm[0], za, zb, perm, alpha.to(za.dtype)[:, None], n)
            else:
                reg = losses.mixup_regulariser(zm[0], za, zb, perm, alpha)
            loss_mix = self.mixup_scale(progress) * self.lmbda * reg
            return loss_bt + loss_mix, {'loss_bt': loss_bt, 'loss_mix': loss_mix}

    @torch.compiler.disable
    def draw_group_mixup(self, groups, rows, like):
        """Each reference GPU's own alpha ~ Beta(1, 1) and permutation of its `rows` rows. All
        ref_groups draws come from the generator seeded alike on every rank, which keeps its own
        `groups` of them: the draws do not depend on the number of processes. Returns each row's
        alpha (N,) and the row permutation (N,), within each group, on `like`'s device."""
        alphas = self.alpha_rng.beta(1.0, 1.0, size=self.ref_groups)
        perms = np.stack([self.alpha_rng.permutation(rows) for _ in range(self.ref_groups)])
        mine = slice(D.rank() * groups, (D.rank() + 1) * groups)
        alpha = torch.from_numpy(np.repeat(alphas[mine], rows)).to(like.dtype)
        perm = torch.from_numpy((perms[mine] + rows * np.arange(groups)[:, None]).reshape(-1))
        return to_device(alpha, like.device), to_device(perm, like.device)

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


def groups_per_process(groups, world, rows=None):
    """How many of the reference loss's `groups` each of `world` processes holds, and, given this
    process's `rows`, that they split into groups of equal size (at least 2 rows: a std needs two)."""
    if groups % world:
        raise MixBTError(f'--bt_loss imagenet_reference: the --ref_world_size {groups} groups cannot be shared '
                         f'equally by {world} processes (each must hold whole groups): run a number of processes '
                         f'that divides {groups}, or --bt_loss global')
    mine = groups // world
    if rows is not None and (rows % mine or rows < 2 * mine):
        raise MixBTError(f'--bt_loss imagenet_reference: {rows} images on a process cannot form its {mine} '
                         'groups of equal size, at least 2 each: the loader must pad the data set to a multiple '
                         'of --ref_world_size, as the original\'s DistributedSampler did')
    return mine


class MixBT(BarlowTwins):
    """Barlow Twins with the mixup regulariser (the default of --is_mixup true)."""
    fixed = {'is_mixup': True}


class HSIC(BarlowTwins):
    """Barlow Twins with off-diagonal target -1 (--corr_neg_one), no mixup."""
    fixed = {'is_mixup': False, 'corr_neg_one': True}
