"""Weighted kNN monitor (REFERENCE.md section 5; Wu et al. 2018 as used by the reference).

Features are the L2-normalised backbone outputs of images under the evaluation transform.
Under torch.distributed each rank embeds a round-robin shard and the shards are gathered.
"""
import numpy as np
import torch
import torch.nn.functional as F

import distributed as D
from utils import device_constant


def normalise_uint8(batch, mean, std):
    """uint8 NHWC -> float NCHW normalised, the tensor equivalent of ToTensor + Normalize."""
    x = batch.permute(0, 3, 1, 2).float().div_(255)
    mean = device_constant(tuple(mean), x.device).view(1, -1, 1, 1)
    std = device_constant(tuple(std), x.device).view(1, -1, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def embed_images(backbone, images, mean, std, device, batch_size=512, autocast_dtype=None,
                 channels_last=False):
    """L2-normalised features of uint8 images (N, H, W, 3) (numpy or tensor), all ranks' shards
    gathered in the original order."""
    was_training = backbone.training
    backbone.eval()
    n = len(images)
    idx, _ = D.shard_indices(n)
    source = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    feats = []
    for start in range(0, len(idx), batch_size):
        batch = source[idx[start:start + batch_size].to(source.device)].to(device, non_blocking=True)
        x = normalise_uint8(batch, mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            f = torch.flatten(backbone(x), start_dim=1)
        feats.append(F.normalize(f.float(), dim=-1))
    backbone.train(was_training)
    local = torch.cat(feats) if feats else torch.zeros(0, 1, device=device)
    return D.unshard(D.all_gather_cat(local), n)


@torch.no_grad()
def weighted_knn_scores(test_features, bank_features, bank_labels, num_classes, k=200, temperature=0.5,
                        chunk=1024):
    """Class scores (B, C): sum over the k most cosine-similar bank entries of exp(sim / T)."""
    k = min(k, bank_features.shape[0])
    scores = []
    for start in range(0, test_features.shape[0], chunk):
        sim = test_features[start:start + chunk] @ bank_features.T
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
    bank = embed_images(backbone, memory[0], mean, std, device, batch_size, autocast_dtype, channels_last)
    feats = embed_images(backbone, test[0], mean, std, device, batch_size, autocast_dtype, channels_last)
    bank_labels = torch.as_tensor(memory[1], device=device)
    test_labels = torch.as_tensor(test[1], device=device)
    scores = weighted_knn_scores(feats, bank, bank_labels, num_classes, k, temperature)
    return topk_accuracy(scores, test_labels)
