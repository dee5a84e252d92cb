"""What a hostile user does: each case failed silently (or with a raw traceback) before, and now
gives either the right result or one clear error, with nothing lost and no stray folder."""
import errno
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from mixbt import checkpoints as C
from mixbt import saving
import fakedata
import linear
import main
import model as M
import transfer
from mixbt.errors import MixBTError
from mixbt.runtime import run_command

TINY = ['--visuals', 'false', '--dataset', 'cifar10', '--arch', 'resnet18', '--feature_dim', '16', '--batch_size', '8', '--subset', '16',
        '--workers', '0', '--knn_every', '0', '--save_every', '0', '--k', '5', '--lr', '0.001',
        '--lmbda', '0.0078125', '--is_mixup', 'true']


@pytest.fixture(scope='module')
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('fault-data')
    fakedata.write_cifar(str(root), n_train=16, n_test=8)
    return str(root)


def common(cifar_root, results, *extra):
    return TINY + ['--data_root', cifar_root, '--results_dir', str(results), *extra]


# ------------------------------------------------------------------ 1. resume with a changed lr
@pytest.mark.slow
def test_resume_with_a_changed_lr_trains_with_it_and_records_it(cifar_root, tmp_path, monkeypatch):
    main.main(common(cifar_root, tmp_path, '--epochs', '1', '--run_name', 'r'))
    seen = []
    real = main.train_one_epoch

    def spy(args, epoch, ddp_method, method, optimizer, *rest):
        out = real(args, epoch, ddp_method, method, optimizer, *rest)
        seen.append((optimizer.param_groups[0]['base_lr'], optimizer.param_groups[0]['weight_decay']))
        return out
    monkeypatch.setattr(main, 'train_one_epoch', spy)
    run = main.main(common(cifar_root, tmp_path, '--epochs', '2', '--run_name', 'r', '--lr', '0.0005',
                           '--weight_decay', '0.001'))
    assert seen == [(0.0005, 0.001)]  # step schedule: base lr = --lr; the optimizer uses the new values
    state = torch.load(os.path.join(run, 'last.pth'), weights_only=True)
    assert state['args']['lr'] == 0.0005 and state['optimizer']['param_groups'][0]['base_lr'] == 0.0005
    assert state['history'][-1]['lr'] == pytest.approx(0.0005)


# ------------------------------------------------------------------ 2. non-finite state
@pytest.mark.slow
def test_a_non_finite_buffer_is_never_saved_and_the_run_continues_from_the_last_finite_state(
        cifar_root, tmp_path, monkeypatch):
    real = main.train_one_epoch

    def poisons_bn_in_epoch_2(args, epoch, ddp_method, method, *rest):
        out = real(args, epoch, ddp_method, method, *rest)
        if epoch == 1:
            method.model.f[1].running_var.fill_(float('inf'))  # the loss stays finite; a buffer does not
        return out
    monkeypatch.setattr(main, 'train_one_epoch', poisons_bn_in_epoch_2)
    args = common(cifar_root, tmp_path, '--epochs', '3', '--run_name', 'r', '--save_every', '1')
    with pytest.raises(main.NonFiniteLoss, match=r'f\.1\.running_var.*last\.pth holds epoch 1, the last finite'):
        main.main(args)
    run = tmp_path / 'r'
    assert torch.load(run / 'last.pth', weights_only=True)['epoch'] == 1
    assert not [f for f in os.listdir(run) if f.endswith('_model_2.pth')]
    for f in os.listdir(run):
        if f.endswith('.pth'):
            state = torch.load(run / f, weights_only=True)
            assert not saving.non_finite_entries(state.get('model', state)), f
    monkeypatch.setattr(main, 'train_one_epoch', real)
    assert main.main(args) == str(run)  # resumable from the last finite state
    assert torch.load(run / 'last.pth', weights_only=True)['epoch'] == 3


def test_atomic_save_refuses_a_non_finite_tensor(tmp_path):
    with pytest.raises(saving.NonFiniteState, match=r'model\.w is not finite'):
        saving.atomic_save({'model': {'w': torch.tensor([1.0, float('nan')])}}, str(tmp_path / 'x.pth'))
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ 3. one run per folder
@pytest.mark.slow
def test_a_second_process_on_the_same_run_folder_is_refused_with_the_holder(cifar_root, tmp_path):
    folder = tmp_path / 'r'
    folder.mkdir()
    model_path = str(tmp_path / 'm.pth')
    torch.save(M.Model(16, 'resnet18', False).state_dict(), model_path)
    holder = subprocess.Popen([sys.executable, '-c', 'import sys, time; sys.path.insert(0, "."); from mixbt import runs; '
                               f'runs.Lock({str(folder)!r}); print("locked", flush=True); time.sleep(60)'],
                              cwd=os.path.dirname(os.path.dirname(__file__)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        with pytest.raises(MixBTError, match=rf'in use by pid {holder.pid} on host {socket.gethostname()}'):
            main.main(common(cifar_root, tmp_path, '--epochs', '1', '--run_name', 'r'))
        with pytest.raises(MixBTError, match=rf'in use by pid {holder.pid}'):
            linear.main(['--model_path', model_path, '--dataset', 'cifar10', '--data_root', cifar_root,
                         '--results_dir', str(tmp_path), '--run_name', 'r', '--workers', '0', '--epochs', '1'])
    finally:
        holder.kill()
        holder.wait()
    # A lock left by a killed process does not block: the kernel released it with the process.
    run = main.main(common(cifar_root, tmp_path, '--epochs', '1', '--run_name', 'r'))
    assert run == str(folder) and os.path.isfile(folder / 'last.pth')


# ------------------------------------------------------------------ 4. temporary files of killed writes
@pytest.mark.slow
def test_stale_temporary_files_are_removed_when_a_run_resumes(cifar_root, tmp_path):
    run = main.main(common(cifar_root, tmp_path, '--epochs', '1', '--run_name', 'r'))
    stale = os.path.join(run, '.last.pth.abc123.tmp')
    with open(stale, 'wb') as f:
        f.write(b'\0' * 1000)
    main.main(common(cifar_root, tmp_path, '--epochs', '2', '--run_name', 'r'))
    assert not os.path.exists(stale)


# ------------------------------------------------------------------ 6. unwritable results folder, full disk
def test_a_results_dir_that_is_a_file_is_refused_before_any_work(cifar_root, tmp_path, monkeypatch):
    target = tmp_path / 'results'
    target.write_text('not a folder')
    monkeypatch.setattr(main, 'load_data', lambda args: pytest.fail('data loaded before the check'))
    with pytest.raises(MixBTError, match='is a file, not a folder'):
        main.main(common(cifar_root, target, '--epochs', '1'))


def test_a_read_only_results_dir_is_refused(cifar_root, tmp_path, monkeypatch):
    ro = tmp_path / 'ro'
    ro.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root writes anywhere: the check asks os.access, so make it answer as for a user
        real = os.access
        monkeypatch.setattr(os, 'access', lambda p, mode, **k: False if os.path.abspath(p) == str(ro) else real(p, mode))
    with pytest.raises(MixBTError, match='is not writable'):
        main.main(common(cifar_root, ro / 'results', '--epochs', '1'))
    assert not os.path.exists(ro / 'results')


@pytest.mark.slow
def test_a_full_disk_says_so_and_keeps_the_last_good_checkpoint(cifar_root, tmp_path, monkeypatch):
    run = main.main(common(cifar_root, tmp_path, '--epochs', '1', '--run_name', 'r'))
    real_save = torch.save

    def disk_full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(torch, 'save', disk_full)
    with pytest.raises(C.CheckpointError, match=r'could not write .*: no space left on .*the previous file is intact'):
        main.main(common(cifar_root, tmp_path, '--epochs', '2', '--run_name', 'r'))
    monkeypatch.setattr(torch, 'save', real_save)
    assert torch.load(os.path.join(run, 'last.pth'), weights_only=True)['epoch'] == 1
    assert not [f for f in os.listdir(run) if f.endswith('.tmp')]


# ------------------------------------------------------------------ 7, 8. meaningless settings, no stray folder
@pytest.mark.parametrize('flags, message', [
    (['--epochs', '0'], '--epochs 0 must be at least 1'),
    (['--feature_dim', '0'], '--feature_dim 0 must be at least 1'),
    (['--temperature', '0'], '--temperature 0.0 must be a positive number'),
    (['--lmbda', '-0.1'], 'lambda_BT must be >= 0'),
    (['--batch_size', '1'], 'at least 2 images'),
    (['--batch_size', '0'], 'at least 2 images'),
    (['--lr', '0'], '--lr 0.0 must be a positive number'),
    (['--projector', '64-x'], 'expected positive layer sizes'),
    (['--method', 'wmse', '--w_size', '3'], '--w_size 3 must divide the global batch size 8'),
    (['--method', 'wmse', '--w_size', '4', '--w_eps', '0', '--emb', '8'], 'must exceed the embedding size'),
    (['--method', 'cwrgp', '--group', '3', '--w_size', '4', '--w_eps', '0.1'], '--group 3 must divide the embedding size'),
    (['--method', 'simclr', '--tau', '0'], '--tau 0.0'),
    (['--method', 'mixbt', '--num_views', '4'], 'uses two views'),
    (['--batch_size', '64'], 'larger than the training set'),
])
def test_meaningless_settings_are_refused_before_the_run_folder_exists(cifar_root, tmp_path, flags, message):
    with pytest.raises(MixBTError, match=message.replace('.', r'\.').replace('(', r'\(')):
        main.main(common(cifar_root, tmp_path / 'results', '--epochs', '1', '--run_name', 'r', *flags))
    assert not os.path.exists(tmp_path / 'results' / 'r')


@pytest.mark.slow
def test_k_larger_than_the_memory_bank_is_capped_with_a_notice(cifar_root, tmp_path, capsys):
    run = main.main(common(cifar_root, tmp_path, '--epochs', '1', '--k', '500'))
    assert re.search(r'--k 500 is larger than the memory bank \((\d+) images\): the kNN monitor uses k = \1',
                     capsys.readouterr().out)
    import json  # the configuration is not rewritten after it is resolved: the run records what was asked
    assert json.load(open(os.path.join(run, 'args.json')))['k'] == 500


# ------------------------------------------------------------------ 10. errors
def test_our_errors_are_one_line_and_other_exceptions_keep_their_traceback(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_command(lambda: (_ for _ in ()).throw(MixBTError('bad input; do this')))
    assert exit_.value.code == 1 and capsys.readouterr().err == 'error: bad input; do this\n'
    with pytest.raises(ValueError, match='a bug'):  # torch's own ValueError, or ours by mistake: a traceback
        run_command(lambda: (_ for _ in ()).throw(ValueError('a bug')))


# ------------------------------------------------------------------ 12. evaluation flags
def test_evaluation_scripts_refuse_what_they_would_ignore(tmp_path):
    model_path = str(tmp_path / 'm.pth')
    base = ['--model_path', model_path, '--dataset', 'cifar10', '--data_root', str(tmp_path)]
    for flags, message in ((['--epochs', '0'], '--epochs 0 must be at least 1'),
                           (['--batch_size', '0'], '--batch_size 0 must be at least 1'),
                           (['--lr-classifier', '0.3'], '--lr-classifier: the ImageNet protocol'),
                           (['--lr-backbone', '0.01'], '--lr-backbone: the ImageNet protocol')):
        with pytest.raises(MixBTError, match=message):
            linear.get_args(base + flags)
    with pytest.raises(MixBTError, match='--epochs 0 must be at least 1'):
        transfer.get_args(base + ['--epochs', '0'])
    args = linear.get_args(base + ['--epochs', '7'])
    assert args.epochs == 7 and args.lr_classifier is None


# ------------------------------------------------------------------ 13. a truncated download
def test_a_truncated_checkpoint_is_named_unreadable_with_the_way_to_fetch_it_again(tmp_path):
    path = tmp_path / '4wdhbpcf_0.0078125_1024_256_cifar10_model.pth'
    torch.save(M.Model(16, 'resnet18', False).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])
    with pytest.raises(C.CheckpointError, match=r'not a readable PyTorch checkpoint.*fetch it again \(bash '
                                                r'scripts/download_checkpoints\.sh 4wdhbpcf_0\.0078125_1024_256_cifar10'):
        linear.main(['--model_path', str(path), '--dataset', 'cifar10', '--results_dir', str(tmp_path / 'r')])
    assert not os.path.exists(tmp_path / 'r')
