"""benchmarks/throughput.py runs end to end on CPU and reports every number (no timing thresholds);
its CUDA-only branches (device set-up, autocast dtype and GradScaler) are unit-tested without a GPU."""
import importlib.util
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import utils


def test_throughput_benchmark_prints_one_json_object_with_positive_rates(repo_root):
    cmd = [sys.executable, os.path.join('benchmarks', 'throughput.py'), '--device', 'cpu', '--batch_size', '4',
           '--steps', '1', '--warmup', '1', '--workers', '1', '--threads', '1', '--feature_dim', '32',
           '--data_root', os.path.join(repo_root, 'no-data-here')]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'WANDB_MODE': 'disabled'})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)  # the whole of stdout is the one object
    assert out['device'] == 'cpu' and out['batch_size'] == 4 and out['data'].startswith('random uint8')
    rates = [out['aug_images_per_s']['pil_workers'], out['aug_images_per_s']['device'], out['aug_speedup'],
             out['train_images_per_s']['reference'], out['train_images_per_s']['ours'], out['train_speedup'],
             out['epoch_time_50k_s']['reference'], out['epoch_time_50k_s']['ours'], out['train_flops_per_image']]
    assert all(isinstance(r, float) and r > 0 for r in rates), rates
    assert out['reference'] == {'aug': 'cpu', 'fuse_views': False, 'channels_last': False, 'precision': 'fp32',
                                'compile': False}
    assert out['ours']['aug'] == 'gpu' and out['ours']['fuse_views'] is True
    # ResNet-18, 32x32, CIFAR stem: ~0.56 GMACs forward; x2 FLOPs, x3 fwd+bwd, x3 views (mixup).
    assert 9e9 < out['train_flops_per_image'] < 11e9
    assert 'mfu' not in out  # only on CUDA, where a peak is meaningful


# The CUDA-only branches, exercised without a GPU: the CPU run above never reaches them.
@pytest.fixture
def bench(repo_root):
    spec = importlib.util.spec_from_file_location('throughput', os.path.join(repo_root, 'benchmarks', 'throughput.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
