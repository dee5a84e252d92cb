"""Two real processes (gloo, CPU) against one process on the full batch: loss values and
every parameter gradient must be equal (docs/protocol.md section 1), for the losses alone, for
the whole Mix-BT method under DDP with global BatchNorm, and for the kNN feature gather."""
import os
import socket
import subprocess
import sys
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

from mixbt import distributed as D
from mixbt import losses

pytestmark = pytest.mark.slow  # several real processes

WORLD = 2


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _entry(rank, fn, port, args, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    D.init_distributed(gpu=-1)
    try:
        torch.save(fn(rank, *args), os.path.join(out, f'{rank}.pt'))
    finally:
        D.cleanup()


def run_two_processes(fn, *args):
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_entry, args=(fn, free_port(), args, out), nprocs=WORLD, join=True)
        return [torch.load(os.path.join(out, f'{r}.pt')) for r in range(WORLD)]


# ------------------------------------------------------------------ the losses alone
N, DIM, OUT = 12, 7, 5


def loss_inputs():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(N, DIM, generator=g, dtype=torch.float64) for _ in range(3)]
    weight = torch.randn(OUT, DIM, generator=g, dtype=torch.float64)
    perms = [torch.randperm(N // WORLD, generator=g) for _ in range(WORLD)]
    return xs, weight, perms


def loss_value(case, za, zb, zm, perm, alpha=0.37):
    za, zb, zm = losses.standardize(za), losses.standardize(zb), losses.standardize(zm)
    c = losses.cross_correlation(za, zb)
    if case == 'bt':
        return losses.barlow_twins_loss(c, 0.01)
    if case == 'hsic':
        return losses.barlow_twins_loss(c, 0.01, corr_neg_one=True)
    return losses.barlow_twins_loss(c, 0.01) + 4.0 * 0.01 * losses.mixup_regulariser(zm, za, zb, perm, alpha)


def _loss_worker(rank, case):
    xs, weight, perms = loss_inputs()
    net = torch.nn.Linear(DIM, OUT, bias=False).double()
    net.weight.data.copy_(weight)
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    shard = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    za, zb, zm = [ddp(x[shard]) for x in xs]
    loss = loss_value(case, za, zb, zm, perms[rank])
    loss.backward()
    return loss.detach(), net.weight.grad


@pytest.mark.parametrize('case', ['bt', 'hsic', 'mixup'])
def test_two_process_loss_and_gradients_equal_single_process(case):
    xs, weight, perms = loss_inputs()
    w = weight.clone().requires_grad_(True)
    global_perm = torch.cat([p + r * (N // WORLD) for r, p in enumerate(perms)])
    expected = loss_value(case, *[x @ w.T for x in xs], global_perm)
    expected.backward()
    for loss, grad in run_two_processes(_loss_worker, case):
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-10)
        torch.testing.assert_close(grad, w.grad, rtol=1e-5, atol=1e-10)


def test_reference_style_all_reduce_gives_gradients_one_over_world_size_too_small():
    """Why the collective must be autograd-aware: a plain all_reduce of C (the reference)
    gives the right loss but 1/W of the gradient after DDP averaging."""
    xs, weight, _ = loss_inputs()
    w = weight.clone().requires_grad_(True)
    loss_value('bt', *[x @ w.T for x in xs], None).backward()
    (loss, grad), _ = run_two_processes(_plain_all_reduce_worker)
    torch.testing.assert_close(grad * WORLD, w.grad, rtol=1e-5, atol=1e-10)


def _plain_all_reduce_worker(rank):
    import torch.distributed as dist
    xs, weight, _ = loss_inputs()
    net = torch.nn.Linear(DIM, OUT, bias=False).double()
    net.weight.data.copy_(weight)
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    shard = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    za, zb = [losses.standardize(ddp(x[shard])) for x in xs[:2]]
    c = za.T @ zb / N
    dist.all_reduce(c)  # not autograd-aware: backward sees only this rank's part
    loss = losses.barlow_twins_loss(c, 0.01)
    loss.backward()
    return loss.detach(), net.weight.grad


# ------------------------------------------------------------------ the whole method under DDP
B = 8  # global batch


def method_inputs():
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(B, 3, 32, 32, generator=g, dtype=torch.float64) for _ in range(2)]
    perms = [torch.randperm(B // WORLD, generator=g) for _ in range(WORLD)]
    return views, perms


def build_method(fuse=True):
    import model as M
    from mixbt.methods import BarlowTwins
    torch.manual_seed(0)
    net = M.Model(feature_dim=16, arch='resnet18', maxpool=False).double()
    return BarlowTwins(net, lmbda=0.0078125, is_mixup=True, mixup_loss_scale=4.0, seed=0, fuse_views=fuse)


def _method_worker(rank, fuse):
    import model as M
    from mixbt import nets
    views, perms = method_inputs()
    method = build_method(fuse)
    method = nets.sync_batchnorm(method, torch.device('cpu'))
    method.configure_bn()
    method.draw_mixup = lambda n, device: (0.3, perms[rank])
    ddp = torch.nn.parallel.DistributedDataParallel(method)
    shard = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
    loss, logs = ddp([v[shard] for v in views])
    loss.backward()
    grads = {n: p.grad.clone() for n, p in method.named_parameters()}
    buffers = {n: b.clone() for n, b in method.named_buffers()}
    return loss.detach(), {k: v.detach() for k, v in logs.items()}, grads, buffers


@pytest.mark.parametrize('fuse', [True, False])
def test_two_process_mixbt_method_equals_single_process_full_batch(fuse):
    views, perms = method_inputs()
    method = build_method(fuse)
    global_perm = torch.cat([p + r * (B // WORLD) for r, p in enumerate(perms)])
    method.draw_mixup = lambda n, device: (0.3, global_perm)
    loss, logs = method(views)
    loss.backward()
    for r_loss, r_logs, r_grads, r_buffers in run_two_processes(_method_worker, fuse):
        torch.testing.assert_close(r_loss, loss.detach(), rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(r_logs['loss_mix'], logs['loss_mix'].detach(), rtol=1e-5, atol=1e-8)
        for name, p in method.named_parameters():
            torch.testing.assert_close(r_grads[name], p.grad, rtol=1e-5, atol=1e-8, msg=name)
        for name, b in method.named_buffers():  # global BatchNorm running statistics
            torch.testing.assert_close(r_buffers[name], b, rtol=1e-5, atol=1e-8, msg=name)


# ------------------------------------------------------------------ kNN features
def _knn_worker(rank):
    from mixbt import knn
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (11, 4, 4, 3), generator=g, dtype=torch.uint8)
    return knn.embed_images(torch.nn.Flatten(), images, (0.5,) * 3, (0.2,) * 3, torch.device('cpu'), batch_size=2)


def test_knn_features_gathered_across_ranks_in_order():
    from mixbt import knn
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (11, 4, 4, 3), generator=g, dtype=torch.uint8)
    expected = knn.embed_images(torch.nn.Flatten(), images, (0.5,) * 3, (0.2,) * 3, torch.device('cpu'))
    for feats in run_two_processes(_knn_worker):
        torch.testing.assert_close(feats, expected)


# ------------------------------------------------------------------ torchrun end to end
def test_torchrun_two_processes_trains_and_writes_one_checkpoint(tmp_path, repo_root):
    sys.path.insert(0, os.path.join(repo_root, 'tests'))
    import fakedata
    fakedata.write_cifar(str(tmp_path / 'data'), 'cifar10', n_train=20, n_test=10)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', str(free_port()),
           'main.py', '--dataset', 'cifar10', '--data_root', str(tmp_path / 'data'), '--arch', 'resnet18',
           '--feature_dim', '16', '--batch_size', '8', '--epochs', '1', '--workers', '0', '--is_mixup', 'true',
           '--lr_shed', 'cosine', '--k', '5', '--results_dir', str(tmp_path / 'res'), '--sync_bn', 'true']
    env = {**os.environ, 'WANDB_MODE': 'disabled', 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count('Run folder:') == 1 and '2 process(es)' in proc.stdout  # only rank 0 logs
    (run,) = os.listdir(tmp_path / 'res')
    files = os.listdir(tmp_path / 'res' / run)
    assert len([f for f in files if f.endswith('_model.pth')]) == 1 and 'last.pth' in files
    state = torch.load(tmp_path / 'res' / run / 'last.pth')
    assert state['epoch'] == 1 and state['args']['batch_size'] == 8
    import model as M
    M.Model(16, 'resnet18', False).load_state_dict(state['model'], strict=True)
