"""torch.hub entry points: the backbones released with the paper and the official Barlow Twins.

    model = torch.hub.load('<owner>/<repo>', 'resnet50')   # as the original hubconf: torchvision ResNet-50
                                                           # (with fc) holding the official Barlow Twins weights
    backbone = torch.hub.load('<owner>/<repo>', 'mixbt_resnet50', dataset='imagenet', variant='mixbt-1.0')
    backbone = torch.hub.load('<owner>/<repo>', 'resnet18', dataset='cifar10')       # released weights
    backbone = torch.hub.load('<owner>/<repo>', 'resnet18', dataset='stl10', weights='checkpoints/x.pth')

The Mix-BT entries return a module mapping images to flattened backbone features (N, 512 or
2048), loaded strictly (checkpoints.load_backbone). `weights` may be a local file or a URL.
"""
import http.client
import os

import torch
import torch.nn as nn

from mixbt.errors import MixBTError

dependencies = ['torch', 'torchvision']

RELEASE_URL = 'https://github.com/wgcban/mix-bt/releases/download/v1.0.0/'
OFFICIAL_BT_URL = 'https://dl.fbaipublicfiles.com/barlowtwins/ep1000_bs2048_lrw0.2_lrb0.0048_lambd0.0051/resnet50.pth'

# (arch, data set[, variant]) -> (file, kNN top-1, linear top-1) of the paper's release (README of mix-bt).
RELEASED = {
    ('resnet18', 'cifar10'): ('4wdhbpcf_0.0078125_1024_256_cifar10_model.pth', 90.52, 92.58),
    ('resnet18', 'cifar100'): ('76kk7scz_0.0078125_1024_256_cifar100_model.pth', 61.25, 69.31),
    ('resnet18', 'tiny_imagenet'): ('02azq6fs_0.0009765_1024_256_tiny_imagenet_model.pth', 38.11, 51.67),
    ('resnet18', 'stl10'): ('i7det4xq_0.0078125_1024_256_stl10_model.pth', 88.94, 91.02),
    ('resnet50', 'cifar10'): ('v3gwgusq_0.0078125_1024_256_cifar10_model.pth', 91.39, 93.89),
    ('resnet50', 'cifar100'): ('z6ngefw7_0.0078125_1024_256_cifar100_model.pth', 64.32, 72.51),
    ('resnet50', 'tiny_imagenet'): ('kxlkigsv_0.0009765_1024_256_tiny_imagenet_model.pth', 42.21, 51.84),
    ('resnet50', 'stl10'): ('pbknx38b_0.0078125_1024_256_stl10_model.pth', 87.79, 91.70),
    ('resnet50', 'imagenet', 'bt'): ('3on0l4wl_0.0000_8192_1024_imagenet_resnet50.pth', None, 71.3),
    ('resnet50', 'imagenet', 'mixbt-0.0025'): ('l418b9zw_0.0025_8192_1024_imagenet_resnet50.pth', None, 70.9),
    ('resnet50', 'imagenet', 'mixbt-0.1'): ('13awtq23_0.1000_8192_1024_imagenet_resnet50.pth', None, 71.6),
    ('resnet50', 'imagenet', 'mixbt-1.0'): ('3fb1op86_1.0000_8192_1024_imagenet_resnet50.pth', None, 72.2),
}


class Features(nn.Module):
    """A backbone whose output is flattened to (N, E)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return torch.flatten(self.backbone(x), start_dim=1)


def released_url(arch, dataset, variant=None):
    key = (arch, dataset, variant) if dataset == 'imagenet' else (arch, dataset)
    if dataset == 'imagenet' and variant == 'official':
        return OFFICIAL_BT_URL
    if key not in RELEASED:
        choices = sorted({k[1] + (f" variant={k[2]}" if len(k) > 2 else '') for k in RELEASED if k[0] == arch})
        raise MixBTError(f'no released {arch} for {dataset!r} (variant {variant}); released: {choices}'
                         + ("; variant='official' for the official Barlow Twins" if dataset == 'imagenet' else ''))
    return RELEASE_URL + RELEASED[key][0]


# Where scripts/download_checkpoints.sh puts the released files (the official resnet50.pth under a
# less generic name): a file fetched where the network allows and copied there is used offline.
LOCAL_CHECKPOINTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'checkpoints')


def local_name(url):
    name = os.path.basename(url)
    return 'barlowtwins_official_resnet50.pth' if name == 'resnet50.pth' else name


def _download(url, path):
    """torch.hub's download (to a temporary file, renamed when complete); one error line offline."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.hub.download_url_to_file(url, path)
    except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts, SSL, cut connections
        reason = getattr(e, 'reason', None) or e
        raise MixBTError(f'could not download {url} ({type(e).__name__}: {reason}). Offline, either pass '
                         f'weights=<a local copy of the file>, or fetch it where the network allows (bash '
                         f'scripts/download_checkpoints.sh {local_name(url)}) and put it in '
                         f'{LOCAL_CHECKPOINTS}{os.sep}') from None


def _load_state(weights):
    """The checkpoint a local file or URL names, read weights-only. A URL's file is taken from
    LOCAL_CHECKPOINTS when it is there, else from torch.hub's cache, else downloaded into the cache."""
    from mixbt.checkpoints import read_checkpoint
    if os.path.isfile(weights):
        return read_checkpoint(weights)
    if weights.startswith(('http://', 'https://')):
        local = os.path.join(LOCAL_CHECKPOINTS, local_name(weights))
        if os.path.isfile(local):
            return read_checkpoint(local)
        path = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(weights))
        if not os.path.isfile(path):
            _download(weights, path)
        return read_checkpoint(path)  # weights only, with the same clear errors as a local file
    raise MixBTError(f'weights {weights!r}: no such file, and not a URL')


def _backbone(arch, dataset, pretrained, weights, variant):
    from mixbt.checkpoints import load_backbone
    from mixbt.data import SPECS
    from mixbt.nets import resnet, small_backbone
    if not pretrained and weights is None:
        if dataset == 'imagenet':
            net = resnet(arch)
            net.fc = nn.Identity()
            return Features(net)
        return Features(small_backbone(arch, SPECS[dataset].maxpool))
    source = weights or released_url(arch, dataset, variant)
    backbone, _, _ = load_backbone(source, dataset, arch, state=_load_state(source))
    return Features(backbone)


def resnet18(dataset='cifar10', pretrained=True, weights=None, variant=None):
    """Mix-BT ResNet-18 backbone pretrained on `dataset` (cifar10, cifar100, stl10, tiny_imagenet)."""
    return _backbone('resnet18', dataset, pretrained, weights, variant)


def resnet50(pretrained=True, **kwargs):
    """What the original hubconf's resnet50 returns: a torchvision ResNet-50, fc included (not
    trained: the release has none), holding the official Barlow Twins weights. Every other key
    is checked. kwargs go to torchvision's constructor. The Mix-BT weights: mixbt_resnet50."""
    from torchvision.models import resnet50 as torchvision_resnet50
    from mixbt.checkpoints import CheckpointError, compare_state, state_dict_of
    model = torchvision_resnet50(**kwargs)
    if pretrained:
        state = state_dict_of(_load_state(OFFICIAL_BT_URL), OFFICIAL_BT_URL)
        missing, unexpected, shapes = compare_state(model.state_dict(), state)
        if unexpected or shapes or any(not k.startswith('fc.') for k in missing):
            raise CheckpointError(f'{OFFICIAL_BT_URL} does not match a torchvision ResNet-50: missing {missing[:5]}, '
                                  f'unexpected {unexpected[:5]}, shapes {shapes[:5]}')
        model.load_state_dict(state, strict=False)
    return model


def mixbt_resnet50(dataset='imagenet', pretrained=True, weights=None, variant='mixbt-1.0'):
    """Mix-BT ResNet-50 backbone: dataset imagenet (variant bt, mixbt-0.0025, mixbt-0.1, mixbt-1.0 or
    official = the official Barlow Twins 1000-epoch model) or a small data set."""
    return _backbone('resnet50', dataset, pretrained, weights, variant)


def barlowtwins_resnet50(pretrained=True, weights=None):
    """The official Barlow Twins ResNet-50 (ImageNet, 1000 epochs, 73.3% linear top-1)."""
    return _backbone('resnet50', 'imagenet', pretrained, weights, 'official')
