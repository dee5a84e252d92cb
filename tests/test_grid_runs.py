"""grid.py running points: through the launch script with a stand-in python that records its command
lines (the sweep's fixed flags reach main.py, identities decide what is skipped, resumed or run afresh,
a failed point does not stop the grid), stopped by real signals, and one tiny real training."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from test_sweeps import FIXED, NAMES, ROOT, flag, grid, stub, write_point  # noqa: F401 (stub: a fixture)


@pytest.mark.slow
def test_grid_runs_every_point_through_the_launch_script(stub, capfd):
    sweep, results, recorded = stub
    assert grid.main([sweep, '--results_dir', results, '--', '--subset', '64']) == 0
    calls = recorded()
    assert [flag(c, '--run_name') for c in calls] == NAMES
    points = [('0.0078125', '2'), ('0.0078125', '4'), ('0.0009765', '2'), ('0.0009765', '4')]
    for call, (lmbda, s) in zip(calls, points):
        assert call[0] == os.path.join(ROOT, 'main.py')
        # swept values through the script's overrides, the rest of the recipe from the script itself
        assert (flag(call, '--lmbda'), flag(call, '--mixup_loss_scale')) == (lmbda, s)
        assert (flag(call, '--epochs'), flag(call, '--feature_dim'), flag(call, '--lr_shed')) == ('2', '1024', 'cosine')
        assert flag(call, '--results_dir') == results and flag(call, '--dataset') == 'cifar10'
        assert flag(call, '--seed') == '3' and flag(call, '--subset') == '64'  # no script variable; flags after --
    out = capfd.readouterr().out
    assert f'[1/4] {NAMES[0]}: new: LMBDA=0.0078125 MIXUP_LOSS_SCALE=2 bash ' in out
    record = json.load(open(os.path.join(results, f'{NAMES[0]}.sweep_point.json')))
    assert record['--lmbda'] == '0.0078125' and record['--subset'] == '64' and record['--epochs'] == '2'


@pytest.mark.slow
def test_the_sweeps_fixed_flags_reach_main_py(stub, capfd):
    """As `wandb agent` passes them: --epochs 7 --lr 0.5 --feature_dim 32, whatever the launcher's EPOCHS."""
    sweep, results, recorded = stub
    with open(sweep, 'a') as f:
        f.write(FIXED)
    assert grid.main([sweep, '--results_dir', results]) == 0
    for call in recorded():
        assert (flag(call, '--epochs'), flag(call, '--lr'), flag(call, '--feature_dim')) == ('7', '0.5', '32')
        assert '--corr_zero' in call
    err = capfd.readouterr().err
    assert 'note: EPOCHS=2 in the environment is not used: the sweep sets --epochs' in err


@pytest.mark.slow
def test_rerun_skips_finished_points_and_resumes_interrupted_ones(stub, capfd):
    sweep, results, recorded = stub
    assert grid.main([sweep, '--results_dir', results]) == 0  # records each point's identity
    write_point(results, NAMES[0], epochs_done=2)
    write_point(results, NAMES[1], epochs_done=1, s=4.0)
    capfd.readouterr()
    assert grid.main([sweep, '--results_dir', results]) == 0
    assert [flag(c, '--run_name') for c in recorded()[4:]] == NAMES[1:]  # main.py resumes NAMES[1] from last.pth
    out = capfd.readouterr().out
    assert f'[1/4] {NAMES[0]}: done (2/2 epochs), skipped' in out
    assert f'[2/4] {NAMES[1]}: resumes after epoch 1: ' in out
    # the summary of the grid's run folders (the stand-in wrote none for the other two points)
    assert '2 of 4 points have run' in out
    assert f'| {NAMES[0]} | s=2      | 2/2    |' in out and f'| {NAMES[1]} | s=4      | 1/2    |' in out
    assert os.path.isfile(os.path.join(results, 'tiny_compare.png'))


@pytest.mark.slow
def test_a_rerun_with_other_flags_or_environment_runs_afresh_in_its_own_folder(stub, monkeypatch, capfd):
    sweep, results, recorded = stub
    assert grid.main([sweep, '--results_dir', results]) == 0
    for i, name in enumerate(NAMES):
        write_point(results, name, epochs_done=2)
    capfd.readouterr()
    for extra, env, diff in ((['--', '--seed', '1'], {}, "--seed '3' -> '1'"),
                             ([], {'FEATURE_DIM': '32'}, "--feature_dim '1024' -> '32'")):
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        assert grid.main([sweep, '--results_dir', results, *extra]) == 0
        out = capfd.readouterr().out
        assert 'skipped' not in out and out.count(diff) == 4
        new = [flag(c, '--run_name') for c in recorded()[-4:]]
        assert all(n.startswith(old + '-') for n, old in zip(new, NAMES))
        for var in env:
            monkeypatch.delenv(var)
    seed1 = [flag(c, '--run_name') for c in recorded()[4:8]]
    assert grid.main([sweep, '--results_dir', results, '--', '--seed', '1']) == 0  # its own folders, again
    assert [flag(c, '--run_name') for c in recorded()[12:]] == seed1 and 'afresh' not in capfd.readouterr().out
    assert grid.main([sweep, '--results_dir', results]) == 0
    assert len(recorded()) == 16 and capfd.readouterr().out.count('done (2/2 epochs), skipped') == 4


@pytest.mark.slow
def test_a_failed_point_does_not_stop_the_grid(stub, monkeypatch, capfd):
    sweep, results, recorded = stub
    monkeypatch.setenv('STUB_FAIL', NAMES[1])
    assert grid.main([sweep, '--results_dir', results]) == 1
    assert len(recorded()) == 4
    err = capfd.readouterr().err
    assert f'error: 1 of 4 points failed ({NAMES[1]}); run the same command again' in err


# ---------------------------------------------------------------------------- stopping grid.py
def gone(pid):
    """Whether process `pid` has ended (a zombie waiting for a parent that does not reap counts)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] == 'Z'
    except FileNotFoundError:
        return True


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc')
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_a_stopped_or_killed_grid_stops_its_running_point(stub, tmp_path, sig):
    """The stand-in main.py sleeps; grid.py gets a real signal; the stand-in must be gone soon after."""
    sweep, results, _ = stub
    python, pids = tmp_path / 'python', tmp_path / 'pids'
    python.write_text('#!/bin/sh\necho $$ >> "$PIDS"\nexec sleep 60\n')
    env = {**os.environ, 'PIDS': str(pids)}
    proc = subprocess.Popen([sys.executable, '-m', 'sweeps.grid', sweep, '--results_dir', results], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (pids.exists() and pids.read_text().endswith('\n')) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pids.read_text().split()[0])
    assert not gone(child)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    deadline = time.monotonic() + 5
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = not gone(child)
    for pid in map(int, pids.read_text().split()):  # none left behind, whatever happened
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
    assert not alive, f'the point went on after grid.py got {sig.name}'
    assert len(pids.read_text().split()) == 1  # the grid stopped: no next point
    if sig != signal.SIGKILL:
        assert proc.returncode == 128 + sig
        assert err.strip().splitlines()[-1] == (f'stopped by {sig.name}: [1/4] {NAMES[0]} stopped; run the same '
                                                'command again to continue the grid (this point resumes from its '
                                                'last epoch)')


@pytest.mark.slow
def test_grid_trains_a_tiny_point_then_skips_it(tmp_path, capfd, monkeypatch):
    """Real training through scripts-pretrain-resnet18/fashionmnist.sh: one epoch on 16 images, then the
    rerun skips the finished point without starting main.py."""
    import fakedata
    fakedata.write_mnist_like(str(tmp_path / 'data' / 'FashionMNIST' / 'raw'))
    sweep = tmp_path / 'tiny.yaml'
    sweep.write_text('program: main.py\nmethod: grid\nparameters:\n  lmbda:\n    values: [0.0039062]\n'
                     "command: ['${env}', '${interpreter}', '${program}', --dataset, fashionmnist, --arch, resnet18, "
                     "'${args}']\n")
    for var, value in {'EPOCHS': '1', 'FEATURE_DIM': '32', 'BATCH_SIZE': '8', 'GPU': '-1', 'PYTHON': 'python3',
                       'DATA_ROOT': str(tmp_path / 'data'), 'WANDB_MODE': 'disabled', 'OMP_NUM_THREADS': '2'}.items():
        monkeypatch.setenv(var, value)
    args = [str(sweep), '--results_dir', str(tmp_path / 'results'), '--',
            '--subset', '16', '--workers', '0', '--knn_every', '1', '--k', '5', '--visuals', 'false']
    assert grid.main(args) == 0
    out = capfd.readouterr().out
    name = 'sweep-resnet18-fashionmnist-lmbda0.0039062'
    assert os.path.isfile(tmp_path / 'results' / name / 'last.pth') and 'Epoch 1/1 loss' in out
    assert re.search(rf'\| {name} \| - +\| 1/1 +\| [0-9.]+ +\| [0-9.]+ +\| [0-9.]+ @ 1 ', out), out
    assert grid.main(args) == 0
    out = capfd.readouterr().out
    assert f'[1/1] {name}: done (1/1 epochs), skipped' in out and 'Epoch 1/1' not in out

