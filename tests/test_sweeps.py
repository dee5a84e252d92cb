"""sweeps/: the paper's ablations as wandb sweep configurations, and sweeps/grid.py, which runs the same
grid offline through a launch script (checked here with a stand-in python that records its command
lines; one slow test trains two tiny real points)."""
import argparse
import glob
import importlib.util
import os
import re

import pytest
import yaml

from mixbt import runlog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPS = sorted(glob.glob(os.path.join(ROOT, 'sweeps', '*.yaml')))
# The top-level keys that wandb's sweep-configuration schema allows (it rejects any other).
WANDB_KEYS = {'apiVersion', 'kind', 'controller', 'description', 'program', 'job', 'image_uri', 'entity', 'project',
              'method', 'command', 'name', 'run_cap', 'metric', 'metrics', 'scheduler', 'early_terminate',
              'parameters'}
# Where a run reads and writes, and its device: the launch script's own business, not the experiment's.
LOCATION_FLAGS = {'gpu', 'data_root', 'results_dir'}


grid = importlib.import_module('sweeps.grid')


def sweep_of(name):
    with open(os.path.join(ROOT, 'sweeps', name)) as f:
        return yaml.safe_load(f)


def main_py_flags():
    """Every `'--flag'` string of main.py's parser: config.py, methods.py, baselines.py (read as text)."""
    text = ''.join(open(os.path.join(ROOT, f)).read() for f in ('mixbt/config.py', 'mixbt/methods.py', 'mixbt/baselines.py'))
    return set(re.findall(r"""['"]--([A-Za-z][\w-]*)['"]""", text))


def test_there_are_the_two_ablation_sweeps():
    assert {os.path.basename(p) for p in SWEEPS} >= {'mixbt_resnet18_cifar10_lmbda_s.yaml',
                                                     'mixup_on_off_resnet18_cifar10.yaml'}


@pytest.mark.parametrize('path', SWEEPS, ids=os.path.basename)
def test_sweep_is_a_wandb_grid_config_that_runs_main_py(path):
    sweep = yaml.safe_load(open(path))
    assert set(sweep) <= WANDB_KEYS
    assert sweep['program'] == 'main.py' and sweep['method'] == 'grid'
    assert sweep['metric'] == {'name': 'knn_top1', 'goal': 'maximize'}  # the key main.py logs to wandb
    assert sweep['project'] == 'Barlow-Twins-MixUp-cifar10-resnet18'  # main.py's project (a sweep overrides it)
    command = [str(c) for c in sweep['command']]
    assert command[:3] == ['${env}', '${interpreter}', '${program}'] and command[-1] == '${args}'
    assert all(isinstance(c, str) for c in sweep['command'])  # wandb's agent passes them to the process as they are
    for name, spec in sweep['parameters'].items():
        assert re.fullmatch(r'[A-Za-z_][A-Za-z0-9_.-]*', name)
        assert set(spec) == {'values'} and isinstance(spec['values'], list) and spec['values'], name


@pytest.mark.parametrize('path', SWEEPS, ids=os.path.basename)
def test_every_parameter_and_fixed_flag_is_a_main_py_flag(path):
    sweep = yaml.safe_load(open(path))
    flags = main_py_flags()
    assert {'lmbda', 'mixup_loss_scale', 'is_mixup', 'run_name'} <= flags  # the grep itself works
    assert set(sweep['parameters']) <= flags
    assert set(grid.command_flags(sweep)) <= flags


@pytest.mark.parametrize('path', SWEEPS, ids=os.path.basename)
def test_wandb_command_has_the_launch_scripts_settings(path):
    """What `wandb agent` runs is what grid.py runs through the script: the fixed flags are the script's
    defaults and, with the swept ones, cover every setting the script passes."""
    sweep = yaml.safe_load(open(path))
    script = grid.default_script(sweep)
    assert os.path.relpath(script, ROOT) == 'scripts-pretrain-resnet18/cifar10.sh'
    variables = grid.script_variables(script)
    fixed = grid.command_flags(sweep)
    text = open(script).read()
    for flag in ('dataset', 'arch'):
        assert re.search(rf'^{flag}={fixed[flag]}$', text, re.M)
    assert fixed.pop('corr_zero') is True and '--corr_zero' in text
    for flag, value in fixed.items():
        if flag not in ('dataset', 'arch'):
            assert float(value) == float(variables[flag][1]) if value[0].isdigit() else value == variables[flag][1]
    assert set(variables) - LOCATION_FLAGS == (set(fixed) | set(sweep['parameters'])) - {'dataset', 'arch'}
    assert not set(fixed) & set(sweep['parameters'])


def test_lmbda_s_sweep_is_the_papers_grid():
    sweep = sweep_of('mixbt_resnet18_cifar10_lmbda_s.yaml')
    assert sweep['parameters']['lmbda']['values'] == [0.0078125, 0.0039062, 0.0019531, 0.0009765, 0.0004882]
    assert sweep['parameters']['mixup_loss_scale']['values'] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert grid.command_flags(sweep)['is_mixup'] == 'true'
    points = grid.grid_points(sweep)
    assert len(points) == 25 and points[0] == {'lmbda': 0.0078125, 'mixup_loss_scale': 1.0}
    assert points[1] == {'lmbda': 0.0078125, 'mixup_loss_scale': 2.0}  # as wandb's grid: the last one fastest


def test_mixup_sweep_turns_the_regulariser_on_and_off():
    sweep = sweep_of('mixup_on_off_resnet18_cifar10.yaml')
    assert grid.grid_points(sweep) == [{'is_mixup': 'true'}, {'is_mixup': 'false'}]  # strings: --is_mixup=true
    fixed = grid.command_flags(sweep)
    assert (fixed['lmbda'], fixed['mixup_loss_scale']) == ('0.0078125', '4.0')


@pytest.mark.parametrize('path', SWEEPS, ids=os.path.basename)
def test_run_names_are_unique_and_made_from_the_point(path):
    sweep = yaml.safe_load(open(path))
    swept = grid.swept_names(sweep)
    names = [grid.run_name(p, swept, 'resnet18-cifar10') for p in grid.grid_points(sweep)]
    assert len(set(names)) == len(names)
    assert names == [grid.run_name(p, swept, 'resnet18-cifar10') for p in grid.grid_points(sweep)]
    assert all(re.fullmatch(r'sweep-resnet18-cifar10-[A-Za-z0-9._-]+', n) for n in names)


def test_run_name_examples():
    assert grid.run_name({'lmbda': 0.0078125, 'mixup_loss_scale': 4.0}, ['lmbda', 'mixup_loss_scale'],
                         'resnet18-cifar10') == 'sweep-resnet18-cifar10-lmbda0.0078125-s4'
    assert (grid.run_name({'is_mixup': 'false'}, ['is_mixup'], 'resnet18-cifar10')
            == 'sweep-resnet18-cifar10-mixup-false')
    assert grid.script_tag('scripts-pretrain-resnet50/tinyimagenet.sh') == 'resnet50-tinyimagenet'


# ---------------------------------------------------------------------------- grid.py with a stand-in python
TINY = """
program: main.py
method: grid
parameters:
  lmbda:
    values: [0.0078125, 0.0009765]
  mixup_loss_scale:
    values: [2.0, 4.0]
  seed:
    value: 3
command: ['${env}', '${interpreter}', '${program}', --dataset, cifar10, --arch, resnet18, '${args}']
"""
NAMES = ['sweep-resnet18-cifar10-lmbda0.0078125-s2', 'sweep-resnet18-cifar10-lmbda0.0078125-s4',
         'sweep-resnet18-cifar10-lmbda0.0009765-s2', 'sweep-resnet18-cifar10-lmbda0.0009765-s4']


@pytest.fixture
def stub(tmp_path, monkeypatch):
    """A stand-in python for the launch scripts ($PYTHON) that records each command line; it fails
    for a command line that contains $STUB_FAIL."""
    python, calls = tmp_path / 'python', tmp_path / 'calls'
    python.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done >> "$CALLS"\n'
                      'printf "\\n\\0" >> "$CALLS"\n'
                      'case "$*" in *"${STUB_FAIL:-@@}"*) exit 1;; esac\n')
    python.chmod(0o755)
    monkeypatch.setenv('PYTHON', str(python))
    monkeypatch.setenv('CALLS', str(calls))
    monkeypatch.setenv('EPOCHS', '2')
    monkeypatch.delenv('RESULTS_DIR', raising=False)
    for var in ('LMBDA', 'MIXUP_LOSS_SCALE', 'IS_MIXUP', 'STUB_FAIL', 'WANDB_RUN_GROUP', 'WANDB_NAME'):
        monkeypatch.delenv(var, raising=False)
    sweep = tmp_path / 'tiny.yaml'
    sweep.write_text(TINY)

    def recorded():
        if not calls.exists():
            return []
        out, call = [], []
        for token in calls.read_text().split('\0')[:-1]:
            if token == '\n':
                out.append(call)
                call = []
            else:
                call.append(token)
        return out
    return str(sweep), str(tmp_path / 'results'), recorded


def flag(call, name):
    return call[call.index(name) + 1]


def write_point(results, name, epochs_done, epochs=2, lmbda=0.0078125, s=2.0):
    """A run folder as main.py leaves it after `epochs_done` of `epochs` epochs."""
    args = argparse.Namespace(dataset='cifar10', arch='resnet18', feature_dim=1024, batch_size=256, epochs=epochs,
                              lmbda=lmbda, mixup_loss_scale=s, is_mixup=True, method='mixbt', run_name=name, seed=3)
    log = runlog.RunLog(os.path.join(results, name), f'{name}_{lmbda}_1024_256_cifar10', args, 'test', name)
    for epoch in range(1, epochs_done + 1):
        log.log({'epoch': epoch, 'loss': 10.0 / epoch, 'loss_bt': 9.0 / epoch, 'loss_mix': 1.0 / epoch, 'lr': 0.01,
                 'epoch_time': 1.0, 'images_per_s': 10.0, 'knn_top1': 20.0 + epoch, 'knn_top5': 50.0 + epoch})


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


def test_rerun_skips_finished_points_and_resumes_interrupted_ones(stub, capfd):
    sweep, results, recorded = stub
    write_point(results, NAMES[0], epochs_done=2)
    write_point(results, NAMES[1], epochs_done=1, s=4.0)
    assert grid.main([sweep, '--results_dir', results]) == 0
    assert [flag(c, '--run_name') for c in recorded()] == NAMES[1:]  # main.py resumes NAMES[1] from its last.pth
    out = capfd.readouterr().out
    assert f'[1/4] {NAMES[0]}: done (2/2 epochs), skipped' in out
    assert f'[2/4] {NAMES[1]}: resumes after epoch 1: ' in out
    # the summary of the grid's run folders (the stand-in wrote none for the other two points)
    assert '2 of 4 points have run' in out
    assert f'| {NAMES[0]} | s=2      | 2/2    |' in out and f'| {NAMES[1]} | s=4      | 1/2    |' in out
    assert os.path.isfile(os.path.join(results, 'tiny_compare.png'))


def test_more_epochs_reopen_a_finished_point(stub, monkeypatch):
    sweep, results, recorded = stub
    write_point(results, NAMES[0], epochs_done=2)
    monkeypatch.setenv('EPOCHS', '4')
    assert grid.main([sweep, '--results_dir', results]) == 0
    assert [flag(c, '--run_name') for c in recorded()] == NAMES
    assert grid.main([sweep, '--results_dir', results, '--', '--epochs', '2']) == 0  # a flag after -- counts too
    assert [flag(c, '--run_name') for c in recorded()][4:] == NAMES[1:]


def test_dry_run_lists_the_points_and_runs_nothing(stub, capfd):
    sweep, results, recorded = stub
    write_point(results, NAMES[2], epochs_done=2, lmbda=0.0009765)
    assert grid.main([sweep, '--results_dir', results, '--dry_run']) == 0
    assert recorded() == []
    out = capfd.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith('[')]
    assert len(lines) == 4 and f'[3/4] {NAMES[2]}: done (2/2 epochs), skipped' in lines
    assert lines[3].startswith(f'[4/4] {NAMES[3]}: new: LMBDA=0.0009765 MIXUP_LOSS_SCALE=4 bash ')
    assert lines[3].endswith(f'scripts-pretrain-resnet18/cifar10.sh --seed 3 --run_name {NAMES[3]}')
    assert f'| {NAMES[2]} |' in out and not os.path.exists(os.path.join(results, 'tiny_compare.png'))


def test_a_failed_point_does_not_stop_the_grid(stub, monkeypatch, capfd):
    sweep, results, recorded = stub
    monkeypatch.setenv('STUB_FAIL', NAMES[1])
    assert grid.main([sweep, '--results_dir', results]) == 1
    assert len(recorded()) == 4
    err = capfd.readouterr().err
    assert f'error: 1 of 4 points failed ({NAMES[1]}); run the same command again' in err


def test_bad_sweep_file_or_script_is_a_one_line_error(tmp_path, capfd):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('program: main.py\nmethod: grid\n')
    assert grid.main([str(bad)]) == 1
    assert capfd.readouterr().err == f'error: {bad}: not a wandb sweep configuration (no `parameters`)\n'
    bad.write_text('parameters: {lmbda: {values: [0.1]}}\ncommand: [--dataset, cifar10]\n')
    assert grid.main([str(bad)]) == 1
    assert 'give the launch script with --script' in capfd.readouterr().err
    bad.write_text('parameters: [unclosed\n')
    assert grid.main([str(bad)]) == 1
    err = capfd.readouterr().err
    assert err.startswith(f'error: {bad}: not valid YAML') and err.count('\n') == 1
    assert grid.main([str(tmp_path / 'absent.yaml')]) == 1
    assert capfd.readouterr().err.startswith('error: ')


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
            '--subset', '16', '--workers', '0', '--knn_every', '1', '--k', '5']
    assert grid.main(args) == 0
    out = capfd.readouterr().out
    name = 'sweep-resnet18-fashionmnist-lmbda0.0039062'
    assert os.path.isfile(tmp_path / 'results' / name / 'last.pth') and 'Epoch 1/1 loss' in out
    assert re.search(rf'\| {name} \| - +\| 1/1 +\| [0-9.]+ +\| [0-9.]+ +\| [0-9.]+ @ 1 ', out), out
    assert grid.main(args) == 0
    out = capfd.readouterr().out
    assert f'[1/1] {name}: done (1/1 epochs), skipped' in out and 'Epoch 1/1' not in out
