import math

import pytest
import torch
import torch.nn.functional as F

from mixbt import knn


def brute_force_knn(test, bank, bank_labels, num_classes, k, t, exclude=None):
    preds = []
    for row, x in enumerate(test):
        sims = [(float(x @ b), int(l)) for j, (b, l) in enumerate(zip(bank, bank_labels))
                if exclude is None or j != exclude[row]]
        sims.sort(key=lambda s: -s[0])
        scores = [0.0] * num_classes
        for sim, label in sims[:k]:
            scores[label] += torch.exp(torch.tensor(sim / t, dtype=torch.float64)).item()
        preds.append(scores)
    return torch.tensor(preds, dtype=torch.float64)


def test_weighted_knn_equals_brute_force_on_random_features():
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(300, 16, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 7, (300,), generator=g)
    test = F.normalize(torch.randn(50, 16, generator=g, dtype=torch.float64), dim=1)
    test_labels = torch.randint(0, 7, (50,), generator=g)
    for k in (1, 10, 200):
        scores = knn.weighted_knn_scores(test, bank, labels, 7, k=k, temperature=0.5, chunk=17)
        expected = brute_force_knn(test, bank, labels, 7, k, 0.5)
        torch.testing.assert_close(scores, expected)
        top1, top5 = knn.topk_accuracy(scores, test_labels)
        ranked = expected.argsort(dim=1, descending=True)
        assert top1 == pytest.approx((ranked[:, 0] == test_labels).double().mean().item() * 100)
        if k == 200:  # with fewer neighbours, classes scoring 0 tie and top-5 is arbitrary
            assert top5 == pytest.approx((ranked[:, :5] == test_labels[:, None]).any(1).double().mean().item() * 100)


def test_excluded_index_is_never_a_neighbour_even_beside_its_duplicate():
    """Leave-one-out on the bank itself: each query drops exactly its own index, so its duplicate
    (same features, another index) is still its nearest neighbour."""
    g = torch.Generator().manual_seed(3)
    bank = F.normalize(torch.randn(40, 8, generator=g, dtype=torch.float64), dim=1)
    bank = torch.cat([bank, bank[:10]])  # entries 40..49 duplicate 0..9
    labels = torch.randint(0, 5, (50,), generator=g)
    queries = torch.tensor([0, 3, 9, 12, 40, 45, 49])
    for k in (1, 7, 60):
        scores = knn.weighted_knn_scores(bank[queries], bank, labels, 5, k=k, temperature=0.1, chunk=3,
                                         exclude=queries)
        torch.testing.assert_close(scores, brute_force_knn(bank[queries], bank, labels, 5, k, 0.1, exclude=queries))
    scores = knn.weighted_knn_scores(bank[queries], bank, labels, 5, k=1, temperature=0.5, exclude=queries)
    twin = {0: 40, 3: 43, 9: 49, 40: 0, 45: 5, 49: 9}
    for row, q in enumerate(queries.tolist()):
        if q in twin:  # the duplicate (similarity 1) is the one neighbour
            assert scores[row].argmax() == labels[twin[q]] and scores[row].max() == pytest.approx(math.exp(2))
        else:  # alone: a neighbour less similar than itself (weight exp(1 / 0.5) if it counted)
            assert 0 < scores[row].max() < math.exp(2) - 1e-6


def test_knn_monitor_finds_separable_classes():
    """A 'backbone' that returns the mean colour separates colour-coded classes perfectly."""
    class MeanColour(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x.mean(dim=(2, 3)), torch.ones(len(x), 1)], dim=1)
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (60,), generator=g)
    colours = torch.tensor([[250, 0, 0], [0, 250, 0], [0, 0, 250]], dtype=torch.uint8)
    images = colours[labels][:, None, None, :].expand(60, 8, 8, 3).contiguous()
    top1, top5 = knn.knn_monitor(MeanColour(), (images[:40], labels[:40]), (images[40:], labels[40:]),
                                 (0.5,) * 3, (0.25,) * 3, 3, torch.device('cpu'), k=5)
    assert top1 == 100.0 and top5 == 100.0
