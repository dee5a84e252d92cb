"""The building blocks of the models: ResNet backbones, MLP projectors and the BatchNorm variants
they are built with (the models themselves are model.py's).

Two model families, each with the key layout of the original code so that checkpoints move
freely between this repository and the released files (docs/protocol.md section 2):

* `Model` (small data sets): keys `f.*` (ResNet with a 3x3 stem) and `g.*` (projector).
* `ImageNetModel`: keys `backbone.*` (torchvision ResNet-50, `fc` = Identity) and `projector.*`.

Every BatchNorm is built as one of this module's classes, which normalise each of `views`
equal chunks of a training batch separately (`set_bn_views`): one forward over concatenated
views computes what separate forward passes would. `sync_batchnorm` replaces them by modules
with global-batch statistics for multi-process runs. Reading checkpoints is checkpoints.py's.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

EMBEDDING_SIZE = {'resnet18': 512, 'resnet50': 2048}


# ----------------------------------------------------------------------------------------
# BatchNorm with per-view statistics, local or over all processes
# ----------------------------------------------------------------------------------------
class _PerView:
    """Training batches hold `views` equal chunks, each normalised with its own statistics
    (running statistics updated chunk by chunk, in order)."""
    views = 1

    def forward(self, x):
        if self.views == 1 or not self.training:
            return self.normalise(x)
        return torch.cat([self.normalise(c) for c in x.chunk(self.views)])

    def normalise(self, x):
        return super(_PerView, self).forward(x)


class _GlobalStats:
    """Statistics over the global batch of all processes, for any backend: the autograd-aware
    all-reduce of distributed.py (nn.SyncBatchNorm runs on CUDA only)."""

    def forward(self, x):
        from mixbt import distributed as D
        if not (self.training and D.world_size() > 1):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        n = x.numel() // x.shape[1] * D.world_size()
        mean = D.all_reduce_sum(x.sum(dims)) / n
        centred = x - mean.view(shape)
        var = D.all_reduce_sum(centred.pow(2).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / max(n - 1, 1), alpha=m)
        return y


class BatchNorm1d(_PerView, nn.BatchNorm1d):
    pass


class BatchNorm2d(_PerView, nn.BatchNorm2d):
    pass


class GlobalBatchNorm1d(_PerView, _GlobalStats, nn.BatchNorm1d):
    pass


class GlobalBatchNorm2d(_PerView, _GlobalStats, nn.BatchNorm2d):
    pass


class SyncBatchNorm(_PerView, nn.SyncBatchNorm):
    pass


def set_bn_views(module, views):
    """Every BatchNorm of `module` normalises each of `views` chunks of its batch separately."""
    for m in module.modules():
        if isinstance(m, _PerView):
            m.views = views
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and views != 1:
            raise TypeError(f'{type(m).__name__} cannot keep per-view statistics: build models with '
                            'model.BatchNorm1d/BatchNorm2d')
    return module


def _replace_batchnorm(module, choose):
    """Replace every BatchNorm1d/2d below `module` by `choose(old)`'s class, with the same
    settings, parameters, buffers, device and `views`. Names in the state dict are unchanged."""
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)):
            cls = choose(child)
            if type(child) is not cls:
                new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
                ref = child.weight if child.affine else child.running_mean
                new.to(device=ref.device if ref is not None else None, dtype=ref.dtype if ref is not None else None)
                new.load_state_dict(child.state_dict())
                for p_new, p_old in zip(new.parameters(), child.parameters()):
                    p_new.requires_grad_(p_old.requires_grad)  # e.g. BYOL's target stays frozen
                new.train(child.training)
                if isinstance(new, _PerView):
                    new.views = getattr(child, 'views', 1)
                setattr(module, name, new)
        else:
            _replace_batchnorm(child, choose)
    return module


def sync_batchnorm(module, device):
    """BatchNorm statistics over the global batch: nn.SyncBatchNorm's kernels on CUDA, the same
    math with any backend elsewhere; per-view statistics kept."""
    if device.type == 'cuda':
        return _replace_batchnorm(module, lambda m: SyncBatchNorm)
    return _replace_batchnorm(module, lambda m: GlobalBatchNorm2d if isinstance(m, nn.BatchNorm2d)
                              else GlobalBatchNorm1d)


def plain_batchnorm(module):
    """torch's own BatchNorm classes in place of ours (for profilers that count by class)."""
    def plain(m):
        return next(base for base in (nn.SyncBatchNorm, nn.BatchNorm2d, nn.BatchNorm1d) if isinstance(m, base))
    return _replace_batchnorm(module, plain)


# ----------------------------------------------------------------------------------------
# Backbones and projectors
# ----------------------------------------------------------------------------------------
def resnet(arch, **kwargs):
    """A torchvision ResNet built with this module's BatchNorm."""
    if arch not in EMBEDDING_SIZE:
        raise ValueError(f'unknown arch {arch!r}; choose one of {sorted(EMBEDDING_SIZE)}')
    return getattr(torchvision.models, arch)(norm_layer=BatchNorm2d, **kwargs)


def small_backbone(arch='resnet18', maxpool=False, imagenet_stem=False):
    """torchvision ResNet children in order, 3x3 stride-1 conv1, no fc; the max-pool kept only
    with `maxpool` (64 px inputs; 32 px inputs drop it). imagenet_stem: torchvision's own 7x7
    stride-2 conv1 is kept (a folder of images at 96 px and up, with `maxpool`)."""
    layers = []
    for name, module in resnet(arch).named_children():
        if name == 'conv1' and not imagenet_stem:
            module = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        if isinstance(module, nn.Linear) or (isinstance(module, nn.MaxPool2d) and not maxpool):
            continue
        layers.append(module)
    return nn.Sequential(*layers)


def mlp(sizes, last_bias=False, hidden_bias=False):
    """Linear-BN-ReLU blocks, then a final Linear: the projector/predictor shape used everywhere.
    Biases: the Barlow Twins projectors have none before a BN (it would cancel), the W-MSE code's
    heads (`get_head`) have them on every Linear (`hidden_bias`)."""
    layers = []
    for i in range(len(sizes) - 2):
        layers += [nn.Linear(sizes[i], sizes[i + 1], bias=hidden_bias), BatchNorm1d(sizes[i + 1]),
                   nn.ReLU(inplace=True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=last_bias))
    return nn.Sequential(*layers)
