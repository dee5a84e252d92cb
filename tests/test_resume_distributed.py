"""A 2-process run killed mid-epoch and started again ends with the weights of the uninterrupted
run: every rank continues its own random stream (augmentation, mixup permutation)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import fakedata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torchrun(args, results, run_name):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', 'main.py',
           *args, '--results_dir', str(results), '--run_name', run_name]
    env = {**os.environ, 'WANDB_MODE': 'disabled', 'OMP_NUM_THREADS': '1'}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def children(pid):
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    if int(f.read().rsplit(')', 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return sorted(found)


def epoch_of(path):
    try:
        return torch.load(path, map_location='cpu', weights_only=True)['epoch']
    except Exception:  # not there yet, or being replaced
        return 0


@pytest.mark.slow
def test_two_process_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    fakedata.write_cifar(str(tmp_path / 'data'), n_train=32, n_test=8)
    args = ['--dataset', 'cifar10', '--data_root', str(tmp_path / 'data'), '--arch', 'resnet18', '--feature_dim', '16',
            '--batch_size', '8', '--subset', '32', '--epochs', '2', '--visuals', 'false', '--workers', '0', '--knn_every', '0',
            '--save_every', '0', '--k', '5', '--lr', '0.001', '--lmbda', '0.0078125', '--is_mixup', 'true',
            '--seed', '4']
    straight = torchrun(args, tmp_path / 'a', 'r')
    out, _ = straight.communicate(timeout=900)
    assert straight.returncode == 0, out[-3000:]

    state = tmp_path / 'b' / 'r' / 'last.pth'
    killed = torchrun(args, tmp_path / 'b', 'r')
    deadline = time.time() + 900
    while epoch_of(state) < 1 and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert killed.poll() is None, 'the run ended before it could be killed'
    os.kill(children(killed.pid)[-1], signal.SIGKILL)  # one rank dies; torchrun stops the other
    killed.communicate(timeout=300)
    assert killed.returncode != 0
    assert epoch_of(state) == 1  # killed in epoch 2
    resumed = torchrun(args, tmp_path / 'b', 'r')
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out[-3000:]
    assert 'Resumed' in out

    want = torch.load(tmp_path / 'a' / 'r' / 'last.pth', weights_only=True)
    got = torch.load(state, weights_only=True)
    assert got['epoch'] == want['epoch'] == 2
    for k, v in want['model'].items():
        assert torch.equal(v, got['model'][k]), k
    assert len(got['rng_per_rank']) == 2
