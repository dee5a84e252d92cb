"""Each loss against an independent, naive restatement of its formula (float64 loops/einsum),
for the value and for the gradients (docs/protocol.md section 1)."""
import itertools

import pytest
import torch

from mixbt import losses


def naive_standardize(z):
    n = z.shape[0]
    mean = sum(z[i] for i in range(n)) / n
    var = sum((z[i] - mean) ** 2 for i in range(n)) / (n - 1)
    return torch.stack([(z[i] - mean) / var.sqrt() for i in range(n)])


def naive_cc(a, b):
    """C_ij = sum_n a_ni b_nj / N, with explicit loops over i, j."""
    n, d = a.shape
    return torch.stack([torch.stack([sum(a[k, i] * b[k, j] for k in range(n)) / n for j in range(d)])
                        for i in range(d)])


def naive_bt(c, lmbda, target_off):
    d = c.shape[0]
    on = sum((c[i, i] - 1) ** 2 for i in range(d))
    off = sum((c[i, j] - target_off) ** 2 for i, j in itertools.product(range(d), range(d)) if i != j)
    return on + lmbda * off


def embeddings(n=10, d=5, seed=0, views=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(views)]


def grads(value, inputs):
    return torch.autograd.grad(value, inputs)


def test_standardize_is_mean_zero_unbiased_std_one():
    (z,) = embeddings(views=1)
    out = losses.standardize(z)
    torch.testing.assert_close(out, naive_standardize(z))
    torch.testing.assert_close(out.mean(0), torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(out.std(0), torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize('corr_neg_one', [False, True])
def test_barlow_twins_and_hsic_match_naive_formula(corr_neg_one):
    za, zb = embeddings(views=2)
    lmbda = 0.0078125

    def ours(a, b):
        c = losses.cross_correlation(losses.standardize(a), losses.standardize(b))
        return losses.barlow_twins_loss(c, lmbda, corr_neg_one)

    def naive(a, b):
        return naive_bt(naive_cc(naive_standardize(a), naive_standardize(b)), lmbda, -1.0 if corr_neg_one else 0.0)

    v1, v2 = ours(za, zb), naive(za, zb)
    torch.testing.assert_close(v1, v2)
    for g1, g2 in zip(grads(v1, [za, zb]), grads(v2, [za, zb])):
        torch.testing.assert_close(g1, g2)


def test_hsic_target_changes_only_off_diagonal():
    c = torch.eye(4, dtype=torch.float64)
    assert losses.barlow_twins_loss(c, 1.0, False).item() == 0
    # identity: on-diagonal terms 0, twelve off-diagonal terms (0 + 1)^2
    assert losses.barlow_twins_loss(c, 0.5, True).item() == pytest.approx(0.5 * 12)


def test_mixup_target_matrices_match_paper_formula():
    zm, za, zb = [losses.standardize(z.detach()) for z in embeddings()]
    perm = torch.tensor([3, 0, 9, 1, 2, 8, 7, 4, 6, 5])
    alpha = 0.3
    c_ma, c_mb, c_ma_gt, c_mb_gt = losses.mixup_cross_correlations(zm, za, zb, perm, alpha)
    assert c_ma.dtype == torch.float64
    n, d = za.shape
    for i, j in itertools.product(range(d), range(d)):
        assert c_ma[i, j] == pytest.approx(sum(zm[k, i] * za[k, j] for k in range(n)).item() / n)
        assert c_mb[i, j] == pytest.approx(sum(zm[k, i] * zb[k, j] for k in range(n)).item() / n)
        gt_a = sum(alpha * za[k, i] * za[k, j] + (1 - alpha) * zb[perm[k], i] * za[k, j] for k in range(n)) / n
        gt_b = sum(alpha * za[k, i] * zb[k, j] + (1 - alpha) * zb[perm[k], i] * zb[k, j] for k in range(n)) / n
        assert c_ma_gt[i, j] == pytest.approx(gt_a.item())
        assert c_mb_gt[i, j] == pytest.approx(gt_b.item())


def test_mixup_regulariser_value_and_gradients_match_paper_formula():
    raw = embeddings(n=12, d=6, seed=3)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    alpha = 0.62

    def ours(zm, za, zb):
        return losses.mixup_regulariser(*[losses.standardize(z) for z in (zm, za, zb)], perm, alpha)

    def naive(zm, za, zb):
        zm, za, zb = naive_standardize(zm), naive_standardize(za), naive_standardize(zb)
        zbp = zb[perm]
        c_ma, c_mb = naive_cc(zm, za), naive_cc(zm, zb)
        c_ma_gt = alpha * naive_cc(za, za) + (1 - alpha) * naive_cc(zbp, za)
        c_mb_gt = alpha * naive_cc(za, zb) + (1 - alpha) * naive_cc(zbp, zb)
        return ((c_ma - c_ma_gt) ** 2).sum() + ((c_mb - c_mb_gt) ** 2).sum()

    v1, v2 = ours(*raw), naive(*raw)
    torch.testing.assert_close(v1, v2)
    for g1, g2 in zip(grads(v1, raw), grads(v2, raw)):
        torch.testing.assert_close(g1, g2)


def test_mixup_regulariser_is_zero_when_embedding_is_linear_in_input():
    """The paper's assumption: if z(x_m) = alpha z_a + (1-alpha) z_b[perm] exactly (before
    standardisation, with matching statistics), the regulariser vanishes."""
    za, zb = [losses.standardize(z.detach()) for z in embeddings(views=2)]
    perm = torch.arange(10).flip(0)
    alpha = 0.4
    zm = alpha * za + (1 - alpha) * zb[perm]
    assert losses.mixup_regulariser(zm, za, zb, perm, alpha).item() == pytest.approx(0, abs=1e-20)


def test_off_diagonal_lists_every_off_diagonal_entry_once():
    c = torch.arange(16.).view(4, 4)
    expected = [c[i, j].item() for i in range(4) for j in range(4) if i != j]
    assert losses.off_diagonal(c).tolist() == expected


def test_group_standardize_standardises_each_block_of_rows_on_its_own():
    """The original ImageNet script's statistics: each GPU's rows on their own (unbiased std)."""
    (z,) = embeddings(n=12, d=4, seed=5, views=1)
    out = losses.group_standardize(z, 3)
    naive = torch.cat([naive_standardize(z[i:i + 4]) for i in (0, 4, 8)])
    torch.testing.assert_close(out, naive)
    for g1, g2 in zip(grads(out.pow(3).sum(), [z]), grads(naive.pow(3).sum(), [z])):
        torch.testing.assert_close(g1, g2)
    torch.testing.assert_close(losses.group_standardize(z, 1), losses.standardize(z))


def test_cross_correlation_divides_by_the_given_batch():
    a, b = [z.detach() for z in embeddings(n=6, d=3, views=2)]
    torch.testing.assert_close(losses.cross_correlation(a, b, n=24), naive_cc(a, b) * 6 / 24)
