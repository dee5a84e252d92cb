"""main.py end to end on CPU: run folder, statistics, plot, checkpoints, resume, bad input."""
import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from mixbt import data
import fakedata
import main
from mixbt import checkpoints as C
from mixbt import readers
import model as M

FAST = ['--visuals', 'false', '--arch', 'resnet18', '--feature_dim', '32', '--batch_size', '8', '--workers', '0', '--lr', '0.01',
        '--lr_shed', 'cosine', '--lmbda', '0.0078125', '--is_mixup', 'true', '--mixup_loss_scale', '4.0',
        '--knn_every', '1', '--k', '5']


@pytest.fixture
def fashion_root(tmp_path):
    """Real Fashion-MNIST from the Debian package when installed (CI installs it), else tiny idx files."""
    if os.path.isfile(os.path.join(readers.FASHION_MNIST_SYSTEM_DIR, 'train-images-idx3-ubyte.gz')):
        return str(tmp_path / 'no-local-copy')
    fakedata.write_mnist_like(str(tmp_path / 'data' / 'FashionMNIST' / 'raw'))
    return str(tmp_path / 'data')


def run_dir_of(results):
    (name,) = [d for d in os.listdir(results) if d != 'wandb']
    return os.path.join(results, name)


@pytest.mark.slow
def test_main_end_to_end_on_fashion_mnist_writes_run_folder(tmp_path, fashion_root, repo_root):
    results = str(tmp_path / 'results')
    cmd = [sys.executable, 'main.py', '--dataset', 'fashionmnist', '--data_root', fashion_root, '--subset', '32',
           '--epochs', '2', '--results_dir', results, '--save_every', '1', '--seed', '3', *FAST, '--visuals', 'true']
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, env={**os.environ, 'WANDB_MODE': 'disabled'})
    assert proc.returncode == 0, proc.stderr[-3000:]
    if importlib.util.find_spec('thop'):  # optional: the parameter and FLOP count of the original's log
        assert '# Model Params: 11.' in proc.stdout and 'FLOPs' in proc.stdout
    run = run_dir_of(results)
    run_id = os.path.basename(run)
    prefix = f'{run_id}_0.0078125_32_8_fashionmnist'
    files = set(os.listdir(run))
    assert {'args.json', 'last.pth', f'{prefix}_model.pth', f'{prefix}_model_1.pth', f'{prefix}_model_2.pth',
            f'{prefix}_statistics.csv', f'{prefix}_curves.png', f'{prefix}_retrievals.png',
            f'{prefix}_embedding.png'} <= files
    assert json.load(open(os.path.join(run, 'args.json')))['mixup_loss_scale'] == 4.0
    rows = list(csv.DictReader(open(os.path.join(run, f'{prefix}_statistics.csv'))))
    assert [r['epoch'] for r in rows] == ['1', '2']
    for r in rows:
        assert float(r['loss']) == pytest.approx(float(r['loss_bt']) + float(r['loss_mix']), rel=1e-5)
        assert float(r['loss_mix']) > 0
        assert 0 <= float(r['knn_top1']) <= float(r['knn_top5']) <= 100
    with open(os.path.join(run, f'{prefix}_curves.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    # The best-kNN file is a raw state dict in the released layout: the reference Model loads it strictly.
    state = torch.load(os.path.join(run, f'{prefix}_model.pth'), map_location='cpu')
    M.Model(32, 'resnet18', False).load_state_dict(state, strict=True)
    assert not any('total_ops' in k or 'total_params' in k for k in state)


def fingerprint(state):
    return {k: v.clone() for k, v in state.items()}


@pytest.mark.slow
def test_resume_after_kill_gives_identical_weights(tmp_path, fashion_root, monkeypatch):
    common = ['--dataset', 'fashionmnist', '--data_root', fashion_root, '--subset', '24', '--epochs', '2',
              '--knn_every', '0', '--save_every', '0', '--seed', '5', *FAST[:-4]]
    straight = main.main(common + ['--results_dir', str(tmp_path / 'a')])
    expected = torch.load(os.path.join(straight, 'last.pth'))

    real_epoch = main.train_one_epoch

    def killed_in_second_epoch(args, epoch, *rest):
        if epoch == 1:
            raise KeyboardInterrupt('simulated kill during epoch 2')
        return real_epoch(args, epoch, *rest)
    monkeypatch.setattr(main, 'train_one_epoch', killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        main.main(common + ['--results_dir', str(tmp_path / 'b')])
    interrupted = run_dir_of(str(tmp_path / 'b'))
    assert torch.load(os.path.join(interrupted, 'last.pth'))['epoch'] == 1
    monkeypatch.setattr(main, 'train_one_epoch', real_epoch)
    resumed = main.main(common + ['--results_dir', str(tmp_path / 'b'), '--resume', interrupted])
    assert resumed == interrupted
    got = torch.load(os.path.join(resumed, 'last.pth'))
    assert got['epoch'] == 2 and [r['epoch'] for r in got['history']] == [1, 2]
    for k, v in expected['model'].items():
        assert torch.equal(v, got['model'][k]), k
    assert expected['method'] == got['method']  # the mixup alpha generator continues identically


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, fashion_root, monkeypatch):
    from mixbt import losses
    args = ['--dataset', 'fashionmnist', '--data_root', fashion_root, '--subset', '16', '--epochs', '3',
            '--results_dir', str(tmp_path), *FAST]
    real = losses.barlow_twins_loss
    calls = {'n': 0}

    def poisoned(*a, **k):
        calls['n'] += 1
        value = real(*a, **k)
        return value * float('nan') if calls['n'] > 2 else value  # 2 steps per epoch: NaN in epoch 2
    monkeypatch.setattr(losses, 'barlow_twins_loss', poisoned)
    with pytest.raises(main.NonFiniteLoss, match='epoch 2'):
        main.main(args)
    run = run_dir_of(str(tmp_path))
    state = torch.load(os.path.join(run, 'last.pth'))
    assert state['epoch'] == 1 and all(torch.isfinite(v).all() for v in state['model'].values() if v.is_floating_point())
    (best,) = [f for f in os.listdir(run) if f.endswith('_model.pth')]
    M.Model(32, 'resnet18', False).load_state_dict(torch.load(os.path.join(run, best)), strict=True)


def run_cli(args, repo_root):
    return subprocess.run([sys.executable, 'main.py', *args], cwd=repo_root, capture_output=True, text=True,
                          env={**os.environ, 'WANDB_MODE': 'disabled'})


def test_missing_data_root_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main.cli(['--dataset', 'cifar10', '--data_root', str(tmp_path / 'nowhere'), '--epochs', '1',
                  '--results_dir', str(tmp_path / 'results')])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.startswith('error: ') and err.count('\n') <= 2
    assert 'cifar-10-batches-py' in err and str(tmp_path / 'nowhere') in err
    assert not os.path.exists(tmp_path / 'results')  # nothing made for a run that cannot start


def test_unknown_data_set_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_:
        main.cli(['--dataset', 'mnist10'])
    assert exit_.value.code == 2 and "invalid choice: 'mnist10'" in capsys.readouterr().err


@pytest.mark.slow
def test_corrupt_resume_checkpoint_is_a_clear_error(tmp_path, repo_root):
    bad = tmp_path / 'last.pth'
    bad.write_bytes(b'\x00' * 100)
    proc = run_cli(['--dataset', 'fashionmnist', '--resume', str(tmp_path)], repo_root)
    assert proc.returncode == 1 and 'not a readable PyTorch checkpoint' in proc.stderr and str(bad) in proc.stderr
    assert 'Traceback' not in proc.stderr
    with pytest.raises(C.CheckpointError, match='--resume: no last.pth at'):
        main.main(['--dataset', 'fashionmnist', '--resume', str(tmp_path / 'absent')])
    torch.save({'f.0.weight': torch.zeros(1)}, bad)
    with pytest.raises(C.CheckpointError, match='not a training state written by main.py'):
        main.main(['--dataset', 'fashionmnist', '--resume', str(bad)])


@pytest.mark.slow
def test_resume_refuses_a_different_experiment_and_reports_schedule_changes(tmp_path, fashion_root, capsys):
    common = ['--dataset', 'fashionmnist', '--data_root', fashion_root, '--subset', '16', '--knn_every', '0',
              '--save_every', '0', '--results_dir', str(tmp_path), *FAST[:-4]]
    run = main.main(common + ['--epochs', '1'])
    with pytest.raises(C.CheckpointError, match=r'--lmbda 0\.0078125 -> 0\.005.*args\.json'):
        main.main(common + ['--epochs', '2', '--resume', run, '--lmbda', '0.005'])
    with pytest.raises(C.CheckpointError, match=r'--is_mixup True -> False'):
        main.main(common + ['--epochs', '2', '--resume', run, '--is_mixup', 'false'])
    capsys.readouterr()
    assert main.main(common + ['--epochs', '2', '--resume', run]) == run
    assert 'with changed settings: --epochs 1 -> 2' in capsys.readouterr().out


def test_atomic_save_keeps_the_old_file_when_a_write_fails(tmp_path):
    from mixbt.saving import atomic_save

    class FailsHalfway:
        def __reduce__(self):
            raise OSError('No space left on device')
    path = tmp_path / 'last.pth'
    atomic_save({'epoch': 1}, str(path))
    with pytest.raises(C.CheckpointError, match=r'could not write .*No space left.*the previous file is intact'):
        atomic_save({'epoch': 2, 'broken': FailsHalfway()}, str(path))
    assert torch.load(path) == {'epoch': 1} and os.listdir(tmp_path) == ['last.pth']  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # as open() would create it, not mkstemp's 0600


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    import random
    import numpy as np
    from mixbt.saving import atomic_save
    from mixbt.runtime import rng_state, set_rng_state
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    np.random.randn()  # a cached Gaussian is part of NumPy's state too
    atomic_save({'rng': rng_state()}, tmp_path / 'rng.pth')
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    set_rng_state(torch.load(tmp_path / 'rng.pth', weights_only=True)['rng'])
    assert (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()) == expected
    legacy = {**rng_state(), 'numpy': np.random.get_state()}  # files written before: a NumPy array
    expected = np.random.randn(3).tolist()
    set_rng_state(legacy)
    assert np.random.randn(3).tolist() == expected


@pytest.mark.slow
def test_knn_init_logs_the_random_init_baseline_as_epoch_0_and_leaves_training_alone(tmp_path, fashion_root):
    from mixbt import knn
    from mixbt.runtime import seed_everything
    common = ['--dataset', 'fashionmnist', '--data_root', fashion_root, '--subset', '24', '--epochs', '1',
              '--save_every', '0', '--seed', '2', *FAST]
    with_init = main.main(common + ['--results_dir', str(tmp_path / 'a'), '--knn_init'])
    without = main.main(common + ['--results_dir', str(tmp_path / 'b')])
    (stats,) = [f for f in os.listdir(with_init) if f.endswith('_statistics.csv')]
    rows = list(csv.DictReader(open(os.path.join(with_init, stats))))
    assert [r['epoch'] for r in rows] == ['0', '1'] and rows[0]['loss'] == '' and rows[1]['loss'] != ''

    # Epoch 0 is the kNN of the backbone main.py builds from the seed, before any step.
    args = main.get_args(common + ['--gpu', '-1'])
    seed_everything(args.seed)
    fresh = main.build_model(args)
    _, memory, test = main.load_data(args)
    spec = data.SPECS['fashionmnist']
    top1, top5 = knn.knn_monitor(fresh.f, memory, test, spec.mean, spec.std, 10, torch.device('cpu'), k=5)
    assert (float(rows[0]['knn_top1']), float(rows[0]['knn_top5'])) == pytest.approx((top1, top5))

    # The extra evaluation changes nothing else: same weights, and the best model is a trained one.
    a = torch.load(os.path.join(with_init, 'last.pth'))
    b = torch.load(os.path.join(without, 'last.pth'))
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in b['model'])
    assert a['best_acc']['epoch'] == 1
