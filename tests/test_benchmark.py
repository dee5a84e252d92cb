"""benchmarks/throughput.py runs end to end on CPU and reports every number (no timing thresholds)."""
import json
import os
import subprocess
import sys


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
