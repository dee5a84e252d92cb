"""INTL (Weng et al. 2024), as winci-ai/INTL cifar/.
"""


from mixbt import losses
from mixbt.errors import MixBTError
from mixbt.methods.base import flag, full_precision
from mixbt.methods.baseline import Baseline


class INTL(Baseline):
    """INTL: losses.intl_loss (IterNorm with --intl_iters Newton steps + trace loss) on each
    view's head output; the head sees each view separately, as in INTL's forward."""

    flags = Baseline.flags + (
        flag('--intl_iters', '--iters', default=4, type=int, help='INTL: Newton iterations of IterNorm (T)'),)
    head_layers = 2
    head_hidden_bias = False  # INTL's get_projection: Linear(bias=False) before each BatchNorm

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
