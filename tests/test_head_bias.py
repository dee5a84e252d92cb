"""Head biases as in the original code (docs/protocol.md sections 2 and 6): the Mix-BT head (and
the ImageNet projector) has no bias before its BatchNorm, the W-MSE code's get_head has one on
every Linear; the model of a run takes the method's (`head_hidden_bias`)."""
import argparse

import pytest
import torch.nn as nn

import model as M
from mixbt import methods, nets


def linear_biases(module):
    return [m.bias is not None for m in module.modules() if isinstance(m, nn.Linear)]


def test_mlp_hidden_bias_is_an_option_and_off_by_default():
    assert linear_biases(nets.mlp([8, 16, 16, 4])) == [False, False, False]
    assert linear_biases(nets.mlp([8, 16, 4], last_bias=True)) == [False, True]
    head = nets.mlp([8, 16, 16, 4], last_bias=True, hidden_bias=True)
    assert linear_biases(head) == [True, True, True]
    assert [k for k in head.state_dict() if k.endswith('.bias')] == ['0.bias', '1.bias', '3.bias', '4.bias', '6.bias']


def test_the_mix_bt_head_keeps_the_released_layout():
    """g.0 without bias: the released *_model.pth files load into it (tests/test_model.py)."""
    keys = M.Model(16, 'resnet18').state_dict()
    assert 'g.0.bias' not in keys and 'g.3.bias' in keys
    assert 'g.0.bias' in M.Model(16, 'resnet18', projector='32-8', hidden_bias=True).state_dict()


@pytest.mark.parametrize('biased', [False, True])
def test_a_run_model_takes_the_head_bias_of_its_method(biased, monkeypatch):
    monkeypatch.setattr(methods.WMSE, 'head_hidden_bias', biased, raising=False)
    args = argparse.Namespace(dataset='cifar10', arch='resnet18', feature_dim=8, projector='32-8', method='wmse')
    assert linear_biases(M.build_model(args).g) == [biased, True]
    mixbt = argparse.Namespace(dataset='cifar10', arch='resnet18', feature_dim=8, projector=None, method='mixbt')
    assert linear_biases(M.build_model(mixbt).g) == [False, True]
    assert linear_biases(M.build_model(argparse.Namespace(dataset='cifar10', arch='resnet18', feature_dim=8,
                                                          projector=None)).g) == [False, True]


def test_each_baseline_head_has_its_original_biases():
    """W-MSE repository (SimCLR, BYOL, W-MSE) and CW-RGP: get_head, biases on every Linear, and
    BYOL's predictor too; INTL: get_projection, none before a BatchNorm; Mix-BT: none."""
    expected = {'simclr': True, 'byol': True, 'wmse': True, 'cwrgp': True, 'intl': False,
                'mixbt': False, 'barlowtwins': False, 'hsic': False}
    assert {name: M.head_hidden_bias(name) for name in methods.METHODS} == expected
    byol = methods.BYOL(M.Model(8, 'resnet18', projector='16-8', hidden_bias=True), emb=8, head_size=16)
    assert linear_biases(byol.predictor) == [True, True]


def test_a_baseline_checkpoint_with_head_biases_loads(tmp_path):
    import torch
    from mixbt import checkpoints as C
    for biased in (False, True):  # runs before and after the heads took the original's biases
        path = tmp_path / f'abcd_wmse_8_4_cifar10_model_{biased}.pth'
        torch.save(M.Model(8, 'resnet18', projector='16-8', hidden_bias=biased).state_dict(), path)
        C.load_backbone(str(path), 'cifar10')
