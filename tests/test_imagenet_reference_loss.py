"""--bt_loss imagenet_reference against a transcription of the original ImageNet script's forward
(mix-bt main_imagenet.py, BarlowTwins.forward, restated below from its formulas) on R simulated
GPUs: the loss and the update of the released runs, on one process and on two gloo processes, in
float64 (docs/protocol.md section 1)."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from mixbt import methods
from mixbt.errors import MixBTError
from mixbt.runtime import backward_step

R, ROWS, DIM, OUT = 4, 3, 5, 4   # the reference's GPUs, rows per GPU, input and embedding sizes
LAMBD, LAMBDA_MIXUP, SEED = 0.02, 1.0, 5


def off_diagonal(x):
    n = x.shape[0]
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def original_gpu_forward(net, y1, y2, index, alpha, batch_size, all_reduce):
    """One GPU of the original: its own rows y1, y2, its own permutation `index` and `alpha`;
    every matrix divided by the full batch, then `all_reduce`d (a sum over the GPUs)."""
    z1, z2 = net(y1), net(y2)
    z1 = (z1 - z1.mean(dim=0)) / z1.std(dim=0)
    z2 = (z2 - z2.mean(dim=0)) / z2.std(dim=0)
    c = all_reduce(z1.T @ z2 / batch_size)
    loss = (torch.diagonal(c) - 1).pow(2).sum() + LAMBD * off_diagonal(c).pow(2).sum()
    zm = net(alpha * y1 + (1. - alpha) * y2[index, :])
    zm = (zm - zm.mean(dim=0)) / zm.std(dim=0)
    cc_m_1 = all_reduce(zm.T @ z1 / batch_size)
    cc_m_1_gt = all_reduce((alpha * (z1.T @ z1) + (1. - alpha) * (z2[index, :].T @ z1)) / batch_size)
    cc_m_2 = all_reduce(zm.T @ z2 / batch_size)
    cc_m_2_gt = all_reduce((alpha * (z2.T @ z2) + (1. - alpha) * (z2[index, :].T @ z2)) / batch_size)
    lossm = 0.5 * LAMBD * ((cc_m_1 - cc_m_1_gt).pow(2).sum() + (cc_m_2 - cc_m_2_gt).pow(2).sum())
    return loss + LAMBDA_MIXUP * lossm


def original_step(weight, xa, xb, alphas, perms, batch_size):
    """(loss, weight gradient) of the original's step on len(alphas) GPUs, GPU g holding rows
    g*rows..(g+1)*rows-1. Its all_reduce has no autograd: GPU g's graph sees its own term only
    (the others enter as constants), and DDP averages the GPUs' gradients."""
    gpus, rows = len(alphas), xa.shape[0] // len(alphas)
    shares = [slice(g * rows, (g + 1) * rows) for g in range(gpus)]
    local = [[] for _ in range(gpus)]  # pass 1: every GPU's matrices, in the order it reduces them
    for g, share in enumerate(shares):
        original_gpu_forward(lambda x: x @ weight.T, xa[share], xb[share], perms[g], alphas[g], batch_size,
                             lambda m, g=g: local[g].append(m.detach()) or m)
    totals = [sum(ms) for ms in zip(*local)]
    losses, grads = [], []
    for g, share in enumerate(shares):  # pass 2: each GPU's loss and its own gradient
        w = weight.detach().clone().requires_grad_(True)
        calls = iter(range(len(totals)))
        loss = original_gpu_forward(lambda x: x @ w.T, xa[share], xb[share], perms[g], alphas[g], batch_size,
                                    lambda m, g=g: m + (totals[next(calls)] - m).detach())
        losses.append(loss.detach())
        grads.append(torch.autograd.grad(loss, w)[0])
    assert all(torch.allclose(v, losses[0], rtol=1e-12, atol=0) for v in losses)  # the same loss on every GPU
    return losses[0], sum(grads) / gpus


def step_inputs(rows=ROWS):
    g = torch.Generator().manual_seed(1)
    xa, xb = [torch.randn(R * rows, DIM, generator=g, dtype=torch.float64) for _ in range(2)]
    return xa, xb, torch.randn(OUT, DIM, generator=g, dtype=torch.float64)


def reference_draws(rows):
    """The R alphas and permutations, as BarlowTwins.draw_group_mixup draws them: all from the
    generator seeded with --seed, whatever the number of processes."""
    rng = np.random.default_rng(SEED)
    alphas = rng.beta(1.0, 1.0, size=R)
    return alphas.tolist(), [torch.from_numpy(rng.permutation(rows)) for _ in range(R)]


class LinearNet(nn.Module):
    """model.Model's interface ((features, embedding)) around one weight matrix, without BatchNorm."""

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, x):
        return x, x @ self.weight.T


def reference_method(weight, batch_size, is_mixup=True):
    return methods.BarlowTwins(LinearNet(weight), LAMBD, is_mixup=is_mixup, mixup_loss_scale=0.5 * LAMBDA_MIXUP,
                               seed=SEED, bt_loss='imagenet_reference', ref_groups=R, batch_size=batch_size)


@pytest.mark.parametrize('rows, batch_size', [(ROWS, R * ROWS), (2, R * ROWS)], ids=['full', 'short_last_step'])
def test_one_process_holding_every_group_gives_the_original_loss_and_update(rows, batch_size):
    """Short last step: the original still divides by its full --batch-size."""
    xa, xb, weight = step_inputs(rows)
    ref_loss, ref_grad = original_step(weight, xa, xb, *reference_draws(rows), batch_size)
    method = reference_method(weight, batch_size)
    loss, logs = method([xa, xb])
    backward_step(loss, torch.optim.SGD(method.parameters(), lr=0.0), grad_scale=1 / R)  # the trainer's 1/R
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-10, atol=0)
    torch.testing.assert_close(method.model.weight.grad, ref_grad, rtol=1e-9, atol=1e-14)
    assert logs['loss_mix'] > 0


def test_the_reference_loss_is_not_the_global_one():
    """Per-group statistics and the z_b^T z_b target change the value: the option is a real choice."""
    xa, xb, weight = step_inputs()
    ref = reference_method(weight, R * ROWS)([xa, xb])[0]
    ours = methods.BarlowTwins(LinearNet(weight), LAMBD, is_mixup=True, mixup_loss_scale=0.5, seed=SEED)([xa, xb])[0]
    assert not torch.allclose(ref, ours, rtol=1e-3)


def test_groups_that_processes_cannot_share_are_refused_with_the_way_out():
    with pytest.raises(MixBTError, match=r'--ref_world_size 8 groups cannot be shared equally by 3 processes.*'
                                         r'--bt_loss global'):
        methods.barlow_twins.groups_per_process(8, 3)
    assert methods.barlow_twins.groups_per_process(8, 2, rows=8) == 4
    with pytest.raises(MixBTError, match='6 images on a process cannot form its 4 groups'):
        methods.barlow_twins.groups_per_process(8, 2, rows=6)
    xa, xb, weight = step_inputs()
    with pytest.raises(MixBTError, match='cannot form'):
        reference_method(weight, R * ROWS)([xa[:5], xb[:5]])  # 5 rows, 4 groups


def test_command_line_defaults_and_checks():
    import main
    imagenet = main.get_args(['--dataset', 'imagenet', '--batch_size', '1024'])
    assert (imagenet.bt_loss, imagenet.ref_world_size) == ('imagenet_reference', 8)
    assert main.get_args(['--dataset', 'cifar10']).bt_loss == 'global'
    ours = main.get_args(['--dataset', 'imagenet', '--bt_loss', 'global'])
    assert ours.bt_loss == 'global'
    with pytest.raises(MixBTError, match=r'--batch_size 100 into --ref_world_size 8 equal groups'):
        main.get_args(['--dataset', 'imagenet', '--batch_size', '100'])
    args = main.get_args(['--dataset', 'imagenet', '--batch_size', '16', '--projector', '8-8'])
    with pytest.raises(MixBTError, match='by 3 processes'):
        methods.BarlowTwins.check_processes(args, 3)
    methods.BarlowTwins.check_processes(args, 4)


# ------------------------------------------------------------------ two gloo processes
def _two_process_worker(rank):
    from test_distributed import WORLD
    xa, xb, weight = step_inputs()
    share = slice(rank * R * ROWS // WORLD, (rank + 1) * R * ROWS // WORLD)
    method = reference_method(weight, R * ROWS)
    ddp = torch.nn.parallel.DistributedDataParallel(method)
    loss, _ = ddp([xa[share], xb[share]])
    backward_step(loss, torch.optim.SGD(method.parameters(), lr=0.0), grad_scale=1 / R)
    return loss.detach(), method.model.weight.grad


@pytest.mark.slow
def test_two_processes_holding_two_groups_each_give_the_original_loss_and_update():
    from test_distributed import run_two_processes
    xa, xb, weight = step_inputs()
    ref_loss, ref_grad = original_step(weight, xa, xb, *reference_draws(ROWS), R * ROWS)
    for loss, grad in run_two_processes(_two_process_worker):
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=0)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-14)


class BatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        from mixbt import nets
        self.bn, self.linear = nets.BatchNorm1d(DIM), nn.Linear(DIM, OUT)

    def forward(self, x):
        h = self.bn(x)
        return h, self.linear(h)


def test_lambda_mixup_zero_runs_the_mixed_pass_with_weight_zero():
    """The released lambda_mixup 0 run: the original's --is_mixup false cannot run (its zero
    regulariser is a CPU tensor added to a CUDA loss), so that run had the mixed pass on with weight
    0: the loss is Barlow Twins' alone, and BatchNorm's running statistics also see the mixed batch."""
    import main
    runs = {}
    for flags in (['--lambda_mixup', '0'], ['--is_mixup', 'false']):
        args = main.get_args(['--dataset', 'imagenet', '--batch_size', '16', '--projector', '8-8', *flags])
        torch.manual_seed(0)
        method = methods.METHODS[args.method].build(args, BatchNormNet())
        g = torch.Generator().manual_seed(2)
        loss, logs = method([torch.randn(16, DIM, generator=g) for _ in range(2)])
        runs[args.method] = method, loss, logs
    (mixed, loss, logs), (plain, plain_loss, _) = runs['mixbt'], runs['barlowtwins']
    assert mixed.is_mixup and mixed.mixup_loss_scale == 0 and logs['loss_mix'] == 0
    torch.testing.assert_close(loss, plain_loss)
    assert mixed.model.bn.num_batches_tracked == 3 and plain.model.bn.num_batches_tracked == 2
    assert not torch.allclose(mixed.model.bn.running_mean, plain.model.bn.running_mean)


def test_the_original_imagenet_command_line_trains_with_the_reference_loss():
    import main
    import main_imagenet
    args = main.get_args(main_imagenet.translate(['/data/imagenet']))
    assert (args.bt_loss, args.ref_world_size, args.batch_size, args.method) == ('imagenet_reference', 8, 1024, 'mixbt')
    zero = main.get_args(main_imagenet.translate(['/data/imagenet', '--lambda_mixup', '0']))
    assert zero.method == 'mixbt' and zero.mixup_loss_scale == 0
    assert main.get_args(main_imagenet.translate(['/d', '--bt_loss', 'global'])).bt_loss == 'global'


@pytest.mark.slow  # runs the launch script (with a stand-in python)
@pytest.mark.parametrize('env, flags, expected', [
    ({}, [], ('imagenet_reference', 8, 'mixbt', 0.5)),
    ({'LAMBDA_MIXUP': '0'}, [], ('imagenet_reference', 8, 'mixbt', 0.0)),
    ({}, ['--bt_loss', 'global', '--ref_world_size', '1'], ('global', 1, 'mixbt', 0.5))])
def test_imagenet_script_defaults_to_the_reference_loss(env, flags, expected, tmp_path):
    import main
    from test_scripts import program_calls, run
    proc, calls = run('scripts-pretrain-resnet50/imagenet.sh', tmp_path, {'NPROC': '1', **env}, flags)
    assert proc.returncode == 0, proc.stderr
    ((program, argv),) = program_calls(calls)
    args = main.get_args(argv)
    assert (args.bt_loss, args.ref_world_size, args.method, args.mixup_loss_scale) == expected
