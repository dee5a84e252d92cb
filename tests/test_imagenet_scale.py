"""The update scale of the released ImageNet runs (docs/protocol.md sections 1 and 4).

The mix-bt ImageNet script sums its cross-correlation matrices (C, and the four mixup
matrices) with a plain torch.distributed.all_reduce, which autograd does not see: after
DDP's averaging every parameter gradient is 1/W of the true one. Ours is the true gradient;
utils.backward_step(grad_scale=1/W) reproduces the reference's on two real gloo processes. Here with
--bt_loss global; the script's own loss (--bt_loss imagenet_reference) and its update are checked
against a transcription of its forward in tests/test_imagenet_reference_loss.py."""
import pytest
import torch
import torch.distributed as dist

from mixbt import losses
from test_distributed import WORLD, run_two_processes
from mixbt.runtime import backward_step

pytestmark = pytest.mark.slow  # several real processes

B, LMBDA, S, ALPHA = 8, 0.0078125, 4.0, 0.3  # global batch; s = 0.5 * lambda_mixup


def step_inputs():
    g = torch.Generator().manual_seed(3)
    views = [torch.randn(B, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(2)]
    perms = [torch.randperm(B // WORLD, generator=g) for _ in range(WORLD)]  # per rank, as the reference
    return views, perms


def build_method(is_mixup, perm):
    import model as M
    from mixbt import nets
    from mixbt.methods import BarlowTwins
    torch.manual_seed(0)
    net = M.Model(feature_dim=16, arch='resnet18', maxpool=False).double()  # CIFAR stem (no maxpool), 16 px inputs
    method = BarlowTwins(net, lmbda=LMBDA, is_mixup=is_mixup, mixup_loss_scale=S, seed=0)
    method = nets.sync_batchnorm(method, torch.device('cpu'))  # as the reference's SyncBatchNorm
    method.configure_bn()
    method.draw_mixup = lambda n, device: (ALPHA, perm)
    return method


class Embeddings(torch.nn.Module):
    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, views):
        return self.method.embed(views)


def off_diagonal(x):
    n, m = x.shape
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def plain_all_reduce(t):
    """The script's in-place torch.distributed.all_reduce as autograd saw it in the PyTorch of
    its time (collectives had no autograd entry): the data becomes the sum over ranks, the
    backward passes the gradient to this rank's term only. (Today's PyTorch does the same for
    that call, with a deprecation warning; no_grad states it without the deprecated path.)"""
    with torch.no_grad():
        dist.all_reduce(t)


def reference_style_loss(za, zb, zm, perm):
    """The mix-bt ImageNet forward after the projector: matrices of this rank's samples divided
    by the global batch, then summed with the plain all_reduce; the mixup target with the
    paper's alpha za^T zb (the script's za -> zb typo is not what this test is about).
    Statistics over the global batch as ours (the script standardises per process)."""
    za, zb = losses.standardize(za), losses.standardize(zb)
    c = za.T @ zb
    c.div_(B)
    plain_all_reduce(c)
    loss = (torch.diagonal(c) - 1).pow(2).sum() + LMBDA * off_diagonal(c).pow(2).sum()
    if zm is None:
        return loss
    zm = losses.standardize(zm)
    cc_m_1 = zm.T @ za / B
    cc_m_1_gt = (ALPHA * (za.T @ za) + (1 - ALPHA) * (zb[perm, :].T @ za)) / B
    cc_m_2 = zm.T @ zb / B
    cc_m_2_gt = (ALPHA * (za.T @ zb) + (1 - ALPHA) * (zb[perm, :].T @ zb)) / B
    for m in (cc_m_1, cc_m_1_gt, cc_m_2, cc_m_2_gt):
        plain_all_reduce(m)
    lossm = 0.5 * LMBDA * ((cc_m_1 - cc_m_1_gt).pow(2).sum() + (cc_m_2 - cc_m_2_gt).pow(2).sum())
    return loss + 2 * S * lossm  # lambda_mixup = 2 s


def _scale_worker(rank, is_mixup):
    views, perms = step_inputs()
    shard = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
    xa, xb = [v[shard] for v in views]

    ours = build_method(is_mixup, perms[rank])
    ddp = torch.nn.parallel.DistributedDataParallel(ours)
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.0)  # a step that leaves the weights as they are
    grads = {}
    for grad_scale in (1 / WORLD, 1.0):
        loss, _ = ddp([xa, xb])
        backward_step(loss, optimizer, grad_scale=grad_scale)
        grads[grad_scale] = {n: p.grad.clone() for n, p in ours.named_parameters()}

    ref = build_method(is_mixup, perms[rank])
    inputs = [xa, xb] + ([ALPHA * xa + (1 - ALPHA) * xb[perms[rank], :]] if is_mixup else [])
    ref_ddp = torch.nn.parallel.DistributedDataParallel(Embeddings(ref))  # kept alive: its hooks average
    z = ref_ddp(inputs)
    ref_loss = reference_style_loss(z[0], z[1], z[2] if is_mixup else None, perms[rank])
    ref_loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in ref.named_parameters()}
    return loss.detach(), ref_loss.detach(), grads[1 / WORLD], grads[1.0], ref_grads


@pytest.mark.parametrize('is_mixup', [False, True], ids=['bt', 'mixup'])
def test_grad_scale_one_over_world_size_gives_the_reference_plain_all_reduce_gradients(is_mixup):
    for loss, ref_loss, scaled, true, ref in run_two_processes(_scale_worker, is_mixup):
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=0)  # the logged loss is not scaled
        assert ref.keys() == scaled.keys()
        for name in ref:
            torch.testing.assert_close(scaled[name], ref[name], rtol=1e-7, atol=1e-12, msg=name)
            torch.testing.assert_close(true[name], WORLD * ref[name], rtol=1e-7, atol=1e-12, msg=name)
        big = max(ref, key=lambda n: ref[n].abs().max())
        assert not torch.allclose(true[big], ref[big], rtol=0.1)  # without grad_scale: W times the reference's


@pytest.mark.parametrize('use_scaler', [False, True], ids=['plain', 'gradscaler'])
def test_grad_scale_multiplies_the_gradients_not_the_loss(use_scaler):
    g = torch.Generator().manual_seed(4)
    x, w0 = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    grads = []
    for grad_scale in (1.0, 0.125):
        w = torch.nn.Parameter(w0.clone())
        loss = (x @ w).exp().sum()
        before = loss.item()
        scaler = torch.amp.GradScaler('cpu') if use_scaler else None
        backward_step(loss, torch.optim.SGD([w], lr=0.0), scaler, grad_scale=grad_scale)
        assert loss.item() == before
        grads.append(w.grad)
    torch.testing.assert_close(grads[1], 0.125 * grads[0], rtol=1e-14, atol=0)
