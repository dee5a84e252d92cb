"""Checkpoints that no model can be evaluated with are refused where every tool loads backbones
(checkpoints.load_backbone, and state_dict_of for hubconf), naming the file and the tensor."""
import argparse
import json

import pytest
import torch
import torchvision

import model as M
from mixbt import checkpoints as C
from mixbt import data


_SMALL = []


def small_state():
    """A fresh copy of one CIFAR ResNet-18 Model state dict (built once: the tests damage copies)."""
    if not _SMALL:
        torch.manual_seed(0)
        _SMALL.append(M.Model(32, 'resnet18', False).state_dict())
    return {k: v.clone() for k, v in _SMALL[0].items()}


def nan_at(state, key, index=3):
    state[key].view(-1)[index] = float('nan')
    return state


def inf_at(state, key):
    state[key][0] = float('inf')
    return state


def as_int64(state, key):
    state[key] = state[key].long()
    return state


DAMAGES = [
    (lambda s: nan_at(s, 'f.0.weight'), 'f.0.weight holds NaN'),
    (lambda s: inf_at(s, 'f.1.running_var'), 'f.1.running_var holds inf'),
    (lambda s: as_int64(s, 'f.0.weight'), 'f.0.weight is int64, expected a floating-point tensor'),
    (lambda s: inf_at(s, 'g.1.running_mean'), 'g.1.running_mean holds inf'),    # the head is part of the file
]


@pytest.mark.parametrize('damage,named', DAMAGES)
def test_load_backbone_refuses_tensors_that_are_not_finite_floats(tmp_path, damage, named):
    path = tmp_path / 'abcd1234_0.0078125_32_256_cifar10_model.pth'
    torch.save(damage(small_state()), path)
    with pytest.raises(C.CheckpointError) as e:
        C.load_backbone(str(path), 'cifar10')
    message = str(e.value)
    assert message.startswith(f'{path}: {named}') and '\n' not in message
    with pytest.raises(C.CheckpointError, match=named):                       # run states ({'model': ...}) too
        C.load_backbone(str(path), 'cifar10', state={'epoch': 3, 'model': damage(small_state())})


def test_imagenet_backbones_are_checked_too(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    state['layer4.1.bn2.running_var'][7] = float('nan')
    path = tmp_path / 'resnet18.pth'
    torch.save({'model': {f'module.backbone.{k}': v for k, v in state.items()}}, path)
    with pytest.raises(C.CheckpointError, match=r'resnet18\.pth: backbone\.layer4\.1\.bn2\.running_var holds NaN'):
        C.load_backbone(str(path), 'imagenet')


def test_integer_batch_counters_and_half_precision_weights_load():
    state = {k: (v if k.endswith('num_batches_tracked') else v.half()) for k, v in small_state().items()}
    assert state['f.1.num_batches_tracked'].dtype == torch.int64
    backbone, _, _ = C.load_backbone('half.pth', 'cifar10', state=state)
    assert backbone[0].weight.dtype == torch.float32


def test_many_problems_are_counted_not_listed():
    state = small_state()
    for k in ('f.0.weight', 'f.1.weight', 'f.1.bias', 'f.1.running_mean', 'f.1.running_var'):
        nan_at(state, k, 0)
    with pytest.raises(C.CheckpointError, match=r'f\.1\.bias holds NaN \(and 2 more\): not a usable model'):
        C.load_backbone('x.pth', 'cifar10', state=state)


@pytest.mark.parametrize('content,what', [([1, 2], 'a list'), ({'model': {'f.0.weight': 'text'}}, "'f.0.weight' (str)"),
                                          ({'epoch': 3, 'optimizer': {}}, "'epoch' (int)")])
def test_a_file_that_is_not_a_state_dict_is_named(tmp_path, content, what):
    path = tmp_path / 'odd.pth'
    torch.save(content, path)
    with pytest.raises(C.CheckpointError) as e:
        C.load_backbone(str(path), 'cifar10')
    assert str(e.value).startswith(f'{path} does not hold a state dict') and what in str(e.value)


def args_for(path, dataset):
    return argparse.Namespace(model_path=str(path), dataset=dataset)


def test_dataset_given_against_the_checkpoints_own_is_refused(tmp_path):
    named = tmp_path / 'abcd1234_0.0078125_1024_256_cifar10_model.pth'
    with pytest.raises(C.CheckpointError, match=r'pretrained on cifar10 \(its file name says so\), not for '
                                                r'--dataset cifar100: leave --dataset out'):
        C.resolve_dataset_arg(args_for(named, 'cifar100'), data.SPECS)
    assert C.resolve_dataset_arg(args_for(named, 'cifar10'), data.SPECS).dataset == 'cifar10'
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'args.json').write_text(json.dumps({'lmbda': 0.01, 'dataset': 'stl10', 'subset': 0}))
    with pytest.raises(C.CheckpointError, match=r"stl10 \(its run folder's args\.json says so\), not for --dataset tiny"):
        C.resolve_dataset_arg(args_for(run / 'last.pth', 'tiny_imagenet'), data.SPECS)
    assert C.resolve_dataset_arg(args_for(tmp_path / 'mine.pth', 'cifar100'), data.SPECS).dataset == 'cifar100'
