"""What every method does around its loss: the loss runs in float32 outside the trainer's
autocast (methods.full_precision), and W-MSE / CW-RGP draw their permutations on the host
from the saved generator, in the original order, and send them to the device in one copy."""
import importlib

import pytest
import torch
import torch.nn.functional as F

from mixbt import losses
from mixbt import methods
from conftest import build_method
from test_baselines import TinyModel, images


class TinyEmbedder(TinyModel):
    """TinyModel with model.Model's forward: (features, L2-normalised projector output)."""

    def forward(self, x):
        h = self.features(x)
        return h, F.normalize(self.g(h), dim=-1)


@pytest.mark.parametrize('kind', ['mixbt', 'barlowtwins', 'hsic'])
def test_barlow_twins_family_loss_is_float32_outside_autocast(kind):
    """Under bf16 autocast the returned losses are float32 and equal the loss of the same
    (upcast) embeddings computed outside autocast: the cross-correlations are not bf16."""
    torch.manual_seed(0)
    hsic, mixup = kind == 'hsic', kind == 'mixbt'
    method = methods.BarlowTwins(TinyEmbedder(emb=16), lmbda=0.01, corr_neg_one=hsic, is_mixup=mixup)
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    method.draw_mixup = lambda n, device: (0.3, perm)
    embedded = []
    real_embed = method.embed
    method.embed = lambda views, model=None: embedded.append(real_embed(views, model)) or embedded[-1]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss, logs = method(images(n=6))
    (z,) = embedded
    assert all(v.dtype == torch.float32 for v in z)
    assert loss.dtype == logs['loss_bt'].dtype == logs['loss_mix'].dtype == torch.float32

    za, zb, *zm = [losses.standardize(v.detach()) for v in z]
    c = losses.cross_correlation(za, zb)
    assert c.dtype == torch.float32
    expected_bt = losses.barlow_twins_loss(c, 0.01, hsic)
    expected_mix = 4.0 * 0.01 * losses.mixup_regulariser(zm[0], za, zb, perm, 0.3) if mixup else torch.tensor(0.)
    torch.testing.assert_close(logs['loss_bt'], expected_bt)
    torch.testing.assert_close(logs['loss_mix'], expected_mix)
    torch.testing.assert_close(loss, expected_bt + expected_mix)


# Every public function of losses.py (a new method's loss included): spied on below.
LOSS_FUNCTIONS = tuple(name for name, fn in vars(losses).items()
                       if callable(fn) and getattr(fn, '__module__', None) == losses.__name__ and not name.startswith('_'))
ALL_METHODS = {name: (lambda m, name=name: build_method(name, m)) for name in methods.METHODS}


@pytest.mark.parametrize('name', sorted(ALL_METHODS))
def test_every_method_calls_its_loss_in_float32_with_autocast_off(name, monkeypatch):
    seen = []
    for fn in LOSS_FUNCTIONS:
        def spy(*args, _real=getattr(losses, fn), _fn=fn, **kwargs):
            out = _real(*args, **kwargs)
            for t in (out if isinstance(out, tuple) else (out,)):
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    seen.append((_fn, torch.is_autocast_enabled('cpu'), t.dtype))
            return out
        monkeypatch.setattr(losses, fn, spy)
    torch.manual_seed(0)
    method = ALL_METHODS[name](TinyEmbedder())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss, _ = method(images(n=6))
    assert seen and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(not autocast and dtype == torch.float32 for _, autocast, dtype in seen), seen


@pytest.mark.parametrize('name', ['wmse', 'cwrgp'])
def test_a_step_sends_the_original_permutation_stream_in_one_copy(name, monkeypatch):
    """One host-to-device copy per step; the permutations are those of the original per-call
    loop (sub-batch permutation k, then channel permutations [k][c][i]) from the seeded
    generator, so every rank draws the same ones and older checkpoints resume the same stream."""
    copies, drawn = [], {}
    real_copy = methods.to_device
    module = importlib.import_module(f'mixbt.methods.{name}')
    monkeypatch.setattr(module, 'to_device', lambda t, device: copies.append(t) or real_copy(t, device))
    real_loss = getattr(losses, f'{name}_loss')

    def spy(views, perms, *rest, **kwargs):
        drawn.update(perms=perms, rest=rest)
        return real_loss(views, perms, *rest, **kwargs)
    monkeypatch.setattr(losses, f'{name}_loss', spy)
    torch.manual_seed(0)
    method = build_method(name, TinyModel())  # w_iter 2, w_size 3: 2 sub-batches of 6 samples, emb 6
    method(images(n=6))
    assert len(copies) == 1

    g = torch.Generator().manual_seed(0)
    for k in range(method.w_iter):
        assert torch.equal(drawn['perms'][k], torch.randperm(6, generator=g))
        if name == 'cwrgp':
            shuffles = drawn['rest'][0]
            for c in range(2):
                for i in range(2):
                    assert torch.equal(shuffles[k][c][i], torch.randperm(6, generator=g))
    assert torch.equal(method.rng.get_state(), g.get_state())


def test_to_device_copies_from_pinned_memory_without_blocking():
    """The CUDA branch, with a stand-in tensor (no GPU here): pinned, then non_blocking."""
    class HostTensor:
        pinned, copied = False, None

        def pin_memory(self):
            self.pinned = True
            return self

        def to(self, device, non_blocking=False):
            assert self.pinned, 'a pageable source makes the copy synchronous'
            self.copied = (device, non_blocking)
            return self

    t = methods.to_device(HostTensor(), torch.device('cuda', 0))
    assert t.copied == (torch.device('cuda', 0), True)
    cpu = torch.arange(3)
    assert methods.to_device(cpu, torch.device('cpu')) is cpu


@pytest.mark.parametrize('name', sorted(ALL_METHODS))
def test_compiled_step_does_not_recompile_as_alpha_and_step_change(name, monkeypatch):
    """--compile: a step's random draws (Mix-BT's alpha, permutations) and the step counter must not
    be baked into the graph, or dynamo recompiles at every step and then falls back to eager.
    The 'eager' backend traces exactly as inductor would, without compiling kernels."""
    import torch._dynamo
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, 'error_on_recompile', True)
    torch.manual_seed(0)
    method = ALL_METHODS[name](TinyEmbedder())
    compiled = torch.compile(method, backend='eager')
    for step in range(3):
        progress = methods.Progress(0, 10, step, 100)
        loss, _ = compiled(images(n=6, count=method.n_views, seed=step), progress)
        loss.backward()
        method.after_step(progress)
        assert torch.isfinite(loss)
    torch._dynamo.reset()
