"""A pretraining run is continued or reused only when it is the same run: its settings, seed
included, decide, never its name alone. And the configuration is resolved once, refusing flags
that contradict --method."""
import os
import signal
import subprocess
import sys
import time

import pytest

import main
from mixbt.config import applicable_settings, get_args
from mixbt.errors import MixBTError
from mixbt import resume
from mixbt.runs import fixed_name

from test_faults import TINY, cifar_root, common  # noqa: F401 (cifar_root: the same tiny fixture)


def run(cifar_root, results, *extra):
    return main.main(common(cifar_root, results, *extra))


# ------------------------------------------------------------------ a finished run and a changed setting
@pytest.mark.slow
def test_a_finished_run_is_not_reported_for_another_seed_or_lr(cifar_root, tmp_path):
    folder = run(cifar_root, tmp_path, '--epochs', '1', '--run_name', 'r')
    with pytest.raises(MixBTError, match=r'--seed 0 -> 1'):
        run(cifar_root, tmp_path, '--epochs', '1', '--run_name', 'r', '--seed', '1')
    with pytest.raises(MixBTError, match=r'finished run \(1 epochs\).*--lr 0\.001 -> 0\.002.*Raise --epochs'):
        run(cifar_root, tmp_path, '--epochs', '1', '--run_name', 'r', '--lr', '0.002')
    # continuing a finished run by raising --epochs stays allowed, with the new settings
    assert run(cifar_root, tmp_path, '--epochs', '2', '--run_name', 'r', '--lr', '0.002') == folder
    assert os.listdir(tmp_path) == ['r']


def test_runs_of_a_loop_in_one_slurm_job_get_folders_of_their_own(monkeypatch):
    monkeypatch.setenv('SLURM_JOB_ID', '4242')
    names = {fixed_name(args, slurm_tag=resume.identity_tag(args)) for args in
             (get_args(['--seed', '0']), get_args(['--seed', '1']), get_args(['--lmbda', '0.01']))}
    assert len(names) == 3 and all(n.startswith('slurm4242_') for n in names)
    # a requeued job (the same command, more epochs, another data root) finds its folder again
    again = get_args(['--seed', '0', '--epochs', '2000', '--data_root', 'elsewhere'])
    assert fixed_name(again, slurm_tag=resume.identity_tag(again)) in names


# ------------------------------------------------------------------ run names that lead elsewhere
@pytest.mark.parametrize('name', ['../x', 'a/b', '/tmp/abs', '..', '.', '.hidden'])
def test_a_run_name_is_a_plain_folder_name(name, tmp_path):
    with pytest.raises(MixBTError, match='plain folder name'):
        main.main(TINY + ['--run_name', name, '--results_dir', str(tmp_path / 'results')])
    assert not os.path.exists(tmp_path / 'results') and not os.path.exists(tmp_path / 'x')


# ------------------------------------------------------------------ a folder without its state file
@pytest.mark.slow
def test_a_finished_run_whose_last_pth_was_removed_is_not_overwritten(cifar_root, tmp_path):
    folder = run(cifar_root, tmp_path, '--epochs', '1', '--run_name', 'r')
    os.remove(os.path.join(folder, 'last.pth'))
    before = {f: os.path.getmtime(os.path.join(folder, f)) for f in os.listdir(folder)}
    with pytest.raises(MixBTError, match=r'holds the files of another run \(.*_model\.pth.*no last\.pth'):
        run(cifar_root, tmp_path, '--epochs', '1', '--run_name', 'r')
    assert {f: os.path.getmtime(os.path.join(folder, f)) for f in os.listdir(folder)} == before


# ------------------------------------------------------------------ SIGTERM under SLURM
@pytest.mark.slow
def test_sigterm_stops_a_slurm_run_with_its_state_intact(cifar_root, tmp_path, repo_root):
    env = dict(os.environ, SLURM_JOB_ID='99', WANDB_MODE='disabled')
    cmd = [sys.executable, 'main.py', *TINY, '--data_root', cifar_root, '--results_dir', str(tmp_path),
           '--epochs', '1000', '--run_name', 'r']
    proc = subprocess.Popen(cmd, cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = tmp_path / 'r' / 'last.pth'
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert state.exists(), proc.communicate()[0] if proc.poll() is not None else 'no epoch in 120 s'
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)  # before: ignored under SLURM, hung until SIGKILL
    assert proc.returncode == 128 + signal.SIGTERM and 'SIGTERM: stopping' in out
    import torch
    assert torch.load(state, weights_only=True)['epoch'] >= 1
    assert not (tmp_path / 'r' / '.lock').exists() or subprocess.run(
        ['flock', '-n', str(tmp_path / 'r' / '.lock'), 'true']).returncode == 0


# ------------------------------------------------------------------ one configuration, resolved once
@pytest.mark.parametrize('argv, message', [
    (['--method', 'barlowtwins', '--is_mixup', 'true'], '--method barlowtwins contradicts --is_mixup true'),
    (['--method', 'mixbt', '--is_mixup', 'false'], '--method mixbt contradicts --is_mixup false'),
    (['--method', 'hsic', '--corr_zero'], '--method hsic contradicts --corr_zero'),
    (['--method', 'barlowtwins', '--corr_neg_one'], 'use --method hsic'),
    (['--lambda_mixup', '1.0', '--mixup_loss_scale', '4'], 'give one of the two'),
])
def test_a_flag_that_contradicts_the_method_is_refused(argv, message):
    with pytest.raises(MixBTError, match=message):
        get_args(argv)


def test_the_original_flags_still_choose_the_method():
    assert get_args(['--is_mixup', 'true']).method == 'mixbt'
    assert get_args(['--corr_neg_one']).method == 'hsic'
    assert get_args([]).method == 'barlowtwins'
    args = get_args(['--lambda_mixup', '0'])  # the released 0.0000 ImageNet run: mixed pass on, weight 0
    assert args.method == 'mixbt' and args.is_mixup and args.mixup_loss_scale == 0


def test_the_printed_configuration_holds_only_what_applies():
    small = applicable_settings(get_args(['--dataset', 'fashionmnist', '--is_mixup', 'true']))
    assert {'lmbda', 'mixup_loss_scale', 'lr', 'warmup_steps'} <= set(small)
    assert not {'image_size', 'lr_weights', 'lr_biases', 'byol_tau', 'w_eps', 'tau', 'warmup_epochs'} & set(small)
    byol = applicable_settings(get_args(['--method', 'byol']))
    assert 'byol_tau' in byol and 'lmbda' not in byol


def test_help_shows_every_default_and_each_methods_flags_under_its_title():
    out = subprocess.run([sys.executable, 'main.py', '--help'], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout
    flat = ' '.join(out.split())
    for flag, default in (('--epochs', 1000), ('--batch_size', 512), ('--feature_dim', 128), ('--k', 200),
                          ('--temperature', 0.5)):
        assert f'(default: {default})' in flat.split(flag, 1)[1].split('--', 1)[1] or \
            f'(default: {default})' in flat.split(flag + ' ', 1)[1][:200], flag
    assert '--method simclr:' in out and '--method wmse, cwrgp:' in out
    simclr = out.split('--method simclr:')[1].split('\n\n')[0]
    assert '--tau' in simclr and '--w_size' not in simclr


def test_a_bad_boolean_names_the_accepted_values(capsys):
    with pytest.raises(SystemExit):
        get_args(['--is_mixup', 'maybe'])
    assert 'expected true or false' in capsys.readouterr().err
