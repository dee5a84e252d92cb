"""The models: the small-data `Model` and the official Barlow Twins `ImageNetModel`.

Each keeps the key layout of the original code, so that checkpoints move freely between this
repository and the released files (docs/protocol.md section 2):

* `Model` (small data sets): keys `f.*` (ResNet with a 3x3 stem; a folder of images at 96 px
  and up: the 7x7 ImageNet stem) and `g.*` (projector).
* `ImageNetModel`: keys `backbone.*` (torchvision ResNet-50, `fc` = Identity) and `projector.*`.

Their building blocks (backbones, projectors, per-view BatchNorm) are mixbt/nets.py's; reading
checkpoints is mixbt/checkpoints.py's.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from mixbt.nets import EMBEDDING_SIZE, mlp, resnet, small_backbone


class Model(nn.Module):
    """The small-data model of the reference: `f` backbone, `g` projector.

    g is the reference head E-512-feature_dim (Linear without bias, BN, ReLU, Linear with
    bias), or the MLP `projector` (e.g. '2048-2048-2048') of a baseline, which likewise ends
    in a Linear with bias, as the originals' heads do (W-MSE's get_head, INTL's projector);
    `hidden_bias`: its other Linear layers have biases too (W-MSE's get_head; INTL's have none).
    """

    def __init__(self, feature_dim=128, arch='resnet50', maxpool=False, projector=None, hidden_bias=False,
                 imagenet_stem=False):
        super().__init__()
        self.f = small_backbone(arch, maxpool, imagenet_stem)
        sizes = [int(s) for s in projector.split('-')] if projector else [512, feature_dim]
        self.g = mlp([EMBEDDING_SIZE[arch]] + sizes, last_bias=True, hidden_bias=hidden_bias)

    @property
    def backbone(self):
        return self.f

    def features(self, x):
        return torch.flatten(self.f(x), start_dim=1)

    def forward(self, x):
        feature = self.features(x)
        out = self.g(feature)
        return F.normalize(feature, dim=-1), F.normalize(out, dim=-1)


class ImageNetModel(nn.Module):
    """Official Barlow Twins ImageNet model: ResNet-50 (zero-init residual) + MLP projector."""

    def __init__(self, projector='8192-8192-8192', arch='resnet50'):
        super().__init__()
        self.backbone = resnet(arch, zero_init_residual=True)
        self.backbone.fc = nn.Identity()
        self.projector = mlp([EMBEDDING_SIZE[arch]] + [int(s) for s in projector.split('-')])

    def features(self, x):
        return self.backbone(x)

    def forward(self, x):
        feature = self.backbone(x)
        return feature, self.projector(feature)


def build_model(args):
    """The model of a pretraining run, from the data set's registry row."""
    from mixbt.data import spec_of
    spec = spec_of(args.dataset)  # a folder: the row this command resolved (data.spec_of(args))
    if spec.protocol == 'imagenet':
        return ImageNetModel(args.projector or spec.projector, args.arch)
    return Model(args.feature_dim, args.arch, spec.maxpool, projector=getattr(args, 'projector', None),
                 hidden_bias=head_hidden_bias(getattr(args, 'method', None)), imagenet_stem=spec.imagenet_stem)


def head_hidden_bias(method):
    """Whether the method's head has biases before its BatchNorms: its class says so
    (`head_hidden_bias`, the original code's head); the Mix-BT head has none."""
    from mixbt.methods import METHODS
    return bool(getattr(METHODS.get(method), 'head_hidden_bias', False))
