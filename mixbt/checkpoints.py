"""Reading checkpoint files: weights-only reading, strict loading, layout inference and the
released file names (docs/protocol.md section 2: never a silent partial load). Writing them is
saving.py's.
"""
import json
import os
import pickle
import re

import torch
import torch.nn as nn

from mixbt.data import FOLDER, IN_MEMORY, SPECS, spec_of
from mixbt.errors import CheckpointError
from mixbt.nets import EMBEDDING_SIZE, mlp, resnet, small_backbone
from mixbt.saving import non_finite_entries


# ---------------------------------------------------------------------------- reading


# Checkpoints are read with torch.load(weights_only=True): tensors and plain containers only, so
# that a downloaded file cannot run code when it is opened. Files that pickle other Python
# objects are refused unless the user says they trust them.
TRUST_ENV = 'MIXBT_TRUST_CHECKPOINTS'


def refetch_hint(path):
    """What to do about a file that cannot be read: it is often a cut-off download."""
    return (f'; if it was downloaded, it may be cut off: fetch it again (bash scripts/download_checkpoints.sh '
            f'{os.path.basename(str(path))} checks every byte)')


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
            raise CheckpointError(f'{path} is not a readable PyTorch checkpoint ({detail}){refetch_hint(path)}') from None
        raise CheckpointError(
            f'{path} holds Python objects besides tensors and plain containers (it pickles {found.group(1)}). '
            f'Opening it would run code stored in the file, so it was not loaded. If you trust where it comes '
            f'from (for example a last.pth written by an older version of this code), run again with '
            f'{TRUST_ENV}=1') from None
    except Exception as e:  # truncated zip, pickle garbage, text file...
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})'
                              f'{refetch_hint(path)}') from None


# thop.profile leaves `total_ops`/`total_params` buffers on every module it has no counting rule
# for (Sequential, BasicBlock, Bottleneck, Model). The reference profiled its model in place
# before training, so its released state dicts carry these counters: not weights, dropped here.
PROFILER_COUNTERS = ('total_ops', 'total_params')


def _unwrap(obj, path=None):
    """The state dict inside the formats we know: raw, {'model': ...}, {'state_dict': ...}, DDP
    prefixes; thop's profiling counters removed. `path` names the file in the error."""
    if isinstance(obj, dict) and 'model' in obj and isinstance(obj['model'], dict):
        obj = obj['model']
    elif isinstance(obj, dict) and 'state_dict' in obj and isinstance(obj['state_dict'], dict):
        obj = obj['state_dict']
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f'{path or "the file"} does not hold a state dict (a mapping of names to tensors) '
                              f'but {_describe(obj)}; give a model checkpoint (*_model.pth, last.pth, a '
                              f'torchvision ResNet state dict)')
    return {re.sub(r'^(module\.)+', '', k): v for k, v in obj.items()
            if k.rsplit('.', 1)[-1] not in PROFILER_COUNTERS}


def _describe(obj):
    if isinstance(obj, dict):
        odd = next((f'{k!r} ({type(v).__name__})' for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
        return f'a dict whose entry {odd} is not a tensor' if odd else 'an empty dict'
    return f'a {type(obj).__name__}'


# Integer buffers that a model legitimately holds; every other tensor of a state dict is a weight
# or a running statistic, which the model computes with in floating point.
INTEGER_BUFFERS = ('num_batches_tracked',)


def weight_problems(state):
    """'<name> holds NaN', '<name> holds inf' or '<name> is int64, expected a floating-point tensor'
    for each tensor of a state dict that no model can be evaluated with: load_state_dict would cast
    integer weights silently, and a NaN or inf turns every feature into NaN."""
    problems = []
    floating = {}
    for name, t in state.items():
        if name.rsplit('.', 1)[-1] in INTEGER_BUFFERS:
            continue
        if t.is_floating_point():
            floating[name] = t
        else:
            problems.append(f'{name} is {str(t.dtype).replace("torch.", "")}, expected a floating-point tensor')
    for name in non_finite_entries(floating):
        problems.append(f'{name} holds {"NaN" if torch.isnan(floating[name]).any() else "inf"}')
    return problems


def check_weights(state, path):
    """`state` (an unwrapped state dict) unchanged; CheckpointError naming the file and its first
    tensors that are not finite floating-point values (weight_problems)."""
    problems = weight_problems(state)
    if problems:
        more = f' (and {len(problems) - 3} more)' if len(problems) > 3 else ''
        raise CheckpointError(f'{path}: {"; ".join(problems[:3])}{more}: not a usable model (a diverged run or a '
                              f'damaged file); use an earlier checkpoint of the run, or fetch the file again')
    return state


def state_dict_of(obj, path):
    """The checked state dict in a loaded checkpoint (_unwrap, then check_weights): what every
    backbone loader works from."""
    return check_weights(_unwrap(obj, path), path)


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

    Returns arch in {'resnet18', 'resnet50'} and stem in {'no_maxpool', 'maxpool', 'imagenet'}
    (the 7x7 stem of a folder of images at 96 px and up)."""
    conv1 = state.get('f.0.weight')
    if conv1 is None or conv1.shape not in ((64, 3, 3, 3), (64, 3, 7, 7)):
        raise CheckpointError('no 3x3 (or 7x7) small-data stem at f.0.weight: not a small-data `Model` checkpoint')
    # layer1 is f.3 without max-pool, f.4 with it (f.3 is then the parameter-less max-pool).
    stem = 'no_maxpool' if any(k.startswith('f.3.0.') for k in state) else 'maxpool'
    stem = 'imagenet' if conv1.shape[-1] == 7 else stem
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
    spec = spec_of(dataset)
    expected = {f'f.{k}': v for k, v in small_backbone(arch, spec.maxpool, spec.imagenet_stem).state_dict().items()}
    sizes = _linear_sizes(state, 'g')
    if sizes:
        head = mlp([EMBEDDING_SIZE[arch]] + sizes, last_bias=f'g.{3 * (len(sizes) - 1)}.bias' in state,
                   hidden_bias=len(sizes) > 1 and 'g.0.bias' in state)
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


def run_args_of_checkpoint(path):
    """The settings (args.json) of the main.py run folder holding a checkpoint, else None."""
    args_json = os.path.join(os.path.dirname(os.path.abspath(path)), 'args.json')
    try:
        with open(args_json) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and 'lmbda' in saved and 'dataset' in saved else None


def dataset_of_checkpoint(path, choices, how=False):
    """The pretraining data set that a checkpoint names, if one of `choices`: from its file name
    (the reference's <id>_<lmbda>_<dim>_<batch>_<dataset>_model[_<epoch>].pth and
    ..._imagenet_resnet50.pth), else from the args.json of the main.py run folder holding it;
    None when neither says. how=True: (data set, where it was read) instead."""
    name = os.path.basename(path)
    found = re.search(r'_(' + '|'.join(sorted(map(re.escape, choices), key=len, reverse=True))
                      + r')_(model(_\d+)?|resnet18|resnet50)\.pth$', name)
    saved = None if found else run_args_of_checkpoint(path)
    if found:
        result = found.group(1), 'its file name'
    elif saved is not None and saved['dataset'] in choices:
        result = saved['dataset'], "its run folder's args.json"
    else:
        result = None, None
    return result if how else result[0]


def resolve_dataset_arg(args, choices, default='cifar10'):
    """--dataset left out: the checkpoint's own data set (dataset_of_checkpoint), else `default`
    (the original scripts' default), said aloud. --dataset given: CheckpointError when the
    checkpoint names another one (a CIFAR-10 backbone evaluated as CIFAR-100 loads, since the two
    share the stem, and reports a meaningless number)."""
    inferred, where = dataset_of_checkpoint(args.model_path, choices, how=True)
    if args.dataset is not None:
        if inferred is not None and inferred != args.dataset:
            raise CheckpointError(f'{args.model_path} holds a backbone pretrained on {inferred} ({where} says so), '
                                  f'not for --dataset {args.dataset}: leave --dataset out, or give a checkpoint '
                                  f'pretrained on {args.dataset}')
        return args
    args.dataset = inferred or default
    if int(os.environ.get('RANK', '0')) == 0:
        print(f'--dataset {args.dataset}: ' + ('named by the checkpoint' if inferred else
                                              'the default (the checkpoint does not name its data set)'), flush=True)
    return args


def _stem_of(spec):
    return 'imagenet' if spec.imagenet_stem else 'maxpool' if spec.maxpool else 'no_maxpool'


def _stem_mismatch(path, stem, dataset, spec):
    """The data sets a small-data backbone with `stem` fits (a folder at the sizes of that stem)."""
    sizes = {'no_maxpool': 'below 48', 'maxpool': '48 to 95', 'imagenet': '96 and up'}[stem]
    fits = [n for n in IN_MEMORY if _stem_of(SPECS[n]) == stem] + [f'{FOLDER} at --image_size {sizes}']
    return (f'{path} holds a backbone for {" / ".join(fits)} ({stem.replace("_", " ")} stem), not for --dataset '
            f'{dataset}' + (f' at --image_size {spec.size}' if dataset == FOLDER else ''))


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
    state = state_dict_of(read_checkpoint(path) if state is None else state, path)
    spec = spec_of(dataset)  # a folder: the row this command resolved (its --image_size picks the stem)
    if any(k.startswith('f.') for k in state):
        if spec.protocol == 'imagenet':
            raise CheckpointError(f'{path} holds a small-data backbone (keys f.*); it cannot be used for {dataset!r}')
        found_arch, stem = infer_small_variant(state)
        if arch is not None and arch != found_arch:
            raise CheckpointError(f'{path} holds a {found_arch} backbone but --arch {arch} was given')
        if stem != _stem_of(spec):
            raise CheckpointError(_stem_mismatch(path, stem, dataset, spec))
        _check_all_keys(_expected_small(state, found_arch, dataset), state, path)
        backbone = small_backbone(found_arch, spec.maxpool, spec.imagenet_stem)
        backbone.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith('f.')}, strict=True)
        return backbone, EMBEDDING_SIZE[found_arch], found_arch
    heads = {}
    if any(k.startswith('backbone.') for k in state):  # a full ImageNet training checkpoint
        heads = {k: v for k, v in state.items() if not k.startswith('backbone.')}
        state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    if 'conv1.weight' in state and state['conv1.weight'].shape[-1] == 7:
        if spec.protocol == 'small':
            raise CheckpointError(f'{path} holds an ImageNet ResNet (7x7 stem); evaluate it with --dataset imagenet, '
                                  f'not {dataset!r}')
        found_arch = 'resnet50' if 'layer1.0.conv3.weight' in state else 'resnet18'
        if arch is not None and arch != found_arch:
            raise CheckpointError(f'{path} holds a {found_arch} backbone but --arch {arch} was given')
        _check_all_keys(_expected_imagenet_heads(heads, EMBEDDING_SIZE[found_arch]), heads, path)
        backbone = resnet(found_arch)
        backbone.fc = nn.Identity()
        state = {k: v for k, v in state.items() if not k.startswith('fc.')}
        load_strict(backbone, state, f'{path} (torchvision ResNet)')
        return backbone, EMBEDDING_SIZE[found_arch], found_arch
    expected = small_backbone(arch or 'resnet18', spec.maxpool if spec.protocol == 'small' else False).state_dict()
    missing, unexpected, shapes = compare_state({f'f.{k}': v for k, v in expected.items()}, state)
    raise CheckpointError(f'{path} is neither a small-data Model (f.*/g.*) nor a torchvision ResNet state dict: '
                          + _format_problems(missing, unexpected, shapes))
