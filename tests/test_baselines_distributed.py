"""The baseline METHOD objects (SimCLR, BYOL, W-MSE, INTL, CW-RGP) under DistributedDataParallel
with global BatchNorm (model.sync_batchnorm), two gloo processes, against one process on the
full batch: the same loss, parameter gradients and BatchNorm running statistics (float64).
The losses alone are checked in test_baselines.py; this adds the heads' BatchNorm, BYOL's
target and predictor, SimCLR's bn_last and the permutations drawn on every rank."""
import pytest
import torch

from mixbt import methods
import model as M
from mixbt import nets
from test_distributed import WORLD, run_two_processes

pytestmark = pytest.mark.slow  # several real processes

B, SIDE = 8, 8  # global batch; tiny images through a real ResNet-18 (8x8 -> 1x1 at layer4)

# name: (projector, method of the model)
CASES = {
    'simclr': ('16-8', lambda m: methods.SimCLR(m, 8)),
    'byol': ('16-8', lambda m: methods.BYOL(m, 8, head_size=16)),
    'wmse': ('16-3', lambda m: methods.WMSE(m, w_size=4, w_iter=2)),     # sub-batches span both ranks
    'cwrgp': ('16-16', lambda m: methods.CWRGP(m, w_size=4, w_iter=2, group=2)),
    'intl': ('16-16-16', lambda m: methods.INTL(m)),
}


def test_every_registered_baseline_has_a_two_process_case():
    assert set(CASES) == {n for n, cls in methods.METHODS.items() if issubclass(cls, methods.Baseline)}


def build(name):
    torch.manual_seed(0)
    projector, make = CASES[name]
    return make(M.Model(arch='resnet18', projector=projector, maxpool=False)).double()


def views():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(B, 3, SIDE, SIDE, generator=g, dtype=torch.float64) for _ in range(2)]


def _methods_worker(rank):
    shard = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
    out = {}
    for name in CASES:
        method = nets.sync_batchnorm(build(name), torch.device('cpu'))
        method.configure_bn()
        ddp = torch.nn.parallel.DistributedDataParallel(method)
        loss, _ = ddp([v[shard] for v in views()])
        loss.backward()
        out[name] = (loss.detach(), {n: p.grad for n, p in method.named_parameters() if p.grad is not None},
                     {n: b for n, b in method.named_buffers() if b.is_floating_point()})
    return out


@pytest.fixture(scope='module')
def two_process_results():
    return run_two_processes(_methods_worker)


@pytest.mark.parametrize('name', sorted(CASES))
def test_two_process_baseline_method_equals_single_process_full_batch(name, two_process_results):
    method = build(name)
    loss, _ = method(views())
    loss.backward()
    grads = {n: p.grad for n, p in method.named_parameters() if p.grad is not None}
    buffers = {n: b for n, b in method.named_buffers() if b.is_floating_point()}
    assert grads and buffers
    for r, out in enumerate(two_process_results):
        r_loss, r_grads, r_buffers = out[name]
        torch.testing.assert_close(r_loss, loss.detach(), rtol=1e-5, atol=1e-8, msg=f'{name}: loss on rank {r}')
        assert set(r_grads) == set(grads), name
        for n, g in grads.items():
            torch.testing.assert_close(r_grads[n], g, rtol=1e-5, atol=1e-8, msg=f'{name}: {n} on rank {r}')
        for n, b in buffers.items():  # global BatchNorm running statistics (BYOL's target's too)
            torch.testing.assert_close(r_buffers[n], b, rtol=1e-5, atol=1e-8, msg=f'{name}: {n} on rank {r}')
