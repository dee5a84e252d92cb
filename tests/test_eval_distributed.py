"""The probes (linear.py --no_aug with --probe_bn eval or train, transfer.py) under torchrun, 2
gloo processes on the CPU, against one process on the same data: it must finish
(every rank takes part in every step, even where its part of the last batch is empty) and train
the same classifier on every sample (a global batch that the world size does not divide loses
nothing)."""
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

import fakedata
import linear
from test_eval import released_checkpoint

pytestmark = pytest.mark.slow  # several real processes

BATCH = 5  # odd: not divisible by 2 processes
N_TRAIN = 21  # 4 full batches + 1 sample: the second rank's part of the last batch is empty
N_TEST = 11


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def torchrun(script, args, repo_root, nproc=2, timeout=240):
    """Run `script` under torchrun; a run that does not finish in time (a deadlock: the ranks'
    collectives no longer line up) fails the test, and its processes are stopped."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc), '--master_port',
           str(free_port()), script, *args]
    env = {**os.environ, 'WANDB_MODE': 'disabled', 'OMP_NUM_THREADS': '1'}
    proc = subprocess.Popen(cmd, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun stops its workers on SIGTERM (they run in sessions of their own)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = '', ''
        pytest.fail(f'{script} under torchrun did not finish in {timeout} s (deadlock?)\n{err[-4000:]}')
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def assert_same_run(single_dir, multi_dir):
    a = torch.load(os.path.join(single_dir, 'checkpoint.pth'))
    b = torch.load(os.path.join(multi_dir, 'checkpoint.pth'))
    for k in a['fc']:
        torch.testing.assert_close(b['fc'][k], a['fc'][k], rtol=1e-4, atol=1e-6, msg=k)
    assert len(a['history']) == len(b['history'])
    for ra, rb in zip(a['history'], b['history']):
        for key in ('train_loss', 'test_loss'):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), key
        for key in ('train_acc@1', 'train_acc@5', 'test_acc@1', 'test_acc@5'):
            assert rb[key] == pytest.approx(ra[key]), key  # every sample counted, on both sides


def test_linear_no_aug_two_processes_equal_one_process(tmp_path, repo_root):
    fakedata.write_cifar(str(tmp_path / 'data'), 'cifar10', n_train=N_TRAIN, n_test=N_TEST)
    path, _ = released_checkpoint(tmp_path)
    args = ['--dataset', 'cifar10', '--model_path', path, '--data_root', str(tmp_path / 'data'), '--no_aug',
            '--probe_bn', 'eval',
            '--epochs', '3', '--batch_size', str(BATCH), '--workers', '0', '--gpu', '-1']
    single = linear.main(args + ['--results_dir', str(tmp_path / 'one'), '--run_name', 'run'])
    proc = torchrun('linear.py', args + ['--results_dir', str(tmp_path / 'two'), '--run_name', 'run'], repo_root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same_run(single['run_dir'], tmp_path / 'two' / 'run')


def test_linear_with_the_backbone_batchnorm_in_train_mode_two_processes_equal_one_process(tmp_path, repo_root):
    """--probe_bn train (the original's, the default): the frozen backbone normalises each global
    batch with its statistics over all processes and updates its running statistics with them,
    as one process does (a batch every process divides, unaugmented inputs)."""
    fakedata.write_cifar(str(tmp_path / 'data'), 'cifar10', n_train=24, n_test=N_TEST)
    path, _ = released_checkpoint(tmp_path)
    args = ['--dataset', 'cifar10', '--model_path', path, '--data_root', str(tmp_path / 'data'), '--no_aug',
            '--probe_bn', 'train', '--epochs', '2', '--batch_size', '8', '--workers', '0', '--gpu', '-1']
    single = linear.main(args + ['--results_dir', str(tmp_path / 'one'), '--run_name', 'run'])
    proc = torchrun('linear.py', args + ['--results_dir', str(tmp_path / 'two'), '--run_name', 'run'], repo_root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same_run(single['run_dir'], tmp_path / 'two' / 'run')


def test_transfer_two_processes_equal_one_process(tmp_path, repo_root):
    import transfer
    fakedata.write_dtd(str(tmp_path / 'data'), per_split=4)  # train+val 24, test 12; --subset 21
    path, _ = released_checkpoint(tmp_path, dataset='stl10')
    args = ['--dataset', 'stl10', '--transfer_dataset', 'dtd', '--model_path', path, '--data_root',
            str(tmp_path / 'data'), '--subset', str(N_TRAIN), '--epochs', '3', '--batch_size', str(BATCH),
            '--workers', '0', '--gpu', '-1', '--probe_bn', 'eval']
    single = transfer.main(args + ['--results_dir', str(tmp_path / 'one'), '--run_name', 'run'])
    proc = torchrun('transfer.py', args + ['--results_dir', str(tmp_path / 'two'), '--run_name', 'run'], repo_root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same_run(single['run_dir'], tmp_path / 'two' / 'run')
