"""--pipeline wmse: the baselines as the original ran them (docs/protocol.md section 6).

The W-MSE code (htdt/self-supervised, run unchanged by mix-bt's ssl-sota/ for the paper's SimCLR,
BYOL and W-MSE numbers) builds its views and normalisation per data set, evaluates with a
Euclidean k-NN majority vote and, at the end, a linear classifier on precomputed embeddings. Its
transforms are transcribed here and compared with ours, structure and pixels; its k-NN is stated
again by hand; the launch scripts carry its settings."""
import collections
import csv
import glob
import json
import math
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from mixbt import augment
from mixbt import data
import fakedata
from mixbt import knn
from mixbt import methods
import main
from mixbt import probe
from mixbt import readers
from mixbt.errors import MixBTError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WMSE_SETS = ('cifar10', 'cifar100', 'stl10', 'tiny_imagenet')
BICUBIC = T.InterpolationMode.BICUBIC  # the original's interpolation=3 (PIL's BICUBIC)


# ---------------------------------------------------------------------------- the original's transforms
def original_base_transform(name):
    """datasets/<name>.py base_transform() of the W-MSE code."""
    stats = {'cifar10': ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
             'cifar100': ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
             'stl10': ((0.43, 0.42, 0.39), (0.27, 0.26, 0.27)),
             'tiny_imagenet': ((0.480, 0.448, 0.398), (0.277, 0.269, 0.282))}[name]
    return T.Compose([T.ToTensor(), T.Normalize(*stats)])


def original_train_view(name):
    """datasets/transforms.py aug_transform(crop, base_transform, cfg) with the cfg.py defaults
    (cj 0.4/0.4/0.4/0.1 p 0.8, gs_p 0.1, crop 0.2-1, ratio 3/4-4/3, hf_p 0.5); crop 32 on CIFAR, 64 else."""
    crop = 32 if name.startswith('cifar') else 64
    return T.Compose([T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.1),
                      T.RandomResizedCrop(crop, scale=(0.2, 1.0), ratio=(0.75, 4 / 3), interpolation=BICUBIC),
                      T.RandomHorizontalFlip(p=0.5), original_base_transform(name)])


def original_eval_transform(name):
    """ds_clf/ds_test: base_transform, after Resize(70, bicubic) + CenterCrop(64) on STL-10."""
    if name == 'stl10':
        return T.Compose([T.Resize(70, interpolation=BICUBIC), T.CenterCrop(64), original_base_transform(name)])
    return original_base_transform(name)


def steps(transform):
    """The transform as a flat list of (class, parameters), nested Compose flattened, identity Lambdas dropped."""
    if isinstance(transform, T.Compose):
        return [s for t in transform.transforms for s in steps(t)]
    if isinstance(transform, T.Lambda):
        img = Image.new('RGB', (2, 2))
        assert transform(img) is img  # the identity geometry of a data set stored at its size
        return []
    params = {k: v for k, v in vars(transform).items() if not k.startswith('_') and k != 'training'}
    if isinstance(transform, T.RandomApply):
        params['transforms'] = [s for t in transform.transforms for s in steps(t)]
    return [(type(transform).__name__, {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})]


def source_image(name, seed=0):
    side = {'stl10': 96, 'tiny_imagenet': 64}.get(name, 32)
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def same_pixels(ours, theirs, img, seeds=range(8)):
    for seed in seeds:
        torch.manual_seed(seed)
        a = ours(img)
        torch.manual_seed(seed)
        b = theirs(img)
        if not torch.equal(a, b):
            return False
    return True


@pytest.mark.parametrize('name', WMSE_SETS)
def test_wmse_views_are_the_original_transforms(name):
    """Each SSL view under --pipeline wmse has the original's steps, order and parameters (jitter and
    grayscale before the crop, bicubic, 32 px on CIFAR), and gives its pixels for the same random draws."""
    views = augment.ssl_views(name, pipeline='wmse')
    assert len(views) == 2
    for view in views:
        assert steps(view) == steps(original_train_view(name))
        assert same_pixels(view, original_train_view(name), source_image(name))


@pytest.mark.parametrize('name', WMSE_SETS)
def test_wmse_evaluation_inputs_are_the_originals(name):
    """The evaluation transform (kNN memory/test, linear evaluation) under --pipeline wmse: the original's
    geometry and normalisation; the monitor's precomputed geometry plus its normalisation are the same pixels."""
    ours = augment.eval_transform(name, pipeline='wmse')
    assert steps(ours) == steps(original_eval_transform(name))
    img = source_image(name)
    assert torch.equal(ours(img), original_eval_transform(name)(img))
    arrays = readers.ArrayData(np.asarray(img)[None], np.zeros(1, np.int64), ['x'])
    stats = data.select_pipeline(name, 'wmse')
    monitored = knn.normalise_uint8(torch.from_numpy(augment.eval_images(name, arrays).copy()), stats.mean, stats.std)
    torch.testing.assert_close(monitored[0], original_eval_transform(name)(img), rtol=0, atol=1e-6)


def test_wmse_pipeline_differs_from_mixbt_where_the_original_did():
    """CIFAR: colour first, grayscale 0.1, crop scale 0.2-1 bicubic (Mix-BT: crop first, 0.2, 0.08-1,
    bilinear); CIFAR-100 has its own statistics (Mix-BT keeps CIFAR-10's). STL-10 and Tiny-ImageNet: the same."""
    for name in ('cifar10', 'cifar100'):
        assert data.select_pipeline(name, 'wmse').recipe != data.SPECS[name].recipe
    assert data.select_pipeline('cifar100', 'wmse').mean == (0.5071, 0.4867, 0.4408)
    assert data.select_pipeline('cifar100', 'mixbt').mean == data.SPECS['cifar10'].mean
    for name in ('stl10', 'tiny_imagenet'):
        assert steps(augment.ssl_views(name, pipeline='wmse')[0]) == steps(augment.ssl_views(name)[0])


def test_mixbt_pipeline_is_the_registry_row_and_old_calls_still_work():
    for name in data.SPECS:
        p = data.select_pipeline(name)
        assert (p.recipe, p.mean, p.std) == (data.SPECS[name].recipe, data.SPECS[name].mean, data.SPECS[name].std)
    assert steps(augment.normalize('cifar100')) == steps(T.Normalize(data.CIFAR_MEAN, data.CIFAR_STD))
    assert steps(augment.recipe_views(data.SPECS['cifar10'].recipe, 'cifar10')[0]) == \
        steps(augment.ssl_views('cifar10')[0])


@pytest.mark.parametrize('name', ['fashionmnist', 'imagenet'])
def test_a_data_set_the_wmse_code_lacks_is_refused_with_the_fix(name):
    with pytest.raises(MixBTError, match='no .* pipeline; use --pipeline mixbt'):
        main.get_args(['--dataset', name, '--pipeline', 'wmse'])


# ---------------------------------------------------------------------------- its k-NN
def majority_vote_by_hand(test, bank, bank_labels, k):
    """For each test point: the k bank points nearest in Euclidean distance, the label most of them
    carry, the smallest such label on a tie."""
    preds = []
    for x in test.tolist():
        distance = [math.dist(x, b) for b in bank.tolist()]
        nearest = sorted(range(len(distance)), key=distance.__getitem__)[:k]
        votes = collections.Counter(int(bank_labels[j]) for j in nearest)
        most = max(votes.values())
        preds.append(min(label for label, n in votes.items() if n == most))
    return torch.tensor(preds)


def original_eval_knn_predictions(x_train, y_train, x_test, k):
    """eval/knn.py of the W-MSE code, up to its accuracy: cdist, topk smallest, unique + argmax per row."""
    labels = y_train[torch.cdist(x_test, x_train).topk(k, dim=1, largest=False).indices]
    out = []
    for row in labels:
        values, counts = row.unique(return_counts=True)
        out.append(values[counts.argmax()])
    return torch.stack(out)


def test_euclidean_majority_vote_equals_a_restatement_by_hand():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(200, 8, generator=g, dtype=torch.float64) * 3
    bank_labels = torch.randint(0, 7, (200,), generator=g)
    test = torch.randn(60, 8, generator=g, dtype=torch.float64) * 3
    test_labels = torch.randint(0, 7, (60,), generator=g)
    ties = 0
    for k in (1, 4, 5, 20):
        pred = knn.majority_vote_knn(test, bank, bank_labels, k=k, chunk=7)
        expected = majority_vote_by_hand(test, bank, bank_labels, k)
        assert torch.equal(pred, expected), k
        assert torch.equal(pred, original_eval_knn_predictions(bank, bank_labels, test, k))
        assert knn.majority_vote_top1(test, test_labels, bank, bank_labels, k) == \
            pytest.approx((expected == test_labels).double().mean().item() * 100)
        counts = [collections.Counter(bank_labels[i].tolist())
                  for i in torch.cdist(test, bank).topk(k, largest=False).indices]
        ties += sum(list(c.values()).count(max(c.values())) > 1 for c in counts)
    assert ties > 0  # the tie rule was exercised


@pytest.mark.parametrize('labels, expected', [([3, 3, 1, 1, 0], 1), ([1, 1, 3, 3, 0], 1), ([5, 2, 2, 5, 0], 2),
                                              ([4, 2, 0, 0, 2], 0)])
def test_a_tie_goes_to_the_smallest_label(labels, expected):
    """Bank points at 1, 2, 3, 4 and 10 on a line, a test point at 2.5 and k = 4: the four nearest
    labels tie 2-2 (whichever is nearer), and the smallest label wins; without a tie, the majority
    (the last case: two 0s against a 4 and a 2; the far point's label does not vote)."""
    bank = torch.tensor([[1.0], [2.0], [3.0], [4.0], [10.0]])
    pred = knn.majority_vote_knn(torch.tensor([[2.5]]), bank, torch.tensor(labels), k=4)
    assert pred.tolist() == [expected]


def test_the_monitor_logs_both_knns_from_one_embedding():
    """With euclid, the weighted kNN is unchanged (L2-normalised features) and the Euclidean one runs on
    the raw features; features=True returns those raw features for the linear evaluation."""
    class MeanColour(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x.mean(dim=(2, 3)), torch.ones(len(x), 1)], dim=1)
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (60,), generator=g)
    colours = torch.tensor([[250, 0, 0], [0, 250, 0], [0, 0, 250]], dtype=torch.uint8)
    images = colours[labels][:, None, None, :].expand(60, 8, 8, 3).contiguous()
    memory, test = (images[:40], labels[:40]), (images[40:], labels[40:])
    args = (MeanColour(), memory, test, (0.5,) * 3, (0.25,) * 3, 3, torch.device('cpu'))
    weighted = knn.knn_monitor(*args, k=5)
    scores, ((bank, bank_y), (feats, test_y)) = knn.knn_metrics(*args, k=5, euclid=True, features=True)
    assert (scores['knn_top1'], scores['knn_top5']) == pytest.approx(weighted)
    assert scores[knn.EUCLID_KEY] == 100.0 and knn.EUCLID_KEY == 'knn5_euclid_top1'
    assert torch.equal(bank_y, labels[:40]) and torch.equal(test_y, labels[40:])
    assert bank.norm(dim=1).max() > 1.5  # raw, not normalised
    assert set(knn.knn_metrics(*args, k=5)) == {'knn_top1', 'knn_top5'}


# ---------------------------------------------------------------------------- its linear evaluation
def separable(n, classes=4, dim=16, seed=0):
    """n points around `classes` fixed centres (the same for every seed), far apart for their spread."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 4
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + torch.randn(n, dim, generator=g), y


def test_linear_evaluation_on_separable_embeddings_reaches_100_percent():
    train_x, train_y = separable(2000)
    test_x, test_y = separable(500, seed=1)
    result = probe.linear_eval_on_embeddings(train_x, train_y, test_x, test_y, epochs=50)
    assert result['linear_top1'] >= 99.5 and result['linear_top5'] == 100.0
    assert probe.linear_eval_on_embeddings(train_x, train_y, test_x, test_y, epochs=50) == result  # seeded


def test_linear_evaluation_schedule_is_the_originals(monkeypatch):
    """Adam (weight decay 5e-6), lr 1e-2 times (1e-6 / 1e-2)^(1/500) after each of 500 epochs, batches of 1000,
    every sample once per epoch (here 1200: the last batch takes the rest)."""
    seen = {'lrs': [], 'batches': []}
    real_step = torch.optim.Adam.step

    def step(self, *a, **kw):
        seen['lrs'].append(self.param_groups[0]['lr'])
        seen['wd'] = self.param_groups[0]['weight_decay']
        return real_step(self, *a, **kw)
    monkeypatch.setattr(torch.optim.Adam, 'step', step)
    real_ce = torch.nn.functional.cross_entropy
    monkeypatch.setattr(probe.F, 'cross_entropy', lambda out, y: seen['batches'].append(len(y)) or real_ce(out, y))
    train_x, train_y = separable(1200, dim=2)
    probe.linear_eval_on_embeddings(train_x, train_y, *separable(10, dim=2, seed=1))
    assert seen['wd'] == 5e-6 and seen['batches'][:3] == [1000, 200, 1000] and len(seen['batches']) == 1000
    assert seen['lrs'][0] == pytest.approx(1e-2) and seen['lrs'][-1] == pytest.approx(1e-6 / (1e-6 / 1e-2) ** (1 / 500))


# ---------------------------------------------------------------------------- main.py --pipeline wmse
TINY = ['--visuals', 'false', '--arch', 'resnet18', '--batch_size', '8', '--subset', '24', '--workers', '0', '--seed', '3', '--k', '5',
        '--save_every', '0', '--method', 'simclr', '--emb', '8', '--head_size', '16', '--lr', '0.003',
        '--warmup_steps', '2']


@pytest.fixture(scope='module')
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('wmse-data')
    fakedata.write_cifar(str(root), 'cifar10', n_train=40, n_test=20)
    fakedata.write_cifar(str(root), 'cifar100', n_train=40, n_test=20)
    return str(root)


@pytest.mark.slow
def test_main_with_pipeline_wmse_logs_both_knns_and_the_linear_evaluation(fake_root, tmp_path):
    run = main.main(TINY + ['--dataset', 'cifar10', '--epochs', '2', '--knn_every', '1', '--pipeline', 'wmse',
                            '--data_root', fake_root, '--results_dir', str(tmp_path)])
    (stats,) = glob.glob(os.path.join(run, '*_statistics.csv'))
    rows = list(csv.DictReader(open(stats)))
    assert [r['epoch'] for r in rows] == ['1', '2']
    for r in rows:
        for key in ('knn_top1', 'knn_top5', 'knn5_euclid_top1'):
            assert 0 <= float(r[key]) <= 100, (key, r)
    assert rows[0]['linear_top1'] == '' and 0 <= float(rows[1]['linear_top1']) <= float(rows[1]['linear_top5'])
    saved = json.load(open(os.path.join(run, 'args.json')))
    assert saved['pipeline'] == 'wmse' and saved['aug'] == 'cpu'


class Stop(Exception):
    pass


@pytest.mark.parametrize('pipeline', ['mixbt', 'wmse'])
def test_training_views_and_monitor_normalise_alike(pipeline, fake_root, tmp_path, monkeypatch):
    """CIFAR-100: the training views and the kNN monitor both use the pipeline's statistics."""
    seen = {}
    real_views = augment.ssl_views

    def ssl_views(*a, **kw):
        seen['views'] = real_views(*a, **kw)
        return seen['views']

    def knn_metrics(backbone, memory, test, mean, std, *a, **kw):
        seen['monitor'] = (tuple(mean), tuple(std))
        raise Stop
    monkeypatch.setattr(augment, 'ssl_views', ssl_views)
    monkeypatch.setattr(knn, 'knn_metrics', knn_metrics)
    with pytest.raises(Stop):
        main.main(TINY + ['--dataset', 'cifar100', '--epochs', '1', '--knn_init', '--pipeline', pipeline,
                          '--data_root', fake_root, '--results_dir', str(tmp_path)])
    expected = data.select_pipeline('cifar100', pipeline)
    (norm,) = [t for t in seen['views'][0].transforms if isinstance(t, T.Normalize)]
    assert (tuple(norm.mean), tuple(norm.std)) == seen['monitor'] == (expected.mean, expected.std)
    assert steps(seen['views'][0]) == steps(augment.ssl_views('cifar100', pipeline=pipeline)[0])


def test_on_device_views_take_the_pipelines_recipe_and_normalisation():
    import argparse
    from mixbt import gpu_augment
    train = readers.ArrayData(np.zeros((8, 32, 32, 3), np.uint8), np.zeros(8, np.int64), ['a'])
    for pipeline in data.PIPELINES:
        args = argparse.Namespace(dataset='cifar100', pipeline=pipeline, seed=0, batch_size=4, channels_last=False)
        views = gpu_augment.DeviceViews(args, train, 2, torch.device('cpu'))
        p = data.select_pipeline('cifar100', pipeline)
        assert (views.recipe, views.mean, views.std) == (p.recipe, p.mean, p.std)
        assert [v.shape for v in next(views.epoch(0))] == [(4, 3, 32, 32)] * 2


# ---------------------------------------------------------------------------- the launch scripts
# mix-bt ssl-sota/scripts-pretrain/{contrastive,byol,w-mse}/<data set>.sh with its cfg.py defaults
# (--bs 384, --epoch 200, --w_iter 1, --head_size 1024, --tau 0.5, --byol_tau 0.99).
def original_run(method, ds):
    small = ds in ('stl10', 'tinyimagenet')
    if method == 'wmse':
        return dict(arch='resnet50', epochs='200' if ds == 'cifar100' else '1000', batch_size='256',
                    lr='2e-3' if small else '3e-3', emb='128' if small else '64', w_size='256' if small else '128',
                    w_iter='1', w_eps='1e-2', views='2', head_size='1024', pipeline='wmse')
    run = dict(arch='resnet50', epochs='1000', batch_size='384', lr='3e-3', emb='64', head_size='1024',
               pipeline='wmse')
    if method == 'byol':
        run.update(byol_tau='0.99', batch_size='320' if ds == 'tinyimagenet' else '384')
    else:
        run.update(tau='0.5')
    return run


def script_defaults(path):
    text = open(os.path.join(REPO, path)).read()
    return {m[1]: m[2] for m in re.finditer(r'^([a-z_]+)=\$\{[A-Z_]+:-([^}]*)\}', text, re.M)}, text


@pytest.mark.parametrize('method', ['simclr', 'byol', 'wmse'])
@pytest.mark.parametrize('ds', ['cifar10', 'cifar100', 'stl10', 'tinyimagenet'])
def test_ssl_sota_scripts_default_to_the_original_run(method, ds, tmp_path):
    """The configuration main.py resolves from the script's command line (the script passes what differs
    from the method's defaults; main.py fills in the rest) is the original run's."""
    from test_scripts import program_calls, run
    path = f'ssl-sota/{method}/{ds}.sh'
    proc, calls = run(path, tmp_path)
    assert proc.returncode == 0, proc.stderr
    ((_, argv),) = program_calls(calls)
    args = main.get_args(argv)
    for key, value in original_run(method, ds).items():
        got = getattr(args, {'views': 'num_views'}.get(key, key))
        assert (float(value) == got if isinstance(got, (int, float)) else value == got), (path, key, value, got)
    text = open(os.path.join(REPO, path)).read()
    assert '--pipeline "$pipeline"' in text and 'PIPELINE=mixbt' in text  # the same-pipeline option, stated


# The methods whose paper numbers came from the W-MSE code (mix-bt's ssl-sota/, CW-RGP's base/ on it):
# their scripts default to that code's pipeline. Any other method's use main.py's default, mixbt.
WMSE_CODE_METHODS = {'simclr', 'byol', 'wmse', 'cwrgp'}


def test_every_ssl_sota_script_passes_its_pipeline():
    scripts = sorted(glob.glob('ssl-sota/*/*.sh', root_dir=REPO))
    assert {path.split('/')[1] for path in scripts} <= set(methods.METHODS) and WMSE_CODE_METHODS <= {
        path.split('/')[1] for path in scripts}
    for path in scripts:
        defaults, text = script_defaults(path)
        if path.split('/')[1] not in WMSE_CODE_METHODS:  # main.py's default pipeline: not restated (test_scripts.py)
            assert 'pipeline' not in defaults and '--pipeline' not in text.split('check_settings')[-1], path
        else:
            assert defaults['pipeline'] == 'wmse', path
            assert text.count('--pipeline "$pipeline"') == 1, path
