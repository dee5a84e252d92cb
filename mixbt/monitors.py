"""Overfitting monitors, computed where the kNN monitor runs (every --knn_every epochs).

* `gen_gap` = `knn_train_top1` - `knn_top1`: the weighted kNN's top-1 on the training memory bank,
  each entry classified leave-one-out by the rest of the bank, minus its top-1 on the test set.
  The bank features are the ones the kNN monitor already computed.
* `erank_features`, `erank_embeddings`: effective rank (Roy & Vetterli 2007) of the backbone
  features of the monitor's test set and of the projector's embeddings of those same features
  (no second backbone pass). As in RankMe (Garrido et al. 2023) the matrices are not centred.
* `offdiag_mass`, `ondiag_mean`: the Barlow Twins cross-correlation C of two SSL views (the data
  set's recipe, on-device augmentation with a fixed seed) of a fixed held-out subset of PAIRS test
  images, embedded in eval mode and standardised per dimension. offdiag_mass is the mean squared
  off-diagonal entry: for independent dimensions it sits near 1/N (N pairs: the noise floor,
  0.005 for 200), and it rises towards 1 as dimensions become redundant. ondiag_mean (mean C_ii,
  the invariance the loss pushes to 1) tells decorrelation from collapse: a constant dimension
  counts 0 in both. The views cost 2 x PAIRS backbone passes; 200 keeps all the monitors under
  10 % of the kNN monitor's time from a memory bank of 5000 and a test set of 1000 images
  (benchmarks/monitors_overhead.py).

Without labels (an unlabelled data set) only the erank and cross-correlation numbers exist.
Every rank computes the same numbers: features are gathered, views are drawn identically on every
rank, and the leave-one-out hits are summed over ranks.
"""
import numpy as np
import torch
import torch.nn.functional as F

from mixbt import distributed as D
from mixbt import gpu_augment
from mixbt import knn
from mixbt.errors import MixBTError

LABELLED_KEYS = ('knn_train_top1', 'gen_gap')
LABEL_FREE_KEYS = ('erank_features', 'erank_embeddings', 'offdiag_mass', 'ondiag_mean')
KEYS = LABELLED_KEYS + LABEL_FREE_KEYS
# The run's plot: one panel per group (runlog.RunLog's plot_keys).
PLOT_KEYS = (('knn_train_top1', 'knn_top1', 'gen_gap'), ('erank_features', 'erank_embeddings'),
             ('offdiag_mass', 'ondiag_mean'))
PAIRS = 200  # held-out test images whose two views give the cross-correlation (2 x 200 backbone passes)


def effective_rank(x):
    """exp of the entropy of the normalised singular values p_i = s_i / sum_j s_j of x (N, D);
    nan for non-finite features (a monitor reports them, it does not stop the run)."""
    if not torch.isfinite(x).all():
        return float('nan')
    s = torch.linalg.svdvals(x.double())
    if not s.numel() or s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]  # 0 log 0 = 0
    return torch.exp(-(p * p.log()).sum()).item()


def standardise(z):
    """(z - mean) / std per dimension, unbiased std as the reference's loss; a constant dimension
    becomes 0 (its correlations are undefined: counted as none)."""
    z = z.double()
    centred = z - z.mean(0)
    std = centred.std(0)
    return torch.where(std > 0, centred / std.clamp_min(torch.finfo(std.dtype).tiny), torch.zeros_like(centred))


def cross_correlation_mass(za, zb):
    """(mean squared off-diagonal entry, mean diagonal entry) of C = a^T b / N, a and b the
    standardised (N, D) embeddings of the two views. Through the N x N Gram matrices:
    sum_ij C_ij^2 = <a a^T, b b^T> / N^2, never forming the D x D matrix."""
    a, b = standardise(za), standardise(zb)
    n, d = a.shape
    if d < 2 or n < 2:
        raise MixBTError(f'the cross-correlation monitor needs at least 2 pairs and 2 dimensions, got {n} x {d}')
    diag = (a * b).sum(0) / n
    total = ((a @ a.T) * (b @ b.T)).sum() / n ** 2
    return ((total - diag.pow(2).sum()) / (d * (d - 1))).item(), diag.mean().item()


def leave_one_out_top1(bank, labels, num_classes, k=200, temperature=0.5):
    """Top-1 % of the weighted kNN on the (L2-normalised) bank itself, each entry classified by
    the others (its own index excluded). Ranks share the queries and sum their hits."""
    if bank.shape[0] < 2:
        raise MixBTError('the leave-one-out kNN needs a memory bank of at least 2 images')
    idx, valid = D.shard_indices(bank.shape[0])
    idx = idx[:valid].to(bank.device)
    scores = knn.weighted_knn_scores(bank[idx], bank, labels, num_classes, k, temperature, exclude=idx)
    hits = (scores.topk(1, dim=1).indices[:, 0] == labels[idx]).sum().double().view(1)  # as knn.topk_accuracy
    return (D.all_reduce_sum(hits) / bank.shape[0] * 100).item()


class Projector:
    """The map from backbone features to the embeddings the loss sees, run in eval mode.

    `model` is the small-data model (its projector `g`, whose output its forward L2-normalises),
    the ImageNet model (`projector`), or a projector module or callable itself."""

    def __init__(self, model):
        head = getattr(model, 'g', None)
        self.module = head if head is not None else getattr(model, 'projector', model)
        self.normalise = head is not None

    @torch.no_grad()
    def __call__(self, features, autocast_dtype=None):
        module = self.module
        was_training = getattr(module, 'training', None)
        if was_training is not None:
            module.eval()  # BatchNorm with running statistics: the embedding of a sample alone
        try:
            with torch.autocast(features.device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                z = module(features).float()
        finally:
            if was_training is not None:
                module.train(was_training)
        return F.normalize(z, dim=-1) if self.normalise else z


def held_out_views(images, recipe, mean, std, device, pairs=PAIRS, seed=0, batch_size=512):
    """Two SSL views (float NCHW, normalised) of a fixed subset of `pairs` uint8 images (N, H, W, 3):
    the subset and the views depend on `seed` only (not on the epoch, rank or world size)."""
    source = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    pick = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))[:pairs].sort().values
    chosen = source[pick.to(source.device)].to(device).permute(0, 3, 1, 2)
    gen = torch.Generator(device=device).manual_seed(gpu_augment.stream_seed(3, seed))
    views = ([], [])
    for start in range(0, len(chosen), batch_size):  # fixed chunks: the hue slots depend on the batch
        for out in views:
            out.append(gpu_augment.augment_batch(chosen[start:start + batch_size], recipe, mean, std, gen))
    return tuple(torch.cat(v) for v in views)


def view_metrics(backbone, projector, images, recipe, mean, std, device, pairs=PAIRS, seed=0, batch_size=512,
                 autocast_dtype=None, channels_last=False):
    """{'offdiag_mass', 'ondiag_mean'} of the embeddings of held_out_views(images): one sharded
    backbone pass over both views."""
    views = torch.cat(held_out_views(images, recipe, mean, std, device, pairs, seed, batch_size))
    feats = knn.embed_batches(backbone, len(views), lambda i: views[i.to(views.device)], device, batch_size,
                              autocast_dtype, channels_last, 'held-out views', normalise=False)
    za, zb = embed(projector, feats, autocast_dtype, batch_size).chunk(2)
    mass, diag = cross_correlation_mass(za, zb)
    return {'offdiag_mass': mass, 'ondiag_mean': diag}


def embed(projector, features, autocast_dtype=None, batch_size=512):
    """The projector's embeddings of raw backbone features, batch by batch."""
    return torch.cat([projector(f, autocast_dtype) for f in features.split(batch_size)])


def overfitting_metrics(backbone, model, memory, test, mean, std, num_classes, device, recipe, k=200,
                        temperature=0.5, euclid=False, batch_size=512, autocast_dtype=None, channels_last=False,
                        features=False, pairs=PAIRS, seed=0):
    """knn.knn_metrics' dict (same arguments, and its features=True return) plus KEYS, from one
    embedding of memory and test. `model`: see Projector; `recipe`: the data set's SSL view
    (data.select_pipeline(...).recipe). Unlabelled data (memory None, or a split's labels None):
    LABEL_FREE_KEYS only, from the test images."""
    projector = Projector(model)
    common = dict(batch_size=batch_size, autocast_dtype=autocast_dtype, channels_last=channels_last)
    if memory is not None and memory[1] is not None and test[1] is not None:
        out, (bank, tested) = knn.knn_metrics(backbone, memory, test, mean, std, num_classes, device, k, temperature,
                                              euclid, features=True, **common)
        out['knn_train_top1'] = leave_one_out_top1(F.normalize(bank[0], dim=-1), bank[1], num_classes, k,
                                                   temperature)
        out['gen_gap'] = out['knn_train_top1'] - out['knn_top1']
        test_features = tested[0]
    elif features:
        raise ValueError('features=True returns the labelled features of the linear evaluation: it needs labels')
    else:
        out, test_features = {}, knn.embed_images(backbone, test[0], mean, std, device, desc='test features',
                                                  normalise=False, **common)
    out['erank_features'] = effective_rank(test_features)
    out['erank_embeddings'] = effective_rank(embed(projector, test_features, autocast_dtype, batch_size))
    out.update(view_metrics(backbone, projector, test[0], recipe, mean, std, device, pairs, seed, **common))
    return (out, (bank, tested)) if features else out
