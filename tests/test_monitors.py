"""The overfitting monitors (mixbt/monitors.py) against independent statements of their formulas,
and the whole overfitting_metrics call: labelled, label-free, and on two processes."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixbt import data as datasets
from mixbt import knn, monitors

CPU = torch.device('cpu')
MEAN, STD = (0.5,) * 3, (0.25,) * 3
RECIPE = datasets.Recipe(16)


def test_effective_rank_of_known_singular_values():
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    s = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.5, 0.0] + [0.0] * 6, dtype=torch.float64)
    x = u[:, :12] @ torch.diag(s) @ v.T
    p = [si / 10.0 for si in (5.0, 3.0, 1.0, 0.5, 0.5)]
    assert monitors.effective_rank(x) == pytest.approx(math.exp(-sum(pi * math.log(pi) for pi in p)), rel=1e-9)
    flat = u[:, :12] @ torch.diag(torch.tensor([2.0] * 4 + [0.0] * 8, dtype=torch.float64)) @ v.T
    assert monitors.effective_rank(flat) == pytest.approx(4.0, rel=1e-9)  # r equal values: rank r
    assert monitors.effective_rank(torch.zeros(5, 3)) == 0.0


def test_leave_one_out_knn_never_counts_the_sample_itself():
    """Each sample twice: its duplicate is its nearest neighbour, so k=1 gets every one right;
    a sample alone in its class never finds its class (it would, matched to itself)."""
    g = torch.Generator().manual_seed(1)
    points = F.normalize(torch.randn(12, 16, generator=g), dim=1)
    bank, labels = torch.cat([points, points]), torch.arange(12).repeat(2) % 4
    assert monitors.leave_one_out_top1(bank, labels, 4, k=1) == 100.0
    alone = F.normalize(torch.randn(1, 16, generator=g), dim=1)
    bank, labels = torch.cat([bank, alone]), torch.cat([labels, torch.tensor([4])])
    assert monitors.leave_one_out_top1(bank, labels, 5, k=1) == pytest.approx(24 / 25 * 100)
    assert monitors.leave_one_out_top1(bank, labels, 5, k=200) < 100.0  # k > bank - 1: all the others


def naive_cross_correlation_mass(za, zb):
    n, d = za.shape
    cols = []
    for z in (za, zb):
        std = []
        for j in range(d):
            mean = sum(z[i, j].item() for i in range(n)) / n
            sd = math.sqrt(sum((z[i, j].item() - mean) ** 2 for i in range(n)) / (n - 1))
            std.append([(z[i, j].item() - mean) / sd if sd > 0 else 0.0 for i in range(n)])
        cols.append(std)
    c = [[sum(cols[0][a][i] * cols[1][b][i] for i in range(n)) / n for b in range(d)] for a in range(d)]
    off = sum(c[a][b] ** 2 for a in range(d) for b in range(d) if a != b) / (d * (d - 1))
    return off, sum(c[a][a] for a in range(d)) / d


def test_offdiag_mass_matches_a_naive_loop():
    g = torch.Generator().manual_seed(2)
    za = torch.randn(20, 6, generator=g)
    zb = za @ torch.randn(6, 6, generator=g) + 0.3 * torch.randn(20, 6, generator=g)
    za[:, 4] = 1.5  # a collapsed dimension: no correlation at all
    mass, diag = monitors.cross_correlation_mass(za, zb)
    expected = naive_cross_correlation_mass(za, zb)
    assert (mass, diag) == pytest.approx(expected, rel=1e-9)
    same = monitors.cross_correlation_mass(zb, zb)  # identical views: diagonal 1 (unbiased std, C = (N-1)/N)
    assert same[1] == pytest.approx(19 / 20)


def test_held_out_views_depend_on_the_seed_only():
    images = torch.randint(0, 256, (40, 16, 16, 3), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    a = monitors.held_out_views(images, RECIPE, MEAN, STD, CPU, pairs=8, seed=5, batch_size=3)
    b = monitors.held_out_views(images.numpy(), RECIPE, MEAN, STD, CPU, pairs=8, seed=5, batch_size=3)
    other = monitors.held_out_views(images, RECIPE, MEAN, STD, CPU, pairs=8, seed=6, batch_size=3)
    assert a[0].shape == (8, 3, 16, 16) and not torch.equal(a[0], a[1])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], other[0])
    assert len(monitors.held_out_views(images, RECIPE, MEAN, STD, CPU, pairs=100)[0]) == 40


class TinyModel(nn.Module):
    """The small-data model's layout: backbone f, projector g (BatchNorm: eval mode matters)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.f = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.g = nn.Sequential(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 6))


def tiny_data():
    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (64, 16, 16, 3), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (64,), generator=g)
    return (images[:40], labels[:40]), (images[40:], labels[40:])


def tiny_metrics(memory, test, **kw):
    model = TinyModel()
    return monitors.overfitting_metrics(model.f, model, memory, test, MEAN, STD, 3, CPU, RECIPE, k=5, pairs=16,
                                        batch_size=7, **kw)


def test_overfitting_metrics_labelled_and_label_free():
    model = TinyModel()
    memory, test = tiny_data()
    out = monitors.overfitting_metrics(model.f, model, memory, test, MEAN, STD, 3, CPU, RECIPE, k=5, pairs=16,
                                       batch_size=7)
    assert model.training and model.f.training and model.g.training  # modes restored
    plain = knn.knn_metrics(model.f, memory, test, MEAN, STD, 3, CPU, k=5)
    assert set(out) == set(plain) | set(monitors.KEYS)
    assert out['knn_top1'] == plain['knn_top1']
    bank = knn.embed_images(model.f, memory[0], MEAN, STD, CPU)
    assert out['knn_train_top1'] == monitors.leave_one_out_top1(bank, memory[1], 3, k=5)
    assert out['gen_gap'] == out['knn_train_top1'] - out['knn_top1']
    feats = knn.embed_images(model.f, test[0], MEAN, STD, CPU, normalise=False)
    assert out['erank_features'] == pytest.approx(monitors.effective_rank(feats))
    model.eval()
    with torch.no_grad():
        embeddings = F.normalize(model.g(feats), dim=-1)  # the model's forward normalises g's output
    assert out['erank_embeddings'] == pytest.approx(monitors.effective_rank(embeddings))
    assert 0 < out['offdiag_mass'] < 1 and -1 <= out['ondiag_mean'] <= 1
    for free in (tiny_metrics(None, (test[0], None)), tiny_metrics((memory[0], None), test)):
        assert free == pytest.approx({k: out[k] for k in monitors.LABEL_FREE_KEYS})


def test_features_return_matches_knn_metrics():
    memory, test = tiny_data()
    out, (bank, tested) = tiny_metrics(memory, test, features=True)
    model = TinyModel()
    _, (bank2, tested2) = knn.knn_metrics(model.f, memory, test, MEAN, STD, 3, CPU, k=5, features=True)
    torch.testing.assert_close(bank[0], bank2[0])
    torch.testing.assert_close(tested[0], tested2[0])
    with pytest.raises(ValueError, match='needs labels'):
        tiny_metrics(None, (test[0], None), features=True)


def _two_process_worker(rank):
    return tiny_metrics(*tiny_data())


@pytest.mark.slow
def test_two_processes_compute_the_single_process_numbers():
    from test_distributed import run_two_processes
    expected = tiny_metrics(*tiny_data())
    outs = run_two_processes(_two_process_worker)
    assert outs[0] == outs[1]  # every rank logs the same numbers
    assert outs[0] == pytest.approx(expected, rel=1e-5, abs=1e-6)
