"""Barlow Twins, HSIC and Mixed Barlow Twins: one class, the mixup regulariser and the off-diagonal
target as options (docs/protocol.md section 1)."""
import numpy as np
import torch

from mixbt import losses
from mixbt.errors import MixBTError
from mixbt.methods.base import Method, flag, full_precision
from mixbt.runtime import str2bool


class BarlowTwins(Method):
    """Barlow Twins / HSIC (--corr_neg_one) with the optional Mix-BT regulariser.

    loss = L_BT + s * lmbda * (||C_ma - C_ma_gt||^2 + ||C_mb - C_mb_gt||^2), docs/protocol.md section 1,
    computed in float32 (or the model's float64) outside autocast (`full_precision`).
    alpha ~ Beta(1, 1) is drawn from a generator seeded identically on every rank (so all
    ranks mix with the same alpha, with no communication); the permutation is per rank.
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
    )
    resume_schedule = ('mixup_warmup_epochs',)
    fixed = {'is_mixup': False, 'corr_neg_one': False}  # what the registered name implies

    @classmethod
    def defaults(cls, spec, dataset):
        """ImageNet: the update scale of the released runs, 8 GPUs whose cross-correlation was summed
        with a plain all_reduce, so each gradient was 1/8 of the true one (docs/protocol.md section 4)."""
        return {} if spec.in_memory else {'ref_world_size': 8}

    @classmethod
    def resolve(cls, args):
        super().resolve(args)
        for key, value in cls.fixed.items():
            setattr(args, key, value)
        if args.lmbda < 0:
            raise MixBTError(f'--lmbda {args.lmbda}: lambda_BT must be >= 0')
        if args.is_mixup and args.mixup_loss_scale < 0:
            raise MixBTError(f'--mixup_loss_scale {args.mixup_loss_scale}: s must be >= 0')

    @classmethod
    def build(cls, args, model):
        return cls(model, args.lmbda, corr_neg_one=args.corr_neg_one, is_mixup=args.is_mixup,
                   mixup_loss_scale=args.mixup_loss_scale, mixup_warmup_epochs=args.mixup_warmup_epochs,
                   seed=args.seed, fuse_views=args.fuse_views)

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


class MixBT(BarlowTwins):
    """Barlow Twins with the mixup regulariser (the default of --is_mixup true)."""
    fixed = {'is_mixup': True}


class HSIC(BarlowTwins):
    """Barlow Twins with off-diagonal target -1 (--corr_neg_one), no mixup."""
    fixed = {'is_mixup': False, 'corr_neg_one': True}
