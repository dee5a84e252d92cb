"""Weighted kNN monitor (docs/protocol.md section 5; Wu et al. 2018 as used by the reference),
and the W-MSE code's Euclidean k-NN majority vote (section 6), logged next to it under --pipeline wmse.

Features are the backbone outputs of images under the evaluation transform: L2-normalised for the
weighted kNN, raw for the Euclidean one. Under torch.distributed each rank embeds a round-robin
shard and the shards are gathered. monitors.py adds the overfitting monitors to the same features
(the leave-one-out kNN on the memory bank: weighted_knn_scores' `exclude`).
"""
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mixbt import distributed as D
from mixbt.runtime import device_constant


def normalise_uint8(batch, mean, std):
    """uint8 NHWC -> float NCHW normalised, the tensor equivalent of ToTensor + Normalize."""
    x = batch.permute(0, 3, 1, 2).float().div_(255)
    mean = device_constant(tuple(mean), x.device).view(1, -1, 1, 1)
    std = device_constant(tuple(std), x.device).view(1, -1, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def embed_batches(backbone, n, batch_of, device, batch_size=512, autocast_dtype=None, channels_last=False,
                  desc='features', normalise=True):
    """Features (L2-normalised, or raw with normalise=False) of n inputs, batch_of(indices) giving
    the float NCHW batch of those inputs on the device: each rank embeds its round-robin shard and
    all ranks get every feature in the original order (a progress bar on the main process)."""
    was_training = backbone.training
    backbone.eval()
    idx, _ = D.shard_indices(n)
    feats = []
    for start in tqdm(range(0, len(idx), batch_size), desc=desc, disable=not D.is_main(), leave=False,
                      dynamic_ncols=True, mininterval=1.0):
        x = batch_of(idx[start:start + batch_size])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            f = torch.flatten(backbone(x), start_dim=1)
        feats.append(F.normalize(f.float(), dim=-1) if normalise else f.float())
    backbone.train(was_training)
    local = torch.cat(feats) if feats else torch.zeros(0, 1, device=device)
    return D.unshard(D.all_gather_cat(local), n)


def embed_images(backbone, images, mean, std, device, batch_size=512, autocast_dtype=None,
                 channels_last=False, desc='kNN features', normalise=True):
    """Features (L2-normalised, or raw with normalise=False) of uint8 images (N, H, W, 3) (numpy or
    tensor), all ranks' shards gathered in the original order."""
    source = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    batch_of = lambda i: normalise_uint8(source[i.to(source.device)].to(device, non_blocking=True), mean, std)
    return embed_batches(backbone, len(images), batch_of, device, batch_size, autocast_dtype, channels_last, desc,
                         normalise)


@torch.no_grad()
def weighted_knn_scores(test_features, bank_features, bank_labels, num_classes, k=200, temperature=0.5,
                        chunk=1024, exclude=None):
    """Class scores (B, C): sum over the k most cosine-similar bank entries of exp(sim / T).
    exclude (B,): the bank index each test row must never count (leave-one-out on the bank itself:
    by index, so a duplicate of the sample still counts, the sample itself never)."""
    k = min(k, bank_features.shape[0] - (exclude is not None))
    scores = []
    for start in range(0, test_features.shape[0], chunk):
        sim = test_features[start:start + chunk] @ bank_features.T
        if exclude is not None:
            rows = torch.arange(sim.shape[0], device=sim.device)
            sim[rows, exclude[start:start + chunk].to(sim.device)] = float('-inf')  # weight exp(-inf) = 0
        sim_weight, sim_idx = sim.topk(k, dim=-1)
        sim_labels = bank_labels[sim_idx]
        weights = (sim_weight / temperature).exp()
        s = torch.zeros(sim.shape[0], num_classes, device=sim.device, dtype=weights.dtype)
        scores.append(s.scatter_add_(1, sim_labels, weights))
    return torch.cat(scores)


def topk_accuracy(scores, labels, ks=(1, 5)):
    """Percentages of samples whose label is among the top-k scored classes."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=-1).indices
    hit = top == labels.view(-1, 1)
    return [hit[:, :k].any(dim=1).float().mean().item() * 100 for k in ks]


def knn_monitor(backbone, memory, test, mean, std, num_classes, device, k=200, temperature=0.5,
                batch_size=512, autocast_dtype=None, channels_last=False):
    """(top1, top5) of weighted kNN: memory/test are (uint8 images, int64 labels)."""
    out = knn_metrics(backbone, memory, test, mean, std, num_classes, device, k, temperature, batch_size=batch_size,
                      autocast_dtype=autocast_dtype, channels_last=channels_last)
    return out['knn_top1'], out['knn_top5']


# The W-MSE code's k-NN (eval/knn.py, called with its --knn default 5), and its column in the CSV.
EUCLID_K = 5
EUCLID_KEY = f'knn{EUCLID_K}_euclid_top1'


@torch.no_grad()
def majority_vote_knn(test_features, bank_features, bank_labels, k=EUCLID_K, chunk=1024):
    """Predicted labels (B,): the most frequent label among the k bank entries nearest to each test
    feature in Euclidean distance (torch.cdist), unweighted. A tie goes to the smallest label, as in
    the W-MSE code, whose unique(return_counts=True) sorts the labels and argmax takes the first maximum."""
    k = min(k, bank_features.shape[0])
    num_classes = int(bank_labels.max()) + 1
    preds = []
    for start in range(0, test_features.shape[0], chunk):
        nearest = torch.cdist(test_features[start:start + chunk], bank_features).topk(k, dim=1, largest=False).indices
        labels = bank_labels[nearest]
        votes = torch.zeros(labels.shape[0], num_classes, dtype=torch.int64, device=labels.device)
        preds.append(votes.scatter_add_(1, labels, torch.ones_like(labels)).argmax(dim=1))  # first max: smallest
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64, device=bank_labels.device)


def majority_vote_top1(test_features, test_labels, bank_features, bank_labels, k=EUCLID_K):
    """Top-1 % of the W-MSE code's k-NN on raw (not normalised) features."""
    pred = majority_vote_knn(test_features, bank_features, bank_labels, k)
    return (pred == test_labels).float().mean().item() * 100


def knn_metrics(backbone, memory, test, mean, std, num_classes, device, k=200, temperature=0.5, euclid=False,
                batch_size=512, autocast_dtype=None, channels_last=False, features=False):
    """{'knn_top1', 'knn_top5'} of the weighted kNN, plus EUCLID_KEY (the W-MSE code's Euclidean
    k-NN on the raw backbone outputs) with `euclid`, from one embedding of memory and test.
    features=True also returns the raw ((bank, bank labels), (test, test labels)) on the device,
    for the linear evaluation on embeddings (probe.linear_eval_on_embeddings)."""
    raw = euclid or features
    bank = embed_images(backbone, memory[0], mean, std, device, batch_size, autocast_dtype, channels_last,
                        'kNN memory bank', normalise=not raw)
    feats = embed_images(backbone, test[0], mean, std, device, batch_size, autocast_dtype, channels_last,
                         'kNN test set', normalise=not raw)
    bank_labels = torch.as_tensor(memory[1], device=device)
    test_labels = torch.as_tensor(test[1], device=device)
    unit = (lambda x: F.normalize(x, dim=-1)) if raw else (lambda x: x)
    scores = weighted_knn_scores(unit(feats), unit(bank), bank_labels, num_classes, k, temperature)
    top1, top5 = topk_accuracy(scores, test_labels)
    out = {'knn_top1': top1, 'knn_top5': top5}
    if euclid:
        out[EUCLID_KEY] = majority_vote_top1(feats, test_labels, bank, bank_labels)
    return (out, ((bank, bank_labels), (feats, test_labels))) if features else out
