"""Backbones, projectors and checkpoint loading.

Two model families, each with the key layout of the original code so that checkpoints
move freely between this repository and the released files (REFERENCE.md section 2):

* `Model` (small data sets): keys `f.*` (ResNet with a 3x3 stem) and `g.*` (projector).
* `ImageNetModel`: keys `backbone.*` (torchvision ResNet-50, `fc` = Identity) and
  `projector.*`.
"""
import json
import os
import pickle
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

EMBEDDING_SIZE = {'resnet18': 512, 'resnet50': 2048}
# 32x32 inputs drop the max-pool; 64x64 inputs keep it (REFERENCE.md section 2).
NO_MAXPOOL = {'cifar10', 'cifar100', 'fashionmnist'}
WITH_MAXPOOL = {'stl10', 'tiny_imagenet'}
SMALL_DATASETS = NO_MAXPOOL | WITH_MAXPOOL


def _resnet(arch, **kwargs):
    if arch not in EMBEDDING_SIZE:
        raise ValueError(f'unknown --arch {arch!r}; choose one of {sorted(EMBEDDING_SIZE)}')
    return getattr(torchvision.models, arch)(**kwargs)


def small_backbone(arch='resnet18', dataset='cifar10'):
    """torchvision ResNet children in order, 3x3 stride-1 conv1, no fc (and no max-pool at 32px)."""
    if dataset not in SMALL_DATASETS:
        raise ValueError(f'no small-data backbone for dataset {dataset!r}; choose one of {sorted(SMALL_DATASETS)}')
    layers = []
    for name, module in _resnet(arch).named_children():
        if name == 'conv1':
            module = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        if isinstance(module, nn.Linear) or (isinstance(module, nn.MaxPool2d) and dataset in NO_MAXPOOL):
            continue
        layers.append(module)
    return nn.Sequential(*layers)


def mlp(sizes, last_bias=False):
    """Linear-BN-ReLU blocks, then a final Linear: the projector/predictor shape used everywhere."""
    layers = []
    for i in range(len(sizes) - 2):
        layers += [nn.Linear(sizes[i], sizes[i + 1], bias=False), nn.BatchNorm1d(sizes[i + 1]), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=last_bias))
    return nn.Sequential(*layers)


class Model(nn.Module):
    """The small-data model of the reference: `f` backbone, `g` projector.

    g is the reference head E-512-feature_dim (Linear without bias, BN, ReLU, Linear with
    bias), or the MLP `projector` (e.g. '2048-2048-2048') of a baseline, which likewise ends
    in a Linear with bias, as the originals' heads do (W-MSE's get_head, INTL's projector).
    """

    def __init__(self, feature_dim=128, dataset='cifar10', arch='resnet50', projector=None):
        super().__init__()
        self.f = small_backbone(arch, dataset)
        sizes = [int(s) for s in projector.split('-')] if projector else [512, feature_dim]
        self.g = mlp([EMBEDDING_SIZE[arch]] + sizes, last_bias=True)
        self.normalize = True

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
        self.backbone = _resnet(arch, zero_init_residual=True)
        self.backbone.fc = nn.Identity()
        self.projector = mlp([EMBEDDING_SIZE[arch]] + [int(s) for s in projector.split('-')])
        self.normalize = False

    def features(self, x):
        return self.backbone(x)

    def forward(self, x):
        feature = self.backbone(x)
        return feature, self.projector(feature)


def build_model(args):
    if args.dataset == 'imagenet':
        return ImageNetModel(args.projector or '8192-8192-8192', args.arch)
    return Model(args.feature_dim, args.dataset, args.arch, projector=getattr(args, 'projector', None))


def backbone_of(model):
    """The feature extractor of either model family (a module mapping images to (N, E) features)."""
    return model.f if isinstance(model, Model) else model.backbone


# ----------------------------------------------------------------------------------------
# Global-batch BatchNorm for any backend. nn.SyncBatchNorm only runs on CUDA; this computes
# the same statistics over all ranks with the autograd-aware all-reduce (distributed.py), so
# multi-process CPU (gloo) runs and their tests have global BatchNorm too.
# ----------------------------------------------------------------------------------------
class _GlobalStatsMixin:
    def forward(self, x):
        import distributed as D
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


class GlobalBatchNorm1d(_GlobalStatsMixin, nn.BatchNorm1d):
    pass


class GlobalBatchNorm2d(_GlobalStatsMixin, nn.BatchNorm2d):
    pass


def sync_batchnorm(module, device):
    """BatchNorm statistics over the global batch: nn.SyncBatchNorm on CUDA, GlobalBatchNorm
    (same math, any backend) elsewhere. Parameter and buffer names are unchanged."""
    if device.type == 'cuda':
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    swap = {nn.BatchNorm1d: GlobalBatchNorm1d, nn.BatchNorm2d: GlobalBatchNorm2d}
    for m in module.modules():
        base = next((b for b in type(m).__mro__ if b in swap), None)
        if base is not None and not isinstance(m, _GlobalStatsMixin):
            views = getattr(m, 'views', 1)
            m.__class__ = swap[base]
            m.views = views
    return module


# ----------------------------------------------------------------------------------------
# Per-view BatchNorm: one forward over concatenated views with the statistics that
# separate forward passes would compute (running statistics included, updated in view order).
# ----------------------------------------------------------------------------------------
class _ViewSplitMixin:
    views = 1

    def forward(self, x):
        if self.views == 1 or not self.training:
            return super().forward(x)
        return torch.cat([super(_ViewSplitMixin, self).forward(c) for c in x.chunk(self.views)])


class ViewSplitBatchNorm1d(_ViewSplitMixin, nn.BatchNorm1d):
    pass


class ViewSplitBatchNorm2d(_ViewSplitMixin, nn.BatchNorm2d):
    pass


class ViewSplitSyncBatchNorm(_ViewSplitMixin, nn.SyncBatchNorm):
    pass


class ViewSplitGlobalBatchNorm1d(_ViewSplitMixin, GlobalBatchNorm1d):
    pass


class ViewSplitGlobalBatchNorm2d(_ViewSplitMixin, GlobalBatchNorm2d):
    pass


_SPLIT = {nn.BatchNorm1d: ViewSplitBatchNorm1d, nn.BatchNorm2d: ViewSplitBatchNorm2d,
          nn.SyncBatchNorm: ViewSplitSyncBatchNorm, GlobalBatchNorm1d: ViewSplitGlobalBatchNorm1d,
          GlobalBatchNorm2d: ViewSplitGlobalBatchNorm2d}


def set_bn_views(module, views):
    """Make every BatchNorm in `module` normalise each of `views` equal chunks of its batch
    separately. Only the class changes, so parameter and buffer names stay the same."""
    for m in module.modules():
        cls = type(m)
        if cls in _SPLIT:
            m.__class__ = _SPLIT[cls]
        if isinstance(m, _ViewSplitMixin):
            m.views = views
    return module


def plain_batchnorm(module):
    """Undo `set_bn_views` and `sync_batchnorm` on CPU: back to torch's own classes (for
    profiling or export); nn.SyncBatchNorm modules stay what they are."""
    for m in module.modules():
        for base in (nn.SyncBatchNorm, nn.BatchNorm1d, nn.BatchNorm2d):
            if isinstance(m, base) and type(m) is not base:
                m.__class__ = base
                break
    return module


# ----------------------------------------------------------------------------------------
# Checkpoint loading with strict checking (REFERENCE.md section 2: never a silent partial load)
# ----------------------------------------------------------------------------------------
class CheckpointError(RuntimeError):
    pass


# Checkpoints are read with torch.load(weights_only=True): tensors and plain containers only, so
# that a downloaded file cannot run code when it is opened. Files that pickle other Python
# objects are refused unless the user says they trust them.
TRUST_ENV = 'MIXBT_TRUST_CHECKPOINTS'


def read_checkpoint(path):
    """torch.load (weights only) with a clear message for a missing, truncated, foreign or unsafe file."""
    trusted = os.environ.get(TRUST_ENV, '') not in ('', '0')
    try:
        return torch.load(path, map_location='cpu', weights_only=not trusted)
    except FileNotFoundError:
        raise CheckpointError(f'checkpoint not found: {path}') from None
    except pickle.UnpicklingError as e:
        found = re.search(r'GLOBAL ([\w.]+)', str(e))
        if found is None:  # not a pickle the weights-only reader understands: junk, text, truncated
            detail = next((line.strip() for line in str(e).splitlines() if line.strip().startswith('Unsupported')),
                          str(e).strip().splitlines()[0])
            raise CheckpointError(f'{path} is not a readable PyTorch checkpoint ({detail})') from None
        raise CheckpointError(
            f'{path} holds Python objects besides tensors and plain containers (it pickles {found.group(1)}). '
            f'Opening it would run code stored in the file, so it was not loaded. If you trust where it comes '
            f'from (for example a last.pth written by an older version of this code), run again with '
            f'{TRUST_ENV}=1') from None
    except Exception as e:  # truncated zip, pickle garbage, text file...
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})') from None


# thop.profile leaves `total_ops`/`total_params` buffers on every module it has no counting rule
# for (Sequential, BasicBlock, Bottleneck, Model). The reference profiled its model in place
# before training, so its released state dicts carry these counters: not weights, dropped here.
PROFILER_COUNTERS = ('total_ops', 'total_params')


def _unwrap(obj):
    """The state dict inside the formats we know: raw, {'model': ...}, {'state_dict': ...}, DDP
    prefixes; thop's profiling counters removed."""
    if isinstance(obj, dict) and 'model' in obj and isinstance(obj['model'], dict):
        obj = obj['model']
    elif isinstance(obj, dict) and 'state_dict' in obj and isinstance(obj['state_dict'], dict):
        obj = obj['state_dict']
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError('the file does not hold a state dict (a mapping of names to tensors)')
    return {re.sub(r'^(module\.)+', '', k): v for k, v in obj.items()
            if k.rsplit('.', 1)[-1] not in PROFILER_COUNTERS}


def compare_state(expected, given):
    """Missing keys, unexpected keys and shape mismatches between two state dicts."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(f'{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}'
                    for k in set(expected) & set(given) if given[k].shape != expected[k].shape)
    return missing, unexpected, shapes


def _format_problems(missing, unexpected, shapes, limit=12):
    def clip(items):
        return ', '.join(items[:limit]) + (f' ... ({len(items)} in all)' if len(items) > limit else '')
    parts = []
    if missing:
        parts.append(f'missing keys: {clip(missing)}')
    if unexpected:
        parts.append(f'unexpected keys: {clip(unexpected)}')
    if shapes:
        parts.append(f'shape mismatches: {clip(shapes)}')
    return '; '.join(parts)


def load_strict(module, state, what='checkpoint'):
    """load_state_dict(strict=True) whose error names every missing/unexpected key and shape."""
    missing, unexpected, shapes = compare_state(module.state_dict(), state)
    if missing or unexpected or shapes:
        raise CheckpointError(f'{what} does not match the model: ' + _format_problems(missing, unexpected, shapes))
    module.load_state_dict(state, strict=True)
    return module


def infer_small_variant(state):
    """(arch, dataset-family) of a small-data `f.*` state dict from its keys and shapes.

    Returns arch in {'resnet18', 'resnet50'} and stem in {'no_maxpool', 'maxpool'}."""
    conv1 = state.get('f.0.weight')
    if conv1 is None or conv1.shape != (64, 3, 3, 3):
        raise CheckpointError('no 3x3 small-data stem at f.0.weight: not a small-data `Model` checkpoint')
    # layer1 is f.3 without max-pool, f.4 with it (f.3 is then the parameter-less max-pool).
    stem = 'no_maxpool' if any(k.startswith('f.3.0.') for k in state) else 'maxpool'
    layer1 = 'f.3' if stem == 'no_maxpool' else 'f.4'
    arch = 'resnet50' if f'{layer1}.0.conv3.weight' in state else 'resnet18'
    return arch, stem


def _linear_sizes(state, prefix):
    """Output sizes of the Linear layers of an MLP stored under `prefix` (weights `prefix.<i>.weight`, 2-D)."""
    found = sorted((int(m.group(1)), v.shape[0]) for k, v in state.items()
                   if (m := re.fullmatch(re.escape(prefix) + r'\.(\d+)\.weight', k)) and v.ndim == 2)
    return [size for _, size in found]


def _expected_small(state, arch, dataset):
    """The state dict a small-data checkpoint should have: f.* of the backbone, and g.* of the
    MLP its Linear weights describe (the reference head E-512-d, or a baseline's projector;
    its final bias optional: baseline runs before 2026-11-25 had none)."""
    expected = {f'f.{k}': v for k, v in small_backbone(arch, dataset).state_dict().items()}
    sizes = _linear_sizes(state, 'g')
    if sizes:
        head = mlp([EMBEDDING_SIZE[arch]] + sizes, last_bias=f'g.{3 * (len(sizes) - 1)}.bias' in state)
        expected.update({f'g.{k}': v for k, v in head.state_dict().items()})
    return expected


def _expected_imagenet_heads(state, emb):
    """projector.* (official MLP: Linear-BN-ReLU blocks, final Linear without bias) and bn.* (the
    official Barlow Twins' affine-free BatchNorm of the embeddings) of a full ImageNet checkpoint."""
    expected = {}
    sizes = _linear_sizes(state, 'projector')
    if sizes:
        expected.update({f'projector.{k}': v for k, v in mlp([emb] + sizes).state_dict().items()})
    if any(k.startswith('bn.') for k in state):
        dim = sizes[-1] if sizes else len(state.get('bn.running_mean', ()))  # with a projector: its output
        expected.update({f'bn.{k}': v for k, v in nn.BatchNorm1d(dim, affine=False).state_dict().items()})
    return expected


def _check_all_keys(expected, state, path):
    missing, unexpected, shapes = compare_state(expected, state)
    if missing or unexpected or shapes:
        raise CheckpointError(f'{path} does not match the model: ' + _format_problems(missing, unexpected, shapes))


def dataset_of_checkpoint(path, choices):
    """The pretraining data set that a checkpoint names, if one of `choices`: from its file name
    (the reference's <id>_<lmbda>_<dim>_<batch>_<dataset>_model[_<epoch>].pth and
    ..._imagenet_resnet50.pth), else from the args.json of the main.py run folder holding it;
    None when neither says."""
    name = os.path.basename(path)
    found = re.search(r'_(' + '|'.join(sorted(map(re.escape, choices), key=len, reverse=True))
                      + r')_(model(_\d+)?|resnet18|resnet50)\.pth$', name)
    if found:
        return found.group(1)
    args_json = os.path.join(os.path.dirname(os.path.abspath(path)), 'args.json')
    try:
        with open(args_json) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(saved, dict) and 'lmbda' in saved and saved.get('dataset') in choices:  # a main.py run folder
        return saved['dataset']
    return None


def resolve_dataset_arg(args, choices, default='cifar10'):
    """--dataset left out: the checkpoint's own data set (dataset_of_checkpoint), else `default`
    (the original scripts' default), said aloud."""
    if args.dataset is not None:
        return args
    inferred = dataset_of_checkpoint(args.model_path, choices)
    args.dataset = inferred or default
    if int(os.environ.get('RANK', '0')) == 0:
        print(f'--dataset {args.dataset}: ' + ('named by the checkpoint' if inferred else
                                              'the default (the checkpoint does not name its data set)'), flush=True)
    return args


def load_backbone(path, dataset, arch=None, state=None):
    """The frozen-evaluation backbone of a checkpoint, loaded strictly, whatever its format.

    Accepted: a small-data `Model` state dict (released `*_model.pth`, or our run state with
    a 'model' entry) for the small data sets; a torchvision ResNet state dict (released
    ImageNet backbone, official Barlow Twins `resnet50.pth`), with or without `fc.*`, or a
    full ImageNet training checkpoint with `module.backbone.*` keys, for ImageNet-style
    backbones. Every key and shape is checked, heads included (g.*; projector.*, bn.*):
    anything else is an error that names it. `state` (already loaded) replaces reading
    `path`, which then only names the source in messages. Returns (backbone, embedding size, arch).
    """
    state = _unwrap(read_checkpoint(path) if state is None else state)
    if any(k.startswith('f.') for k in state):
        if dataset not in SMALL_DATASETS:
            raise CheckpointError(f'{path} holds a small-data backbone (keys f.*); it cannot be used for {dataset!r}')
        found_arch, stem = infer_small_variant(state)
        want_stem = 'no_maxpool' if dataset in NO_MAXPOOL else 'maxpool'
        if arch is not None and arch != found_arch:
            raise CheckpointError(f'{path} holds a {found_arch} backbone but --arch {arch} was given')
        if stem != want_stem:
            fits = sorted(NO_MAXPOOL if stem == 'no_maxpool' else WITH_MAXPOOL)
            raise CheckpointError(f'{path} holds a backbone for {"/".join(fits)} ({stem.replace("_", " ")}), '
                                  f'not for --dataset {dataset}')
        _check_all_keys(_expected_small(state, found_arch, dataset), state, path)
        backbone = small_backbone(found_arch, dataset)
        backbone.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith('f.')}, strict=True)
        return backbone, EMBEDDING_SIZE[found_arch], found_arch
    heads = {}
    if any(k.startswith('backbone.') for k in state):  # a full ImageNet training checkpoint
        heads = {k: v for k, v in state.items() if not k.startswith('backbone.')}
        state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    if 'conv1.weight' in state and state['conv1.weight'].shape[-1] == 7:
        if dataset in SMALL_DATASETS:
            raise CheckpointError(f'{path} holds an ImageNet ResNet (7x7 stem); evaluate it with --dataset imagenet, '
                                  f'not {dataset!r}')
        found_arch = 'resnet50' if 'layer1.0.conv3.weight' in state else 'resnet18'
        if arch is not None and arch != found_arch:
            raise CheckpointError(f'{path} holds a {found_arch} backbone but --arch {arch} was given')
        _check_all_keys(_expected_imagenet_heads(heads, EMBEDDING_SIZE[found_arch]), heads, path)
        backbone = _resnet(found_arch)
        backbone.fc = nn.Identity()
        state = {k: v for k, v in state.items() if not k.startswith('fc.')}
        load_strict(backbone, state, f'{path} (torchvision ResNet)')
        return backbone, EMBEDDING_SIZE[found_arch], found_arch
    expected = small_backbone(arch or 'resnet18', dataset if dataset in SMALL_DATASETS else 'cifar10').state_dict()
    missing, unexpected, shapes = compare_state({f'f.{k}': v for k, v in expected.items()}, state)
    raise CheckpointError(f'{path} is neither a small-data Model (f.*/g.*) nor a torchvision ResNet state dict: '
                          + _format_problems(missing, unexpected, shapes))
