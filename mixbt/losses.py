"""Loss functions. Pure: tensors in, scalar tensor out; each tested against a naive
restatement of its formula in tests/test_losses.py.

Batch statistics and cross-correlation matrices are sums over the GLOBAL batch: under
torch.distributed they are reduced with an autograd-aware all-reduce (see distributed.py),
so loss and gradients equal one process on the whole batch. Every rank must call these
functions with the same number of samples.
"""
import itertools
import math

import torch
import torch.nn.functional as F

from mixbt.distributed import all_gather_grad, all_reduce_sum, rank, world_size


def global_batch_size(z):
    return z.shape[0] * world_size()


def standardize(z):
    """(z - mean) / std per dimension over the global batch, unbiased std (docs/protocol.md section 1)."""
    n = global_batch_size(z)
    mean = all_reduce_sum(z.sum(0)) / n
    centred = z - mean
    var = all_reduce_sum(centred.pow(2).sum(0)) / (n - 1)
    return centred / var.sqrt()


def cross_correlation(a, b, n=None):
    """C = a^T b / n summed over the processes (a, b standardised embeddings, N x D); n defaults to
    the global batch (the original ImageNet script divides by its full --batch-size instead)."""
    return all_reduce_sum(a.T @ b) / (global_batch_size(a) if n is None else n)


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
# The original ImageNet script's loss (--bt_loss imagenet_reference, docs/protocol.md section 1)
# ----------------------------------------------------------------------------------------
# Each of its 8 GPUs standardised its own 128 rows, drew its own alpha and permutation, divided its
# matrices by the full batch (1024) and summed them over the GPUs. Here the global batch is split
# into those groups of consecutive rows, whatever the number of processes holding them.
def group_standardize(z, groups):
    """Each of `groups` equal blocks of consecutive rows standardised on its own, (z - mean) / std
    with the unbiased std (torch's z.std(dim=0), as each GPU of the original computed it)."""
    blocks = z.unflatten(0, (groups, -1))
    return ((blocks - blocks.mean(1, keepdim=True)) / blocks.std(1, keepdim=True)).flatten(0, 1)


def reference_mixup_regulariser(zm, za, zb, perm, alpha, n):
    """||C_ma - C_ma_gt||_F^2 + ||C_mb - C_mb_gt||_F^2 with the original ImageNet script's targets:
    C_ma_gt = alpha za^T za + (1-alpha) zb[perm]^T za, C_mb_gt = alpha zb^T zb + (1-alpha) zb[perm]^T zb
    (not the paper's alpha za^T zb), every matrix divided by n and summed over the groups.
    `alpha` holds each row's group's alpha (N x 1); `perm` permutes rows within each group. Residual
    form, as mixup_regulariser: C_m* - C_m*_gt = (zm - alpha z* - (1-alpha) zb[perm])^T z* / n."""
    mixed = zm - (1 - alpha) * zb[perm]
    return (cross_correlation(mixed - alpha * za, za, n).pow(2).sum()
            + cross_correlation(mixed - alpha * zb, zb, n).pow(2).sum())


# ----------------------------------------------------------------------------------------
# Baselines (docs/protocol.md section 6)
# ----------------------------------------------------------------------------------------
# Tested in tests/test_baselines.py. Every baseline loss takes this rank's (N x D) tensors
# and returns the loss of the GLOBAL batch, the same value on every rank. SimCLR: this
# rank's rows against every rank's candidates (all_gather_grad), summed with all_reduce_sum.
# BYOL: per-sample terms averaged with all_reduce_sum. W-MSE, INTL, CW-RGP: their whitening
# statistics span the global batch (or its sub-batches), so the views are gathered
# (all_gather_grad) and every rank computes the whole loss, as INTL's own FullGatherLayer
# does. Gradients follow the convention above (each rank: W x its share).
def _cosine(p, z):
    """Row-wise cosine similarity, as the originals compute it: F.normalize, then the dot product."""
    return (F.normalize(p, dim=-1) * F.normalize(z, dim=-1)).sum(-1)


def normalized_mse(p, z):
    """2 - 2 cos(p, z), averaged over the rows given (the W-MSE repository's norm_mse_loss,
    also INTL's and CW-RGP's). Local: the callers pass global (gathered) tensors."""
    return (2 - 2 * _cosine(p, z)).mean()


def nt_xent(views, tau=0.5):
    """SimCLR's NT-Xent over V views (Chen et al. 2020), as the W-MSE repository's
    `contrastive_loss` (htdt/self-supervised methods/contrastive.py), generalised to the
    global batch: for each ordered pair of views (i, j), sample n of view i is classified
    among the 2N' candidates [view j ; view i without itself] (N' = global batch), the
    positive being sample n of view j; cosine similarities / tau. The mean over the N'
    samples and the V(V-1) ordered pairs (the original: the mean of both directions of
    each unordered pair, averaged over pairs: the same number)."""
    views = [F.normalize(v, dim=-1) for v in views]
    n, world = views[0].shape[0], world_size()
    candidates = [all_gather_grad(v) for v in views]
    target = torch.arange(n, device=views[0].device) + rank() * n   # this rank's rows in the global batch
    self_mask = F.one_hot(target, n * world).bool()
    total = 0
    for i, j in itertools.permutations(range(len(views)), 2):
        cross = views[i] @ candidates[j].T
        intra = (views[i] @ candidates[i].T).masked_fill(self_mask, float('-inf'))
        total = total + F.cross_entropy(torch.cat([cross, intra], dim=1) / tau, target, reduction='sum')
    pairs = len(views) * (len(views) - 1)
    return all_reduce_sum(total) / (pairs * n * world)


def byol_loss(predictions, targets):
    """BYOL (Grill et al. 2020) as the W-MSE repository computes it (methods/byol.py): for
    every unordered pair of views i < j, nmse(p_i, t_j) + nmse(p_j, t_i), summed and divided
    by the number of pairs (two views: the sum of both directions, range [0, 8]);
    nmse = 2 - 2 cos averaged over the global batch. Targets are constants (stop-gradient)."""
    total = 0
    for i, j in itertools.combinations(range(len(predictions)), 2):
        for p, t in ((predictions[i], targets[j]), (predictions[j], targets[i])):
            total = total + (2 - 2 * _cosine(p, t.detach())).sum()
    return all_reduce_sum(total) / (global_batch_size(predictions[0]) * math.comb(len(predictions), 2))


def cholesky_whiten(x, eps=0.0):
    """W-MSE whitening of one batch (Ermolov et al. 2021; htdt/self-supervised
    methods/whitening.py `Whitening2d`): X_c = X - mean, S = X_cᵀX_c/(n-1) (D x D),
    S' = (1-eps)·S + eps·I = LLᵀ (Cholesky), output X_c L⁻ᵀ, whose covariance is I.
    x: (..., n, D), every leading index a separate batch.

    cholesky_ex, not cholesky: the latter checks its error code on the host, a GPU sync at
    every call. A failed factorisation (S' not positive definite) is checked lazily instead:
    it makes that batch's output NaN, and the trainer stops on the non-finite loss at its
    next check."""
    xc = x - x.mean(-2, keepdim=True)
    cov = xc.mT @ xc / (x.shape[-2] - 1)
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    chol, info = torch.linalg.cholesky_ex((1 - eps) * cov + eps * eye)
    chol = torch.where((info == 0)[..., None, None], chol, torch.nan)
    return torch.linalg.solve_triangular(chol, xc.mT, upper=False).mT


def group_channel_whiten(x, shuffle, group, eps=0.0):
    """CW-RGP's channel whitening of one batch (Weng et al. 2022, "An Investigation into
    Whitening Loss for Self-supervised Learning"; winci-ai/CW-RGP base/methods/whitening.py
    `Whitening2dZCA`, axis=0, minus=1). Centre each sample over its D channels; reorder the
    channels by `shuffle` (the random group partition) and split them into `group` groups
    of d = D/group; in group g, S_g = X_g X_gᵀ/(d-1) is N x N (over the batch), and the
    output is W_g X_g with W_g = S_g'^(-1/2) (ZCA, S_g' = (1-eps)S_g + eps·I), so that
    every group's N x N matrix of the output is I; channels are put back in order.
    x: (..., N, D) and shuffle: (..., D), every leading index a separate batch. torch.linalg.eigh
    checks its error codes on the host (a GPU sync per call, with no unchecked variant in
    PyTorch): callers whiten all their batches in one call."""
    n, dim = x.shape[-2:]
    lead = x.shape[:-2]
    xc = x - x.mean(-1, keepdim=True)
    order = shuffle.unsqueeze(-2).expand(xc.shape)
    xg = xc.gather(-1, order).view(*lead, n, group, dim // group).transpose(-3, -2)  # ... x group x N x d
    cov = xg @ xg.mT / (dim // group - 1)                                             # ... x group x N x N
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    eig, u = torch.linalg.eigh((1 - eps) * cov + eps * eye)
    w = (u * eig.rsqrt().unsqueeze(-2)) @ u.mT
    out = (w @ xg).transpose(-3, -2).reshape(*lead, n, dim)
    return out.gather(-1, torch.argsort(shuffle, dim=-1).unsqueeze(-2).expand(out.shape))


def _stacked(nested):
    """A tensor from a tensor or from (nested) lists of equal-shaped tensors."""
    return nested if torch.is_tensor(nested) else torch.stack([_stacked(t) for t in nested])


def _sub_batch_loss(views, perms, w_size, whiten):
    """Shared by W-MSE and CW-RGP (their `forward`): per permutation k of the global batch,
    split it into sub-batches of w_size, whiten each view's sub-batch separately, and average
    normalized_mse over the view pairs i < j and the permutations (--w_iter). All the
    sub-batches go to `whiten` at once, as a (views x perms x sub-batches x w_size x D)
    tensor; the rows stay permuted, which changes no pair of rows and no mean."""
    x = all_gather_grad(torch.stack(views, 1)).transpose(0, 1)                # V x N x D (global)
    perms = _stacked(perms)                                                   # K x N
    white = whiten(x[:, perms].unflatten(2, (-1, w_size)))                    # V x K x C x w x D
    pairs = list(itertools.combinations(range(len(views)), 2))
    return sum(normalized_mse(white[i], white[j]) for i, j in pairs) / len(pairs)


def wmse_loss(views, perms, w_size, eps=0.0):
    """W-MSE (htdt/self-supervised methods/w_mse.py): normalised MSE between the views'
    embeddings after `cholesky_whiten` of each sub-batch of w_size (global) samples, over
    the random permutations `perms` (one per --w_iter, each a permutation of the global batch)."""
    return _sub_batch_loss(views, perms, w_size, lambda x: cholesky_whiten(x, eps))


def cwrgp_loss(views, perms, shuffles, w_size, group, eps=0.0):
    """CW-RGP (winci-ai/CW-RGP base/methods/cwrgp.py): as W-MSE, but each view's sub-batch is
    `group_channel_whiten`ed with its own random channel permutation shuffles[k][c][i]
    (permutation k, sub-batch c, view i; a K x C x V x D tensor or nested lists)."""
    shuffles = _stacked(shuffles).permute(2, 0, 1, 3)                        # V x K x C x D, as the sub-batches
    return _sub_batch_loss(views, perms, w_size, lambda x: group_channel_whiten(x, shuffles, group, eps))


def iterative_normalization(x, iters=4):
    """INTL's IterNorm (Weng et al. 2024, "Modulate Your Spectrum in Self-Supervised
    Learning"; winci-ai/INTL methods/whitening.py `Whitening2dIterNorm`, axis=0, the
    default). X_c: each sample centred over its D channels; S = X_c X_cᵀ/(D-1) is N x N, over
    the batch; S_N = S/tr(S); Newton's iterations P_0 = I, P_k = 1.5 P_{k-1} - 0.5 P_{k-1}³ S_N;
    W = P_T/√tr(S); output W X_c. With S_N's eigenvalues λ, the output's S has eigenvalues
    λ·p_T(λ)², p_0 = 1, p_k = 1.5 p_{k-1} - 0.5 λ p_{k-1}³ (1 only in the limit T → ∞)."""
    xc = x - x.mean(1, keepdim=True)
    cov = xc @ xc.T / (x.shape[1] - 1)
    trace = cov.diagonal().sum()
    cov_n = cov / trace
    p = torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(iters):
        p = 1.5 * p - 0.5 * torch.linalg.matrix_power(p, 3) @ cov_n
    return p @ xc / trace.sqrt()


def trace_loss(z):
    """INTL's trace loss `TL` (axis=0): Σ_n (S_nn - 1)², S = Z_c Z_cᵀ/(D-1) with each sample
    centred over its D channels: pushes the diagonal of the N x N matrix to 1."""
    zc = z - z.mean(1, keepdim=True)
    return (zc.pow(2).sum(1) / (z.shape[1] - 1) - 1).pow(2).sum()


def intl_loss(views, iters=4, beta=None):
    """INTL (winci-ai/INTL methods/intl.py): T_i = IterNorm(view i) over the global batch;
    loss = mean over i ≥ 1 of [nmse(T_i, T_0) + beta·(TL(T_i) + TL(T_0))]; two views:
    (2 - 2·mean cosine) + beta·(TL_a + TL_b). beta = 0.01·(log2(N') - 3), N' the global
    batch (INTL's `cal_trade_off`, axis=0), unless given."""
    views = [all_gather_grad(v) for v in views]
    beta = 0.01 * (math.log2(views[0].shape[0]) - 3) if beta is None else beta
    white = [iterative_normalization(v, iters) for v in views]
    tl = [trace_loss(t) for t in white]
    return sum(normalized_mse(white[i], white[0]) + beta * (tl[i] + tl[0])
               for i in range(1, len(white))) / (len(white) - 1)
