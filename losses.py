"""Loss functions. Pure: tensors in, scalar tensor out; each tested against a naive
restatement of its formula in tests/test_losses.py.

Batch statistics and cross-correlation matrices are sums over the GLOBAL batch: under
torch.distributed they are reduced with an autograd-aware all-reduce (see distributed.py),
so loss and gradients equal one process on the whole batch. Every rank must call these
functions with the same number of samples.
"""
import torch
import torch.nn.functional as F

from distributed import all_gather_grad, all_reduce_sum, world_size


def global_batch_size(z):
    return z.shape[0] * world_size()


def standardize(z):
    """(z - mean) / std per dimension over the global batch, unbiased std (REFERENCE.md 1)."""
    n = global_batch_size(z)
    mean = all_reduce_sum(z.sum(0)) / n
    centred = z - mean
    var = all_reduce_sum(centred.pow(2).sum(0)) / (n - 1)
    return centred / var.sqrt()


def cross_correlation(a, b):
    """C = a^T b / N over the global batch (a, b standardised embeddings, N x D)."""
    return all_reduce_sum(a.T @ b) / global_batch_size(a)


def off_diagonal(c):
    n, m = c.shape
    assert n == m
    return c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def barlow_twins_loss(c, lmbda, corr_neg_one=False):
    """sum_i (C_ii - 1)^2 + lmbda * sum_{i!=j} (C_ij - t)^2, t = 0 (Barlow Twins) or -1 (HSIC)."""
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off = off_diagonal(c)
    off_diag = (off + 1).pow(2).sum() if corr_neg_one else off.pow(2).sum()
    return on_diag + lmbda * off_diag


def mixup_regulariser(zm, za, zb, perm, alpha):
    """||C_ma - C_ma_gt||_F^2 + ||C_mb - C_mb_gt||_F^2 of Mixed Barlow Twins (unscaled).

    All inputs standardised; zm embeds x_m = alpha x_a + (1 - alpha) x_b[perm]. Every
    matrix is linear in its left factor, so C_ma - C_ma_gt = (zm - alpha za - (1-alpha)
    zb[perm])^T za / N and likewise for b: two D x D products instead of six, same value
    and gradients as the paper's formula (nothing is detached, as in the reference)."""
    residual = zm - alpha * za - (1 - alpha) * zb[perm]
    return cross_correlation(residual, za).pow(2).sum() + cross_correlation(residual, zb).pow(2).sum()


def mixup_cross_correlations(zm, za, zb, perm, alpha):
    """The four matrices of the paper, literally: C_ma, C_mb and their targets
    C_ma_gt = alpha za^T za / N + (1-alpha) zb[perm]^T za / N,
    C_mb_gt = alpha za^T zb / N + (1-alpha) zb[perm]^T zb / N (for diagnostics and tests)."""
    zb_perm = zb[perm]
    c_ma, c_mb = cross_correlation(zm, za), cross_correlation(zm, zb)
    c_ma_gt = alpha * cross_correlation(za, za) + (1 - alpha) * cross_correlation(zb_perm, za)
    c_mb_gt = alpha * cross_correlation(za, zb) + (1 - alpha) * cross_correlation(zb_perm, zb)
    return c_ma, c_mb, c_ma_gt, c_mb_gt


# ----------------------------------------------------------------------------------------
# Baselines (REFERENCE.md section 6)
# ----------------------------------------------------------------------------------------
def nt_xent(views, tau=0.5):
    """SimCLR's NT-Xent over all views of the global batch (W-MSE repository's form).

    views: list of V (N x D) L2-normalised embeddings. For each ordered pair of different
    views (i, j): cross-entropy of sample n in view i against all 2N candidates (view j and
    view i, self-similarity masked), the positive being sample n of view j. Averaged over
    pairs and samples."""
    views = [all_gather_grad(v) for v in views]
    n = views[0].shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=views[0].device)
    total, pairs = 0.0, 0
    for i in range(len(views)):
        for j in range(len(views)):
            if i == j:
                continue
            cross = views[i] @ views[j].T / tau                                   # positives on the diagonal
            intra = (views[i] @ views[i].T / tau).masked_fill(eye, float('-inf'))  # self masked
            logits = torch.cat([cross, intra], dim=1)
            target = torch.arange(n, device=logits.device)
            total = total + F.cross_entropy(logits, target)
            pairs += 1
    return total / pairs


def normalized_mse(p, z):
    """2 - 2 cos(p, z), averaged over samples (BYOL / W-MSE)."""
    return (2 - 2 * F.cosine_similarity(p, z, dim=-1)).mean()
