"""What the baselines share (docs/protocol.md section 6). SimCLR, BYOL and W-MSE follow the W-MSE
repository (htdt/self-supervised), which the reference's ssl-sota/ copies; CW-RGP its own small-data code
(winci-ai/CW-RGP base/), built on the same repository; INTL winci-ai/INTL (cifar/).
"""

import torch

from mixbt.errors import MixBTError
from mixbt.methods.base import Method, flag, upcast
from mixbt.nets import set_bn_views


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
    head_hidden_bias = True  # the W-MSE repository's get_head: a bias on every Linear (model.build_model)

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
