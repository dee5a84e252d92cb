"""--accumulate N: the Barlow Twins family's loss and gradients on a batch processed as N
micro-batches equal those of the whole batch (BatchNorm in eval mode, where micro-batches cannot
change it), while ordinary gradient accumulation does not."""
import copy

import pytest
import torch

from mixbt.accumulate import accumulated_step, check_accumulate
from mixbt.config import get_args
from mixbt.errors import MixBTError
from mixbt.methods import METHODS, BarlowTwins
from test_baselines import images
from test_methods import TinyEmbedder as TinyModel


def gradients(module):
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


class Recorder(torch.optim.SGD):
    """An optimiser whose step does nothing: the gradients stay to be compared."""

    def step(self, closure=None):
        return None


@pytest.mark.parametrize('kind', ['mixbt', 'barlowtwins', 'hsic', 'mixbt_reference'])
def test_accumulated_loss_and_every_gradient_equal_the_full_batch_in_float64(kind):
    torch.manual_seed(0)
    model = TinyModel(emb=6).double().eval()  # BatchNorm in eval mode: micro-batches cannot change it
    reference = kind.endswith('reference')
    full = BarlowTwins(model, 0.01, corr_neg_one=kind == 'hsic', is_mixup=kind.startswith('mixbt'), seed=3,
                       bt_loss='imagenet_reference' if reference else 'global', ref_groups=2, batch_size=16)
    micro = copy.deepcopy(full)
    views = [v.double() for v in images(n=16, seed=1)]

    torch.manual_seed(5)  # the permutation of the mixed batch: drawn once for the whole batch
    loss, logs = full(views)
    loss.backward()
    torch.manual_seed(5)
    got, got_logs = accumulated_step(micro, views, 4, None, Recorder(micro.parameters(), lr=0.1))

    torch.testing.assert_close(got, loss.detach(), rtol=1e-10, atol=1e-10)
    for key in logs:
        torch.testing.assert_close(got_logs[key], logs[key].detach(), rtol=1e-10, atol=1e-10)
    want, have = gradients(full), gradients(micro)
    assert want.keys() == have.keys() and want
    for name in want:
        torch.testing.assert_close(have[name], want[name], rtol=1e-10, atol=1e-10, msg=name)


def test_ordinary_gradient_accumulation_is_another_objective():
    """Why the two passes: summing the micro-batches' own losses does not give the full-batch gradient."""
    torch.manual_seed(0)
    model = TinyModel(emb=6).double().eval()
    method = BarlowTwins(model, 0.01, is_mixup=False)
    views = [v.double() for v in images(n=16, seed=1)]
    method(views)[0].backward()
    full = gradients(method)
    method.zero_grad()
    for i in range(4):
        (method([v.chunk(4)[i] for v in views])[0] / 4).backward()
    naive = gradients(method)
    assert any(not torch.allclose(naive[k], full[k], rtol=1e-3) for k in full)


def test_the_running_statistics_are_updated_once_per_micro_batch():
    torch.manual_seed(0)
    method = BarlowTwins(TinyModel(emb=6), 0.01, is_mixup=True, seed=0)
    bn = method.model.f[1]
    full = copy.deepcopy(method)
    full(images(n=16, seed=2))
    per_step = int(full.model.f[1].num_batches_tracked)  # one update per view of a step
    accumulated_step(method, images(n=16, seed=2), 4, None, Recorder(method.parameters(), lr=0.1))
    assert int(bn.num_batches_tracked) == 4 * per_step  # the second pass only (the first is undone)


@pytest.mark.parametrize('argv, message', [
    (['--method', 'byol', '--accumulate', '2'], 'no exact micro-batch loss'),
    (['--is_mixup', 'true', '--batch_size', '12', '--accumulate', '5'], 'must divide'),
    (['--is_mixup', 'true', '--batch_size', '8', '--accumulate', '8'], 'at least 2'),
    (['--is_mixup', 'true', '--accumulate', '0'], 'at least 1'),
])
def test_accumulate_that_cannot_apply_is_refused_before_any_work(argv, message):
    with pytest.raises(MixBTError, match=message):
        args = get_args(argv)
        check_accumulate(args, METHODS[args.method], 1)
