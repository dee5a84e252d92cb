"""The baselines (SimCLR, BYOL, W-MSE, INTL, CW-RGP): each loss against an independent, naive
restatement of its formula (float64 loops, einsum, SVD instead of eigh, explicit inverses) for
the value and the gradients; the whitening and IterNorm spectra; BYOL's target; the per-method
defaults; 2-process gloo equality; every method end to end through main.main with resume."""
import copy
import itertools
import math
import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch
import torch.nn as nn

import fakedata
from mixbt import losses
import main
from mixbt import methods
from mixbt import checkpoints as C
import model as M
from mixbt import nets
from conftest import build_method
from mixbt.errors import MixBTError


def randn(*shape, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=grad)


def views_of(n, d, count=2, seed=0):
    return [randn(n, d, seed=seed + i) for i in range(count)]


def check_value_and_grads(ours, naive, inputs, wrt=None):
    v1, v2 = ours(*inputs), naive(*inputs)
    torch.testing.assert_close(v1, v2)
    wrt = inputs if wrt is None else wrt
    for g1, g2 in zip(torch.autograd.grad(v1, wrt), torch.autograd.grad(v2, wrt)):
        torch.testing.assert_close(g1, g2)


def cos(a, b):
    return sum(a[k] * b[k] for k in range(len(a))) / (a.pow(2).sum().sqrt() * b.pow(2).sum().sqrt())


def naive_nmse(a, b):
    return sum(2 - 2 * cos(a[n], b[n]) for n in range(a.shape[0])) / a.shape[0]


# ---------------------------------------------------------------------------- SimCLR
def naive_nt_xent(tau, *views):
    """-log softmax of the positive among [view j ; view i without itself], every ordered pair."""
    n, total, terms = views[0].shape[0], 0, 0
    for i, j in itertools.permutations(range(len(views)), 2):
        for a in range(n):
            logits = [cos(views[i][a], views[j][b]) / tau for b in range(n)]
            logits += [cos(views[i][a], views[i][b]) / tau for b in range(n) if b != a]
            total = total + torch.logsumexp(torch.stack(logits), 0) - cos(views[i][a], views[j][a]) / tau
            terms += 1
    return total / terms


@pytest.mark.parametrize('count', [2, 3])
def test_nt_xent_matches_naive_formula(count):
    check_value_and_grads(lambda *v: losses.nt_xent(v, 0.5), lambda *v: naive_nt_xent(0.5, *v),
                          views_of(6, 4, count, seed=count))


def test_nt_xent_two_views_equals_w_mse_repository_form():
    """contrastive_loss of htdt/self-supervised: (CE([l01, l00 - 1e9 I]) + CE([l10, l11 - 1e9 I])) / 2."""
    x0, x1 = [torch.nn.functional.normalize(v.detach(), dim=1) for v in views_of(8, 5, seed=7)]
    tau, eye, target = 0.5, torch.eye(8, dtype=torch.float64) * 1e9, torch.arange(8)
    ce = torch.nn.functional.cross_entropy
    reference = (ce(torch.cat([x0 @ x1.T / tau, x0 @ x0.T / tau - eye], 1), target)
                 + ce(torch.cat([x1 @ x0.T / tau, x1 @ x1.T / tau - eye], 1), target)) / 2
    torch.testing.assert_close(losses.nt_xent([x0, x1], tau), reference)


# ---------------------------------------------------------------------------- BYOL
def naive_byol(*tensors):
    v = len(tensors) // 2
    preds, targets = tensors[:v], [t.detach() for t in tensors[v:]]
    pairs = list(itertools.combinations(range(v), 2))
    return sum(naive_nmse(preds[i], targets[j]) + naive_nmse(preds[j], targets[i]) for i, j in pairs) / len(pairs)


@pytest.mark.parametrize('count', [2, 4])
def test_byol_loss_matches_naive_formula(count):
    preds, targets = views_of(5, 3, count, seed=1), views_of(5, 3, count, seed=11)
    check_value_and_grads(lambda *t: losses.byol_loss(t[:count], t[count:]), naive_byol, preds + targets, wrt=preds)


def test_byol_loss_gives_targets_no_gradient():
    """Targets computed from tensors that require gradients pass none back (stop-gradient)."""
    p, q = views_of(5, 3, 2, seed=3)
    losses.byol_loss([p, q], [p.exp(), q.tanh()]).backward()
    p2, q2 = [x.detach().clone().requires_grad_() for x in (p, q)]
    (naive_nmse(p2, q.tanh().detach()) + naive_nmse(q2, p.exp().detach())).backward()
    torch.testing.assert_close(p.grad, p2.grad)
    torch.testing.assert_close(q.grad, q2.grad)


# ---------------------------------------------------------------------------- W-MSE
def naive_cholesky_whiten(x, eps):
    n, d = x.shape
    mean = sum(x[k] for k in range(n)) / n
    xc = torch.stack([x[k] - mean for k in range(n)])
    cov = torch.einsum('ni,nj->ij', xc, xc) / (n - 1)
    inv_chol = torch.linalg.inv(torch.linalg.cholesky((1 - eps) * cov + eps * torch.eye(d, dtype=x.dtype)))
    return torch.stack([inv_chol @ xc[k] for k in range(n)])


def naive_sub_batch_loss(views, perms, w_size, whiten):
    total, pairs = 0, list(itertools.combinations(range(len(views)), 2))
    for k, perm in enumerate(perms):
        rows = [dict() for _ in views]
        for c in range(len(perm) // w_size):
            idx = [int(i) for i in perm[c * w_size:(c + 1) * w_size]]
            for v, view in enumerate(views):
                for pos, row in zip(idx, whiten(view[idx], k, c, v)):
                    rows[v][pos] = row
        white = [torch.stack([r[i] for i in range(len(perm))]) for r in rows]
        total = total + sum(naive_nmse(white[i], white[j]) for i, j in pairs)
    return total / (len(perms) * len(pairs))


def test_cholesky_whitening_output_has_identity_covariance():
    x = randn(64, 6, seed=5, grad=False) @ randn(6, 6, seed=6, grad=False) + 3
    z = losses.cholesky_whiten(x)
    zc = z - z.mean(0)
    torch.testing.assert_close(zc.T @ zc / 63, torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(z, naive_cholesky_whiten(x, 0.0))


def test_failed_cholesky_gives_nan_instead_of_a_per_step_host_check():
    """cholesky_ex is not checked on the host (a GPU sync); a covariance that is not positive
    definite (4 samples in 6 dimensions) makes the whitening, so the loss, NaN: the trainer's
    finiteness check stops the run."""
    x = randn(4, 6, seed=5)
    z = losses.cholesky_whiten(x)
    assert torch.isnan(z).all()
    z.sum().backward()
    assert torch.isnan(x.grad).all()


@pytest.mark.parametrize('count,w_iter,eps', [(2, 1, 0.0), (4, 2, 1e-2)])
def test_wmse_loss_matches_naive_formula(count, w_iter, eps):
    g = torch.Generator().manual_seed(count)
    perms = [torch.randperm(12, generator=g) for _ in range(w_iter)]
    check_value_and_grads(lambda *v: losses.wmse_loss(v, perms, 6, eps),
                          lambda *v: naive_sub_batch_loss(v, perms, 6, lambda x, *_: naive_cholesky_whiten(x, eps)),
                          views_of(12, 3, count, seed=20 + count))


# ---------------------------------------------------------------------------- CW-RGP
def naive_group_channel_whiten(x, shuffle, group, eps):
    """Per group, with explicit channel lists; ZCA through the SVD, as the original computes it."""
    n, dim = x.shape
    d = dim // group
    xc = torch.stack([x[k] - x[k].sum() / dim for k in range(n)])
    out = torch.zeros_like(x)
    for g in range(group):
        channels = [int(c) for c in shuffle[g * d:(g + 1) * d]]
        xg = xc[:, channels]
        cov = (1 - eps) * torch.einsum('nc,mc->nm', xg, xg) / (d - 1) + eps * torch.eye(n, dtype=x.dtype)
        u, s, _ = torch.linalg.svd(cov)
        out[:, channels] = u @ torch.diag(s.rsqrt()) @ u.T @ xg
    return out


def test_channel_whitening_makes_every_group_white():
    x = randn(6, 24, seed=8, grad=False)
    shuffle = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    z = losses.group_channel_whiten(x, shuffle, 3)
    for g in range(3):
        zg = z[:, shuffle[g * 8:(g + 1) * 8]]
        torch.testing.assert_close(zg @ zg.T / 7, torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(z, naive_group_channel_whiten(x, shuffle, 3, 0.0))


@pytest.mark.parametrize('count,w_iter,eps', [(2, 1, 0.0), (3, 2, 1e-3)])
def test_cwrgp_loss_matches_naive_formula(count, w_iter, eps):
    g = torch.Generator().manual_seed(count)
    perms = [torch.randperm(8, generator=g) for _ in range(w_iter)]
    shuffles = [[[torch.randperm(20, generator=g) for _ in range(count)] for _ in range(2)] for _ in range(w_iter)]
    naive_whiten = lambda x, k, c, i: naive_group_channel_whiten(x, shuffles[k][c][i], 2, eps)  # noqa: E731
    check_value_and_grads(lambda *v: losses.cwrgp_loss(v, perms, shuffles, 4, 2, eps),
                          lambda *v: naive_sub_batch_loss(v, perms, 4, naive_whiten),
                          views_of(8, 20, count, seed=30 + count))


# ---------------------------------------------------------------------------- INTL
def naive_iternorm(x, iters):
    n, dim = x.shape
    xc = torch.stack([x[k] - x[k].sum() / dim for k in range(n)])
    cov = torch.einsum('nc,mc->nm', xc, xc) / (dim - 1)
    trace = sum(cov[k, k] for k in range(n))
    p = torch.eye(n, dtype=x.dtype)
    for _ in range(iters):
        p = 1.5 * p - 0.5 * p @ p @ p @ (cov / trace)
    return torch.einsum('nm,mc->nc', p / trace.sqrt(), xc)


def naive_trace_loss(z):
    n, dim = z.shape
    total = 0
    for k in range(n):
        zc = z[k] - z[k].sum() / dim
        total = total + (sum(zc[c] ** 2 for c in range(dim)) / (dim - 1) - 1) ** 2
    return total


def naive_intl(iters, *views):
    beta = 0.01 * (math.log2(views[0].shape[0]) - 3)
    t = [naive_iternorm(v, iters) for v in views]
    return sum(naive_nmse(t[i], t[0]) + beta * (naive_trace_loss(t[i]) + naive_trace_loss(t[0]))
               for i in range(1, len(t))) / (len(t) - 1)


@pytest.mark.parametrize('count', [2, 3])
def test_intl_loss_matches_naive_formula(count):
    check_value_and_grads(lambda *v: losses.intl_loss(v, 4), lambda *v: naive_intl(4, *v),
                          views_of(16, 10, count, seed=40 + count))


def test_intl_beta_follows_batch_size():
    """beta = 0.01 (log2 N - 3): 0.05 at N = 256, the CIFAR recipe."""
    z = views_of(16, 10, seed=3)
    torch.testing.assert_close(losses.intl_loss(z, 4), losses.intl_loss(z, 4, beta=0.01))


@pytest.mark.parametrize('iters', [1, 4, 9])
def test_iterative_normalization_has_the_documented_spectrum(iters):
    """After T Newton steps the output's N x N matrix has eigenvalues lambda p_T(lambda)^2,
    p_0 = 1, p_k = 1.5 p - 0.5 lambda p^3, lambda the eigenvalues of S / tr(S)."""
    x = randn(12, 40, seed=9, grad=False) * torch.linspace(0.2, 3, 40, dtype=torch.float64)
    xc = x - x.mean(1, keepdim=True)
    cov = xc @ xc.T / 39
    lam = torch.linalg.eigvalsh(cov / cov.trace())
    p = torch.ones_like(lam)
    for _ in range(iters):
        p = 1.5 * p - 0.5 * lam * p ** 3
    z = losses.iterative_normalization(x, iters)
    torch.testing.assert_close(z.mean(1), torch.zeros(12, dtype=torch.float64))
    got = torch.linalg.eigvalsh(z @ z.T / 39)
    torch.testing.assert_close(got, torch.sort(lam * p ** 2).values)
    assert (got <= 1 + 1e-12).all()
    if iters < 9:
        assert (got < 0.99).any()  # not yet white: the spectrum is modulated, not flattened


def test_trace_loss_matches_naive_formula():
    check_value_and_grads(losses.trace_loss, naive_trace_loss, [randn(7, 9, seed=2)])


# ---------------------------------------------------------------------------- methods on a tiny model
class TinyModel(nn.Module):
    """features/f/g like model.Model, small enough for unit tests."""

    def __init__(self, emb=6):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 4, 3), nets.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.g = nets.mlp([4, 8, emb])

    def features(self, x):
        return self.f(x).flatten(1)


def images(n=6, count=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 8, 8, generator=g) for _ in range(count)]


def test_byol_target_gets_no_gradients_and_follows_the_ema_formula():
    torch.manual_seed(0)
    method = methods.BYOL(TinyModel(), emb=6, head_size=8)
    args = types.SimpleNamespace(batch_size=256, optimizer='adam', lr_shed='step', lr=1e-3, weight_decay=0)
    optimized = {id(p) for g in main.build_optimizer(args, method).param_groups for p in g['params']}
    assert all(id(p) in optimized for p in method.predictor.parameters())
    assert not any(id(p) in optimized for p in method.target.parameters())
    loss, _ = method(images())
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in method.target.parameters())
    assert all(p.grad is not None for p in itertools.chain(method.model.parameters(), method.predictor.parameters()))
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(torch.randn_like(p))
    before = [t.clone() for t in method.target.parameters()]
    progress = methods.Progress(epoch=3, epochs=10, step=7, steps_per_epoch=2)
    tau = 1 - (1 - 0.99) * (math.cos(math.pi * 3 / 10) + 1) / 2
    assert method.target_tau(progress) == tau
    assert method.target_tau(methods.Progress(0, 10, 0, 2)) == pytest.approx(0.99)
    method.after_step(progress)
    for t, old, s in zip(method.target.parameters(), before, method.model.parameters()):
        assert torch.equal(t, old * tau + s * (1 - tau))


FUSE_CASES = {name: (lambda m, fuse, name=name: build_method(name, m, fuse))
              for name, cls in methods.METHODS.items() if issubclass(cls, methods.Baseline)}


@pytest.mark.parametrize('name', sorted(FUSE_CASES))
def test_fused_views_equal_view_by_view_forwards(name):
    """One forward over all views with per-view BatchNorm (and the joint head of SimCLR, W-MSE,
    CW-RGP) gives the loss and every parameter gradient of the originals' separate forwards
    (float64; W-MSE and CW-RGP draw the same permutations from the same generator state)."""
    torch.manual_seed(1)
    fused = FUSE_CASES[name](TinyModel(), True).double()
    separate = FUSE_CASES[name](TinyModel(), False).double()
    separate.load_state_dict(fused.state_dict())
    separate.rng.set_state(fused.rng.get_state())
    x = [v.double() for v in images(count=3)]
    fused.n_views = separate.n_views = 3
    fused.configure_bn()
    separate.configure_bn()
    losses_ = []
    for method in (fused, separate):
        loss, _ = method(x)
        loss.backward()
        losses_.append(loss)
    torch.testing.assert_close(losses_[0], losses_[1])
    assert torch.equal(fused.rng.get_state(), separate.rng.get_state())  # drew the same number
    grads = {n: p.grad for n, p in separate.named_parameters()}
    assert any(g is not None for g in grads.values())
    for n, p in fused.named_parameters():
        if p.grad is None:
            assert grads[n] is None, n
        else:
            torch.testing.assert_close(p.grad, grads[n], msg=n)


def test_method_rng_is_part_of_the_saved_state():
    a = methods.CWRGP(TinyModel(emb=8), w_size=3, group=2, seed=4)
    x = images(n=6)
    a(x)  # advances the permutation generator
    b = methods.CWRGP(TinyModel(emb=8), w_size=3, group=2, seed=99)
    b.load_state_dict(a.state_dict())
    assert torch.equal(torch.randperm(50, generator=a.rng), torch.randperm(50, generator=b.rng))
    assert any(k.startswith('target.') for k in methods.BYOL(TinyModel(), 6, 8).state_dict())


def test_w_size_must_divide_the_batch():
    with pytest.raises(MixBTError, match='--w_size 4 must divide'):
        methods.WMSE(TinyModel(), w_size=4)(images(n=6))


def test_w_mse_refuses_sub_batches_with_a_singular_covariance():
    """w_size <= emb with w_eps 0: the Cholesky factorisation cannot succeed; said at once."""
    with pytest.raises(MixBTError, match='--w_size 6 must exceed the embedding size 6'):
        methods.WMSE(TinyModel(emb=6), w_size=6)(images(n=6))
    methods.WMSE(TinyModel(emb=6), w_size=6, w_eps=0.1)(images(n=6))  # shrinkage makes it definite


# ---------------------------------------------------------------------------- defaults
def resolved(argv, expected):
    args = main.get_args(argv)
    return {k: getattr(args, k) for k in expected}


@pytest.mark.parametrize('argv,expected', [
    (['--method', 'wmse', '--dataset', 'stl10'],
     dict(optimizer='adam', lr=2e-3, weight_decay=1e-6, lr_shed='step', warmup_steps=500, projector='1024-128',
          feature_dim=128, w_size=256, w_eps=1e-4, num_views=2)),
    (['--method', 'wmse', '--lr', '1e-3', '--num_samples', '4', '--emb', '32', '--w_eps', '0'],
     dict(lr=1e-3, num_views=4, projector='1024-32', w_size=128, w_eps=0.0)),
    (['--method', 'intl', '--dataset', 'cifar100'],
     dict(optimizer='sgd', lr=0.3, weight_decay=1e-4, lr_shed='cosine_exact', warmup_epochs=2, projector='2048-2048-2048')),
    (['--method', 'cwrgp', '--dataset', 'tiny_imagenet'],
     dict(projector='2048-1024', w_size=128, group=2, w_eps=0.0, optimizer='adam', lr=2e-3)),
    (['--method', 'simclr', '--projector', '512-32', '--weight_decay', '0'],
     dict(emb=32, feature_dim=32, head_size=1024, lr=3e-3, weight_decay=0.0, tau=0.5)),
    ([],  # the Barlow Twins family keeps main.py's defaults
     dict(lr=1e-3, lr_shed='step', optimizer='adam', weight_decay=1e-6, warmup_steps=0, warmup_epochs=10,
          projector=None, num_views=None)),
])
def test_recipes_fill_only_unset_flags(argv, expected):
    assert resolved(argv, expected) == expected


def test_barlow_twins_family_refuses_more_views():
    with pytest.raises(MixBTError, match='uses two views'):
        main.get_args(['--method', 'mixbt', '--num_views', '4'])


def test_step_schedule_has_linear_warm_up_steps():
    args = types.SimpleNamespace(lr_shed='step', optimizer='adam', epochs=100, warmup_steps=500)
    assert main.lr_factor(args, 0, 100) == pytest.approx(1 / 500)  # (k + 1) / 500, as the W-MSE repository
    assert main.lr_factor(args, 249, 100) == pytest.approx(0.5)
    assert main.lr_factor(args, 499, 100) == main.lr_factor(args, 600, 100) == 1.0
    assert main.lr_factor(args, 9600, 100) == pytest.approx(0.04)  # x0.2 at epochs 50 and 75


# ---------------------------------------------------------------------------- two processes
# The cases run in two fresh processes that import only torch and losses.
CASES = textwrap.dedent("""
    def two_process_cases(torch, losses):
        # name: (global inputs, loss of the local inputs); the same permutations on every rank
        g = torch.Generator().manual_seed(0)
        data = lambda count, d: [torch.randn(16, d, generator=g, dtype=torch.float64) for _ in range(count)]
        perms = [torch.randperm(16, generator=g) for _ in range(2)]
        shuffles = [[[torch.randperm(24, generator=g) for _ in range(3)] for _ in range(2)] for _ in range(2)]
        return {
            'simclr': (data(3, 5), lambda *v: losses.nt_xent(v, 0.5)),
            'byol': (data(4, 5), lambda *t: losses.byol_loss(t[:2], t[2:])),
            'wmse': (data(2, 3), lambda *v: losses.wmse_loss(v, perms, 8, 1e-3)),
            'cwrgp': (data(3, 24), lambda *v: losses.cwrgp_loss(v, perms, shuffles, 8, 2)),
            'intl': (data(2, 24), lambda *v: losses.intl_loss(v, 4)),
        }
""")
WORKER = CASES + textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import torch, torch.distributed as dist
    from mixbt import losses
    dist.init_process_group('gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    out = {}
    for name, (inputs, fn) in two_process_cases(torch, losses).items():
        n = inputs[0].shape[0] // world
        local = [x[rank * n:(rank + 1) * n].clone().requires_grad_() for x in inputs]
        value = fn(*local)
        value.backward()
        out[name] = (value.detach(), [x.grad for x in local])
    torch.save(out, sys.argv[2] + f'.{rank}')
    from mixbt import distributed
    distributed.cleanup()  # an exit with live gloo groups can abort ('terminate called without an active exception')
""")


def two_process_cases():
    namespace = {}
    exec(CASES, namespace)
    return namespace['two_process_cases'](torch, losses)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_losses_and_gradients_equal_one_process(tmp_path, repo_root):
    """Every rank returns the global loss; each rank's gradient is W times its share of the
    one-process gradient (DDP's averaging divides by W), as distributed.py documents."""
    (tmp_path / 'worker.py').write_text(WORKER)
    env = {**os.environ, 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(free_port()), 'WORLD_SIZE': '2',
           'OMP_NUM_THREADS': '1'}
    procs = [subprocess.Popen([sys.executable, str(tmp_path / 'worker.py'), repo_root, str(tmp_path / 'out')],
                              env={**env, 'RANK': str(r)}, stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()[-3000:]
    ranks = [torch.load(tmp_path / f'out.{r}') for r in range(2)]
    for name, (inputs, fn) in two_process_cases().items():
        full = [x.clone().requires_grad_() for x in inputs]
        value = fn(*full)
        grads = torch.autograd.grad(value, full, allow_unused=True)  # BYOL targets get none
        for r, out in enumerate(ranks):
            got_value, got_grads = out[name]
            torch.testing.assert_close(got_value, value.detach(), msg=f'{name}: loss on rank {r}')
            for g_full, g_rank in zip(grads, got_grads):
                if g_full is None:
                    assert g_rank is None
                else:
                    torch.testing.assert_close(g_rank / 2, g_full[r * 8:(r + 1) * 8],
                                               msg=f'{name}: gradient on rank {r}')


# ---------------------------------------------------------------------------- end to end
E2E = {
    'simclr': ['--emb', '8', '--head_size', '16'],
    'byol': ['--emb', '8', '--head_size', '16'],
    'wmse': ['--emb', '2', '--head_size', '16', '--w_size', '4', '--num_views', '3'],
    'cwrgp': ['--emb', '16', '--head_size', '16', '--w_size', '4', '--group', '2'],
    'intl': ['--emb', '16', '--head_size', '16'],
}


def test_every_registered_baseline_has_a_two_process_loss_case_and_an_end_to_end_run():
    """A new method is not silently left out of the two tests above and below: it names its case."""
    baselines = {n for n, cls in methods.METHODS.items() if issubclass(cls, methods.Baseline)}
    assert set(two_process_cases()) == baselines and set(E2E) == baselines


@pytest.fixture(scope='module')
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    fakedata.write_cifar(str(root))
    return str(root)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(E2E))
def test_method_trains_saves_a_loadable_backbone_and_resumes(name, cifar_root, tmp_path, monkeypatch):
    common = ['--dataset', 'cifar10', '--data_root', cifar_root, '--subset', '4', '--batch_size', '4', '--workers', '0',
              '--arch', 'resnet18', '--method', name, '--results_dir', str(tmp_path), '--k', '3', '--save_every', '0',
              '--seed', '2', *E2E[name]]
    run = main.main(common + ['--epochs', '1'])
    state = torch.load(os.path.join(run, 'last.pth'))
    assert math.isfinite(state['history'][0]['loss'])
    best = [os.path.join(run, f) for f in os.listdir(run) if f.endswith('_model.pth')]  # written if kNN top-1 > 0
    for saved in [torch.load(f) for f in best] + [state['model']]:
        f_state = {k[2:]: v for k, v in saved.items() if k.startswith('f.')}
        M.Model(8, 'resnet18', False).f.load_state_dict(f_state, strict=True)
    for path in best + [os.path.join(run, 'last.pth')]:
        C.load_backbone(path, 'cifar10', 'resnet18')

    seen = {}
    real_epoch = main.train_one_epoch

    def spy(args, epoch, ddp_method, method, *rest):
        seen.update({k: copy.deepcopy(v) for k, v in method.state_dict().items() if not k.startswith('model.')})
        return real_epoch(args, epoch, ddp_method, method, *rest)
    monkeypatch.setattr(main, 'train_one_epoch', spy)
    assert main.main(common + ['--epochs', '2', '--resume', run]) == run
    assert set(seen) == set(state['method']) and '_extra_state' in seen
    for key, value in state['method'].items():  # the method's state at resume is the saved one
        if isinstance(value, torch.Tensor):
            assert torch.equal(seen[key], value), key
        else:
            assert all(torch.equal(seen[key][k], v) for k, v in value.items()), key
    resumed = torch.load(os.path.join(run, 'last.pth'))
    assert resumed['epoch'] == 2 and all(math.isfinite(r['loss']) for r in resumed['history'])


# ---------------------------------------------------------------------------- launch scripts
def test_launch_scripts_pass_valid_flags_from_any_directory(tmp_path, repo_root):
    """Each ssl-sota/<method>/<data set>.sh, run from elsewhere with a stand-in python, calls
    main.py with flags that parse, for its method and data set, with consistent sub-batches."""
    stub = tmp_path / 'python'
    stub.write_text('#!/bin/sh\nprintf "%s\\0" "$@" > "$ARGS_OUT"\n')
    stub.chmod(0o755)
    scripts = sorted(os.path.join(d, f) for d, _, files in os.walk(os.path.join(repo_root, 'ssl-sota')) for f in files
                     if f.endswith('.sh'))
    datasets = ('cifar10', 'cifar100', 'stl10', 'tinyimagenet')
    expected = {f'{m}/{d}.sh' for m in ('simclr', 'byol', 'intl') for d in datasets}
    expected |= {f'{m}/{d}{s}.sh' for m in ('wmse', 'cwrgp') for d in datasets for s in ('', '-4views')}
    assert expected <= {os.path.relpath(s, os.path.join(repo_root, 'ssl-sota')) for s in scripts}
    for script in scripts:
        out = tmp_path / 'args'
        env = {**os.environ, 'PYTHON': str(stub), 'ARGS_OUT': str(out), 'EPOCHS': '7'}
        subprocess.run(['bash', script, '--seed', '3'], cwd=tmp_path, env=env, check=True)
        program, *argv = out.read_text().split('\0')[:-1]
        assert program == os.path.join(repo_root, 'main.py')
        args = main.get_args(argv)
        method, name = os.path.basename(os.path.dirname(script)), os.path.basename(script)[:-3]
        assert args.method == method and args.dataset == {'tinyimagenet': 'tiny_imagenet'}.get(
            name.split('-')[0], name.split('-')[0]), script
        assert (args.epochs, args.seed, args.num_views) == (7, 3, 4 if name.endswith('4views') else 2)
        assert args.data_root == os.path.join(repo_root, 'data')
        if method in ('wmse', 'cwrgp'):
            assert args.batch_size % args.w_size == 0 and args.emb % (args.group or 1) == 0, script
