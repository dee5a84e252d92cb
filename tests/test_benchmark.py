"""benchmarks/throughput.py runs end to end on CPU and reports every number (no timing thresholds);
its reference-style baseline is the reference's own training loop, fed as the reference fed it
(16 workers on CUDA); its ratios are medians of interleaved rounds; its CUDA-only branches (device
set-up, autocast dtype and GradScaler) are unit-tested without a GPU. benchmarks/gpu_check.sh,
the one-shot GPU check, runs on CPU with tiny settings and writes its files, also when a stage fails."""
import copy
import csv
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from mixbt import runtime as utils


def load(repo_root, name):
    return importlib.import_module(f'benchmarks.{name}')


@pytest.fixture
def bench(repo_root):
    return load(repo_root, 'throughput')


@pytest.fixture
def check(repo_root):
    return load(repo_root, 'gpu_check')


@pytest.mark.slow
def test_throughput_benchmark_prints_one_json_object_with_positive_rates(repo_root, tmp_path):
    out_file = tmp_path / 'throughput.json'
    cmd = [sys.executable, '-m', 'benchmarks.throughput', '--device', 'cpu', '--batch_size', '4',
           '--steps', '1', '--warmup', '1', '--workers', '1', '--threads', '1', '--feature_dim', '32',
           '--rounds', '1', '--data_root', os.path.join(repo_root, 'no-data-here'), '--out', str(out_file)]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'WANDB_MODE': 'disabled'})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)  # the whole of stdout is the one object
    assert json.loads(out_file.read_text()) == out
    assert out['device'] == 'cpu' and out['batch_size'] == 4 and out['data'].startswith('random uint8')
    assert out['workers'] == 1 and out['rounds_run'] == out['rounds_asked'] == 1 and len(out['rounds']) == 1
    assert out['complete'] is True
    rates = [out['aug_images_per_s']['reference'], out['aug_images_per_s']['ours'], out['aug_speedup'],
             out['train_images_per_s']['reference'], out['train_images_per_s']['ours'], out['train_speedup'],
             out['epoch_time_50k_s']['reference'], out['epoch_time_50k_s']['ours'], out['train_flops_per_image']]
    assert all(isinstance(r, float) and r > 0 for r in rates), rates
    assert out['reference'] == {'loop': 'reference train()', 'aug': 'cpu', 'workers': 1, 'pin_memory': False,
                                'fuse_views': False, 'channels_last': False, 'precision': 'fp32', 'compile': False,
                                'host_syncs_per_step': 3}
    assert out['ours']['aug'] == 'gpu' and out['ours']['fuse_views'] is True
    assert out['ours']['loop'] == 'main.train_one_epoch'
    # ResNet-18, 32x32, CIFAR stem: ~0.56 GMACs forward; x2 FLOPs, x3 fwd+bwd, x3 views (mixup).
    assert 9e9 < out['train_flops_per_image'] < 11e9
    assert 'mfu' not in out  # only on CUDA, where a peak is meaningful
    assert 'round 1/1: data path reference' in proc.stderr and 'median of 1 rounds' in proc.stderr
    # the reference loop's own progress bar, redrawn every step as the reference's was
    assert 'Train Epoch: [1/1]' in proc.stderr and 'bsz:4 f_dim:32 dataset: cifar10' in proc.stderr


def test_ratios_are_medians_of_interleaved_rounds(bench, monkeypatch, capsys, tmp_path):
    """reference, ours, reference, ours, ... each measured with the same warm-up and steps; every round
    printed and kept in the JSON (--out rewritten after each round), the reported rates and ratios the
    medians over the rounds."""
    calls, written = [], []
    speeds = iter([10.0, 30.0, 1.0, 5.0,    # round 1: data path x3, training x5
                   10.0, 20.0, 1.0, 2.0,    # round 2: x2, x2
                   10.0, 60.0, 1.0, 3.0])   # round 3: x6, x3

    def data_path_rate(args, train, device, ours):
        calls.append(('data', 'ours' if ours else 'reference', args.warmup, args.steps))
        return next(speeds)

    def reference_training_rate(args, train, device):
        calls.append(('train', 'reference', args.warmup, args.steps))
        return next(speeds), {'loop': 'reference train()'}

    def training_rate(args, train, device, count_flops=True):
        calls.append(('train', 'ours', args.warmup, args.steps))
        return next(speeds), (1e10 if count_flops else None), {'loop': 'main.train_one_epoch'}

    monkeypatch.setattr(bench, 'data_path_rate', data_path_rate)
    monkeypatch.setattr(bench, 'reference_training_rate', reference_training_rate)
    monkeypatch.setattr(bench, 'training_rate', training_rate)
    monkeypatch.setattr(bench, 'write_json', lambda path, out: written.append((path, out['rounds_run'],
                                                                             out['complete'], out['train_speedup'])))
    out = bench.run(['--device', 'cpu', '--batch_size', '4', '--steps', '3', '--warmup', '2', '--rounds', '3',
                     '--data_root', 'no-data-here', '--out', str(tmp_path / 't.json')])
    assert written == [(str(tmp_path / 't.json'), 1, False, 5.0), (str(tmp_path / 't.json'), 2, False, 3.5),
                       (str(tmp_path / 't.json'), 3, True, 3.0)]
    assert calls == [(kind, side, 2, 3) for _ in range(3) for kind in ('data', 'train')
                     for side in ('reference', 'ours')]
    assert [r['train_speedup'] for r in out['rounds']] == [5.0, 2.0, 3.0]
    assert out['train_speedup'] == 3.0 == statistics.median([5.0, 2.0, 3.0])
    assert out['aug_speedup'] == 3.0 and out['aug_images_per_s'] == {'reference': 10.0, 'ours': 30.0}
    assert out['train_images_per_s'] == {'reference': 1.0, 'ours': 3.0}
    assert out['epoch_time_50k_s'] == {'reference': 50000.0, 'ours': 50000 / 3.0}
    assert out['train_flops_per_image'] == 1e10 and out['rounds_run'] == 3
    err = capsys.readouterr().err
    assert [line.split(':')[0] for line in err.splitlines() if line.startswith('round')] == \
        ['round 1/3', 'round 2/3', 'round 3/3']
    assert 'median of 3 rounds: data path x3.00 | training reference 1.0 img/s, ours 3.0 img/s, x3.00' in err


def test_profile_lists_the_costliest_operations_of_the_on_device_views(bench, repo_root):
    args = bench.get_args(['--device', 'cpu', '--batch_size', '8', '--steps', '2', '--warmup', '1', '--skip_train',
                           '--profile', '2', '--data_root', os.path.join(repo_root, 'no-data-here')])
    train, _ = bench.training_set(args, 8 * 3)
    rows = bench.profile_views(args, train, torch.device('cpu'), args.profile)
    costs = [r['self_cpu_ms_per_step'] for r in rows]
    assert 0 < len(rows) <= 15 and costs == sorted(costs, reverse=True) and costs[0] > 0
    assert all(r['calls_per_step'] > 0 for r in rows)
    # resampling or the colour tables lead (which of the two is first depends on the load of the machine)
    assert {'aten::bmm', 'aten::index_select'} & {r['op'] for r in rows}


def test_a_busy_machine_is_recorded_and_named_on_stderr(bench, monkeypatch, capsys):
    monkeypatch.setattr(bench.os, 'cpu_count', lambda: 2)
    monkeypatch.setattr(bench.os, 'getloadavg', lambda: (7.5, 6.0, 5.0))
    monkeypatch.delenv('OMP_WAIT_POLICY', raising=False)
    assert bench.busy_note() == 7.5 and 'OMP_WAIT_POLICY=PASSIVE' in capsys.readouterr().err
    monkeypatch.setenv('OMP_WAIT_POLICY', 'passive')  # the remedy taken: nothing to say
    assert bench.busy_note() == 7.5 and capsys.readouterr().err == ''
    monkeypatch.setattr(bench.os, 'getloadavg', lambda: (1.0, 1.0, 1.0))
    monkeypatch.delenv('OMP_WAIT_POLICY')
    assert bench.busy_note() == 1.0 and capsys.readouterr().err == ''


def test_reference_workers_default_to_the_references_16_on_cuda(bench, monkeypatch):
    """16 DataLoader workers with pinned memory on a GPU, as the reference ran (fewer on a machine with
    fewer cores); on a CPU the benchmark's 2; --workers overrides both."""
    assert bench.default_workers('cuda', cpus=64) == 16
    assert bench.default_workers('cuda', cpus=8) == 8
    assert bench.default_workers('cpu', cpus=64) == 2 and bench.default_workers('cpu', cpus=1) == 1
    monkeypatch.setattr(os, 'cpu_count', lambda: 32)
    assert bench.get_args(['--device', 'cuda']).workers == 16
    assert bench.get_args(['--device', 'cpu']).workers == 2
    assert bench.get_args(['--device', 'cuda', '--workers', '4']).workers == 4
    args = bench.get_args(['--device', 'cpu', '--small', '--steps', '1'])  # --small fills only what is not given
    assert (args.batch_size, args.steps, args.warmup, args.rounds) == (32, 1, 2, 3)


def test_reference_loader_is_the_references(bench, repo_root):
    from benchmarks import reference_loop
    args = bench.get_args(['--device', 'cpu', '--batch_size', '4', '--feature_dim', '32'])
    train, _ = bench.training_set(args, 10)
    loader = reference_loop.reference_loader(bench.trainer_args(args, ours=False), train, torch.device('cpu'), 1)
    assert (loader.num_workers, loader.pin_memory, loader.drop_last, loader.batch_size) == (1, False, True, 4)
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)  # shuffle=True
    assert len(loader) == 2
    (pos_1, pos_2), labels = next(iter(loader))
    assert pos_1.shape == pos_2.shape == (4, 3, 32, 32) and pos_1.dtype == torch.float32 and labels.shape == (4,)


def test_reference_loop_computes_the_mixbt_loss_of_our_method(bench):
    """The baseline does the same work as ours: for equal weights, views, alpha and permutation, the
    reference's inline loss (six cross-correlations) equals methods.MixBT's, unfused."""
    from benchmarks import reference_loop
    from mixbt.methods import METHODS
    from model import build_model
    args = bench.get_args(['--device', 'cpu', '--batch_size', '4', '--feature_dim', '16'])
    targs = bench.trainer_args(args, ours=False)
    torch.manual_seed(0)
    net = build_model(targs)
    method = METHODS[targs.method].build(targs, copy.deepcopy(net))
    views = (torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))
    batch = (views, torch.zeros(4, dtype=torch.int64))

    np.random.seed(3)
    alpha = np.random.beta(1.0, 1.0)
    torch.manual_seed(4)
    perm = torch.randperm(4)
    np.random.seed(3)
    torch.manual_seed(4)
    _, _, ref_loss = reference_loop.train(targs, 1, net, [batch], reference_loop.reference_optimizer(net),
                                          torch.device('cpu'))
    method.draw_mixup = lambda n, device: (torch.tensor(alpha, dtype=torch.float32), perm)
    ours, logs = method(list(views))
    assert ours.item() == pytest.approx(ref_loss, rel=1e-5)
    assert logs['loss_mix'].item() > 0


@pytest.mark.parametrize('bf16_supported,expected', [(True, torch.bfloat16), (False, torch.float16)])
def test_mixed_precision_on_cuda_is_main_pys(bench, monkeypatch, bf16_supported, expected):
    """Ours: --precision auto = bf16, or fp16 with a GradScaler; the reference setting: fp32, no scaler."""
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: bf16_supported)
    cuda = torch.device('cuda', 0)
    args = bench.get_args(['--device', 'cuda'])
    ours = bench.trainer_args(args, ours=True)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a GradScaler without CUDA disables itself, with a warning
        amp_dtype, scaler = bench.mixed_precision(ours, cuda)
    assert amp_dtype == expected == utils.autocast_dtype(ours.precision, cuda)
    assert isinstance(scaler, torch.amp.GradScaler) if expected == torch.float16 else scaler is None
    assert bench.mixed_precision(bench.trainer_args(args, ours=False), cuda) == (None, None)


def test_cuda_device_gets_an_index_before_set_device(bench, monkeypatch):
    """torch.cuda.set_device refuses a bare 'cuda' (the default --device); the benchmark resolves it."""
    current = []
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    # the real argument check of set_device, which needs no GPU
    monkeypatch.setattr(torch.cuda, 'set_device', lambda d: current.append(torch.cuda._utils._get_device_index(d)))
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', torch.backends.cudnn.benchmark)
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', torch.backends.cudnn.allow_tf32)
    assert bench.setup_device('cuda') == torch.device('cuda', 0)
    assert bench.setup_device('cuda:1') == torch.device('cuda', 1)
    assert current == [0, 1] and torch.backends.cudnn.benchmark
    assert bench.setup_device('cpu') == torch.device('cpu') and current == [0, 1]


# ---------------------------------------------------------------------------- gpu_check
def test_gpu_check_plan_fits_the_time_left(check):
    """At 25k img/s a full Fashion-MNIST epoch is ~2.4 s: the most epochs (<= the cap) whose training and
    kNN evaluations fit, about ten evaluations; more time never plans fewer epochs."""
    epochs, every, needed = check.plan_epochs(25000, 10000, 60000, 10000, 256, max_epochs=100)
    assert (epochs, every) == (100, 10) and needed <= 10000
    epochs, every, needed = check.plan_epochs(25000, 300, 60000, 10000, 256, max_epochs=100)
    assert 40 < epochs < 100 and needed <= 300 and every == -(-epochs // 10)
    assert check.plan_epochs(25000, 301, 60000, 10000, 256)[0] >= epochs
    assert check.plan_epochs(25000, check.plan_epochs(25000, 300, 60000, 10000, 256)[2], 60000, 10000,
                             256)[0] == epochs
    assert check.plan_epochs(10, 5, 60000, 10000, 256)[:2] == (1, 1)  # nothing fits: one epoch, the limit decides
    with pytest.raises(ValueError):
        check.plan_epochs(0, 300, 60000, 10000, 256)


def test_gpu_check_summary_reads_what_the_stages_left(check, tmp_path):
    rows = [{'epoch': 0, 'knn_top1': 77.5, 'images_per_s': '', 'elapsed_s': ''},
            {'epoch': 1, 'knn_top1': '', 'images_per_s': 900.0, 'elapsed_s': 3.0},
            {'epoch': 2, 'knn_top1': 80.0, 'images_per_s': 1000.0, 'elapsed_s': 6.0},
            {'epoch': 3, 'knn_top1': 79.0, 'images_per_s': 1100.0, 'elapsed_s': 9.0}]
    with open(tmp_path / 'fashionmnist_statistics.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    stages = {'throughput': {'status': 'failed', 'rc': 1, 'seconds': 4}}
    s = check.summarize(str(tmp_path), stages, [3, 1, 2.0])
    assert json.loads((tmp_path / 'summary.json').read_text()) == s
    assert (s['epochs_run'], s['init_knn_top1'], s['best_knn_top1'], s['best_epoch'], s['last_knn_top1']) == \
        (3, 77.5, 80.0, 2, 79.0)
    assert s['knn_gain'] == pytest.approx(2.5) and s['run_images_per_s'] == 1000.0 and s['run_elapsed_s'] == 9.0
    assert s['images_per_s'] is None and s['ratio'] is None and s['stages'] == stages  # no throughput.json
    line = check.one_line(s)
    assert 'kNN 77.50 random init -> 80.00 best (+2.50)' in line and 'throughput failed' in line
    assert check.parse_stage('fashionmnist=timeout:124:300') == \
        ('fashionmnist', {'status': 'timeout', 'rc': 124, 'seconds': 300})


def run_gpu_check(repo_root, out, **env):
    tiny = {'OUT': str(out), 'PYTHON': sys.executable, 'WANDB_MODE': 'disabled', 'GPU_CHECK_DEVICE': 'cpu',
            'GPU_CHECK_BUDGET_S': '500', 'GPU_CHECK_SUBSET': '32', 'GPU_CHECK_BATCH': '16',
            'GPU_CHECK_FEATURE_DIM': '32', 'GPU_CHECK_MAX_EPOCHS': '1', 'GPU_CHECK_RUN_ARGS': '--aug gpu --workers 0',
            'GPU_CHECK_BENCH_ARGS': '--batch_size 4 --steps 1 --warmup 1 --feature_dim 32 --workers 1 --threads 1'}
    return subprocess.run(['bash', os.path.join(repo_root, 'benchmarks', 'gpu_check.sh')], cwd=repo_root,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **tiny, **env})


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_with_tiny_settings_and_writes_its_files(repo_root, tmp_path):
    out = tmp_path / 'out'
    proc = run_gpu_check(repo_root, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ['env.log', 'fashionmnist.log', 'fashionmnist_curves.png',
                                       'fashionmnist_statistics.csv', 'summary.json', 'throughput.json',
                                       'throughput.log']
    bench = json.loads((out / 'throughput.json').read_text())
    assert bench['rounds_run'] == 3 and len(bench['rounds']) == 3 and bench['train_speedup'] > 0
    assert (out / 'fashionmnist_curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    with open(out / 'fashionmnist_statistics.csv', newline='') as f:
        epochs = [int(float(r['epoch'])) for r in csv.DictReader(f)]
    assert epochs == [0, 1]  # --knn_init's random-init row, then the planned epoch
    s = json.loads((out / 'summary.json').read_text())
    assert s['images_per_s'] == bench['train_images_per_s']['ours'] and s['ratio'] == bench['train_speedup']
    assert s['epochs_planned'] == s['epochs_run'] == 1 and s['knn_every'] == 1
    assert s['init_knn_top1'] is not None and s['best_knn_top1'] is not None
    assert s['knn_gain'] == pytest.approx(s['best_knn_top1'] - s['init_knn_top1'])
    assert {k: v['status'] for k, v in s['stages'].items()} == {'throughput': 'ok', 'fashionmnist': 'ok'}
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith('gpu_check cpu | train ') and 'stages throughput ok, fashionmnist ok' in last
    assert 'round 3/3: data path reference' in proc.stdout and 'median of 3 rounds' in proc.stdout
    assert not list(out.glob('*.pth')) and not list(out.glob('*.tmp'))


@pytest.mark.slow
def test_gpu_check_keeps_the_other_stages_when_one_fails(repo_root, tmp_path):
    out = tmp_path / 'out'
    proc = run_gpu_check(repo_root, out, GPU_CHECK_BENCH_ARGS='--skip_train --batch_size 4 --steps 1 --warmup 1 '
                                                              '--workers 0 --rounds 1',
                         GPU_CHECK_RUN_ARGS='--lr -1')  # main.py refuses it: the run stage fails at once
    assert proc.returncode == 1
    assert 'fashionmnist: failed' in proc.stdout and '--lr -1.0 must be a positive number' in proc.stdout
    assert json.loads((out / 'throughput.json').read_text())['aug_speedup'] > 0
    s = json.loads((out / 'summary.json').read_text())
    assert {k: v['status'] for k, v in s['stages'].items()} == {'throughput': 'ok', 'fashionmnist': 'failed'}
    assert s['epochs_run'] is None and s['knn_gain'] is None and s['plan_images_per_s'] == 2  # the CPU fallback
    assert proc.stdout.strip().splitlines()[-1].endswith('stages throughput ok, fashionmnist failed')
