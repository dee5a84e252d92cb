"""Golden runs: a fixed seed gives the same weights, optimiser state and CSV values as the code
that recorded them (tests/golden/golden.json), for Mix-BT and two baselines.

The record pins behaviour across refactors. Rewrite it only for a change of behaviour made on
purpose, and say which in the commit:  MIXBT_GOLDEN_WRITE=1 python3 -m pytest tests/test_golden.py
Float kernels differ between CPU instruction sets (AVX2, AVX512) and torch builds, and two epochs
of training turn their last-bit differences into about 1 % on a weight sum, so the record holds one
entry per machine kind (`machine_kind()`). On a kind with an entry, values are compared to 1e-5
(relative), and MIXBT_GOLDEN_EXACT=1 also compares the sha256 of every tensor (bit-identical on the
machine that recorded them). On a kind without one, the structure (every tensor's name, shape and
dtype, the CSV's columns and rows) is compared exactly and the losses to 15 %; record the kind with
MIXBT_GOLDEN_WRITE=1 on the code before a refactor to compare it bit-exactly after.
"""
import csv
import glob
import hashlib
import json
import os

import pytest
import torch

import fakedata
import main

GOLDEN = os.path.join(os.path.dirname(__file__), 'golden', 'golden.json')
COMMON = ['--visuals', 'false', '--dataset', 'cifar10', '--arch', 'resnet18', '--batch_size', '16', '--subset', '48', '--epochs', '2',
          '--workers', '0', '--seed', '7', '--knn_every', '1', '--k', '5', '--save_every', '0']
RUNS = {
    'mixbt': ['--method', 'mixbt', '--feature_dim', '32', '--lmbda', '0.0078125', '--mixup_loss_scale', '4.0',
              '--lr', '0.01', '--lr_shed', 'step'],
    'byol': ['--method', 'byol', '--emb', '16', '--head_size', '32', '--lr', '0.003', '--lr_shed', 'step',
             '--warmup_steps', '2'],
    'wmse': ['--method', 'wmse', '--emb', '4', '--head_size', '16', '--w_size', '8', '--w_eps', '0.0001',
             '--num_views', '4', '--lr', '0.003', '--lr_shed', 'step', '--warmup_steps', '2'],
}
VOLATILE = {'epoch_time', 'images_per_s', 'elapsed_s', 'eta_s'}  # wall-clock columns


def machine_kind():
    return f'{torch.backends.cpu.get_cpu_capability()} torch {torch.__version__}'


def tensors(obj, prefix=''):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from tensors(obj[k], f'{prefix}/{k}')
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f'{prefix}/{i}')


def summary(t):
    t = t.detach().cpu()
    flat = t.double().flatten() if t.is_floating_point() or t.dtype in (torch.int64, torch.int32) else None
    out = {'shape': list(t.shape), 'dtype': str(t.dtype),
           'sha256': hashlib.sha256(t.contiguous().numpy().tobytes() if t.dtype != torch.bfloat16
                                    else t.float().numpy().tobytes()).hexdigest()}
    if flat is not None and flat.numel():
        out.update(sum=flat.sum().item(), abs_sum=flat.abs().sum().item(), head=flat[:4].tolist())
    return out


def fingerprint(run_dir):
    state = torch.load(os.path.join(run_dir, 'last.pth'), map_location='cpu', weights_only=True)
    record = {name: summary(t) for part in ('model', 'method', 'optimizer')
              for name, t in tensors(state[part], part)}
    (stats,) = glob.glob(os.path.join(run_dir, '*_statistics.csv'))
    rows = [{k: float(v) for k, v in r.items() if v not in ('', None) and k not in VOLATILE}
            for r in csv.DictReader(open(stats))]
    return {'tensors': record, 'csv': rows, 'epoch': state['epoch']}


@pytest.fixture(scope='module')
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('golden-data')
    fakedata.write_cifar(str(root), n_train=48, n_test=24)
    return str(root)


@pytest.mark.slow
@pytest.mark.parametrize('method', sorted(RUNS))
def test_same_seed_gives_recorded_weights_and_csv(method, cifar_root, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as recorded: the thread count changes the order of float reductions
    try:
        run = main.main(COMMON + RUNS[method] + ['--data_root', cifar_root, '--results_dir', str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    got = fingerprint(run)
    records = json.load(open(GOLDEN))['records'] if os.path.isfile(GOLDEN) else {}
    if os.environ.get('MIXBT_GOLDEN_WRITE') == '1':
        records.setdefault(machine_kind(), {})[method] = got
        os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
        with open(GOLDEN, 'w') as f:
            json.dump({'records': records}, f, indent=1, sort_keys=True)
        pytest.skip(f'golden record written for {machine_kind()}')
    if method in records.get(machine_kind(), {}):
        compare_exactly(got, records[machine_kind()][method], os.environ.get('MIXBT_GOLDEN_EXACT') == '1')
    else:
        wanted = [r[method] for r in records.values() if method in r]
        assert wanted, f'{GOLDEN} holds no record of {method}'
        for want in wanted:
            compare_structure(got, want)


def compare_exactly(got, want, exact):
    assert got['epoch'] == want['epoch']
    assert sorted(got['tensors']) == sorted(want['tensors'])
    for name, w in want['tensors'].items():
        g = got['tensors'][name]
        assert (g['shape'], g['dtype']) == (w['shape'], w['dtype']), name
        if exact:
            assert g['sha256'] == w['sha256'], name
        for key in ('sum', 'abs_sum'):
            if key in w:
                assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-6), (name, key)
        if 'head' in w:
            assert g['head'] == pytest.approx(w['head'], rel=1e-5, abs=1e-6), name
    assert len(got['csv']) == len(want['csv'])
    for g, w in zip(got['csv'], want['csv']):
        assert set(w) <= set(g)
        for key, value in w.items():
            assert g[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def compare_structure(got, want):
    """Another machine kind: what the run saved and logged, exactly; its losses, to 15 %."""
    assert got['epoch'] == want['epoch']
    assert {k: (v['shape'], v['dtype']) for k, v in got['tensors'].items()} == \
        {k: (v['shape'], v['dtype']) for k, v in want['tensors'].items()}
    assert len(got['csv']) == len(want['csv']) and all(set(w) <= set(g) for g, w in zip(got['csv'], want['csv']))
    for g, w in zip(got['csv'], want['csv']):
        for key in w:
            if key == 'epoch' or key.startswith('loss') and abs(w[key]) > 1e-3:
                assert g[key] == pytest.approx(w[key], rel=0.15), key
