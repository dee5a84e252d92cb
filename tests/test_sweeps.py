"""sweeps/: the paper's ablations as wandb sweep configurations, and sweeps/grid.py, which runs the same
grid offline through a launch script: its points, their identities and its checks, in-process (no
point runs here; tests/test_grid_runs.py runs them through a stand-in python)."""
import argparse
import glob
import importlib
import json
import os
import re

import pytest
import yaml

from mixbt import config, runlog

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
    """Every spelling of main.py's flags, from its real parser (the methods' flags included)."""
    return {o[2:] for a in config.build_parser()._actions for o in a.option_strings if o.startswith('--')}


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
FIXED = ("command: ['${env}', '${interpreter}', '${program}', --dataset, cifar10, --arch, resnet18, --epochs, '7', "
         "--lr, '0.5', --feature_dim, '32', --corr_zero, '${args}']\n")


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
    for var in ('LMBDA', 'MIXUP_LOSS_SCALE', 'IS_MIXUP', 'FEATURE_DIM', 'LR', 'NPROC', 'GPU', 'STUB_FAIL',
                'WANDB_RUN_GROUP', 'WANDB_NAME'):
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
    """The value main.py takes: the last one given."""
    return call[len(call) - call[::-1].index(name)]


def write_point(results, name, epochs_done, epochs=2, lmbda=0.0078125, s=2.0):
    """The statistics main.py leaves in a point's folder after `epochs_done` of `epochs` epochs."""
    args = argparse.Namespace(dataset='cifar10', arch='resnet18', feature_dim=1024, batch_size=256, epochs=epochs,
                              lmbda=lmbda, mixup_loss_scale=s, is_mixup=True, method='mixbt', run_name=name, seed=3)
    log = runlog.RunLog(os.path.join(results, name), f'{name}_{lmbda}_1024_256_cifar10', args, 'test', name)
    for epoch in range(1, epochs_done + 1):
        log.log({'epoch': epoch, 'loss': 10.0 / epoch, 'loss_bt': 9.0 / epoch, 'loss_mix': 1.0 / epoch, 'lr': 0.01,
                 'epoch_time': 1.0, 'images_per_s': 10.0, 'knn_top1': 20.0 + epoch, 'knn_top5': 50.0 + epoch})


def plan(sweep, *extra, seeds=None):
    return grid.plan(grid.load_sweep(sweep, seeds), grid.default_script(grid.load_sweep(sweep)), list(extra))


def test_the_sweeps_fixed_flags_go_to_the_run_through_the_scripts_overrides(stub):
    sweep, _, _ = stub
    with open(sweep, 'a') as f:
        f.write(FIXED)
    point = plan(sweep)[0]
    assert point.env == {'EPOCHS': '7', 'LR': '0.5', 'FEATURE_DIM': '32', 'LMBDA': '0.0078125',
                         'MIXUP_LOSS_SCALE': '2'}  # the script prints the values the run uses
    assert point.flags == ['--dataset', 'cifar10', '--arch', 'resnet18', '--corr_zero', '--seed', '3']
    assert (point.identity['--epochs'], point.identity['--lr'], point.identity['--feature_dim']) == ('7', '0.5', '32')


def test_a_points_identity_is_its_whole_command(stub, monkeypatch):
    sweep, _, _ = stub
    base = [p.identity for p in plan(sweep)]
    assert len({json.dumps(i, sort_keys=True) for i in base}) == 4
    assert [p.identity for p in plan(sweep, '--seed', '1')][0]['--seed'] == '1'
    assert [p.identity for p in plan(sweep, '--epochs', '2')] == base  # EPOCHS=2 is the same run
    monkeypatch.setenv('GPU', '1')  # where it runs is not what it is
    assert [p.identity for p in plan(sweep)] == base
    monkeypatch.setenv('FEATURE_DIM', '32')
    assert plan(sweep)[0].identity == {**base[0], '--feature_dim': '32'}
    monkeypatch.setenv('NPROC', '2')  # an override the script passes to torchrun, not to main.py
    assert plan(sweep)[0].identity['$NPROC'] == '2'


def test_a_point_continues_only_the_folder_that_records_its_identity(stub, tmp_path, capfd):
    sweep, results, _ = stub
    point, other = plan(sweep)[0], plan(sweep, '--seed', '1')[0]
    assert grid.choose_folder(point, results) == (NAMES[0], None)  # no folder yet
    os.makedirs(os.path.join(results, NAMES[0]))
    name, note = grid.choose_folder(point, results)  # a folder without a record: never taken for this point
    assert name == point.other_name and name.startswith(NAMES[0] + '-') and 'it has no identity record' in note
    grid.identity.write_json(grid.record_path(results, NAMES[0]), point.identity)
    assert grid.choose_folder(point, results) == (NAMES[0], None)
    name, note = grid.choose_folder(other, results)
    assert name == other.other_name != point.other_name
    assert note == (f"{NAMES[0]} holds another command's run: computed afresh, the saved result was computed from "
                    f"other inputs (--seed '3' -> '1'); this point runs in {other.other_name}")
    os.makedirs(os.path.join(results, other.other_name))
    grid.identity.write_json(grid.record_path(results, other.other_name), other.identity)
    assert grid.choose_folder(other, results) == (other.other_name, None)
    with open(grid.record_path(results, NAMES[0]), 'w') as f:
        f.write('{"scri')
    with pytest.raises(grid.MixBTError, match='sweep_point.json is not a readable grid point record'):
        grid.choose_folder(point, results)


def test_dry_run_lists_the_points_and_runs_nothing(stub, capfd):
    sweep, results, recorded = stub
    write_point(results, NAMES[2], epochs_done=2, lmbda=0.0009765)
    grid.identity.write_json(grid.record_path(results, NAMES[2]), plan(sweep)[2].identity)
    assert grid.main([sweep, '--results_dir', results, '--dry_run']) == 0
    assert recorded() == []
    out = capfd.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith('[')]
    assert len(lines) == 4 and f'[3/4] {NAMES[2]}: done (2/2 epochs), skipped' in lines
    assert lines[3].startswith(f'[4/4] {NAMES[3]}: new: LMBDA=0.0009765 MIXUP_LOSS_SCALE=4 bash ')
    assert lines[3].endswith(f'scripts-pretrain-resnet18/cifar10.sh --dataset cifar10 --arch resnet18 --seed 3 '
                             f'--run_name {NAMES[3]}')
    assert f'| {NAMES[2]} |' in out and not os.path.exists(os.path.join(results, 'tiny_compare.png'))
    assert not os.path.exists(os.path.join(results, NAMES[0]))


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


@pytest.mark.parametrize('values, says', [
    ('"0.0078125"', "`values` must be a list, got str '0.0078125'; write values: [0.0078125]"),
    ('[]', '`values` is empty, so the grid has no point'),
    ('0.5', '`values` must be a list, got float 0.5; write values: [0.5] (or value: 0.5'),
    ('[0.5, [1, 2]]', '[1, 2] is not a number, text or true/false'),
    ('[0.5, null]', 'None is not a number, text or true/false'),
    ('[4.0, 4]', '4 listed twice'),
], ids=['text', 'empty', 'number', 'nested', 'null', 'twice'])
def test_malformed_values_are_one_line_errors(stub, capfd, values, says):
    sweep, results, recorded = stub
    with open(sweep, 'w') as f:
        f.write(TINY.replace('[2.0, 4.0]', values))
    assert grid.main([sweep, '--results_dir', results, '--dry_run']) == 1
    err = capfd.readouterr().err
    assert err.startswith(f'error: {sweep}: parameter mixup_loss_scale: ') and err.count('\n') == 1, err
    assert says in err and recorded() == []


def test_seeds_axis_makes_each_seed_its_own_point(stub, capfd):
    sweep, results, _ = stub
    with open(sweep, 'w') as f:
        f.write(TINY.replace('  seed:\n    value: 3\n', ''))
    points = plan(sweep, seeds=[0, 1])
    assert [p.base_name for p in points] == [f'{n}-seed{s}' for s in (0, 1) for n in NAMES]  # seed slowest
    assert [p.identity['--seed'] for p in points] == ['0'] * 4 + ['1'] * 4
    assert len({p.other_name for p in points}) == 8
    with open(sweep, 'a') as f:
        f.write('seeds: [0, 1]\n')
    assert [p.identity for p in plan(sweep)] == [p.identity for p in points]  # the same axis in the file
    assert grid.main([sweep, '--results_dir', results, '--dry_run']) == 0
    assert capfd.readouterr().out.count('--seed ') == 8
    assert grid.main([sweep, '--seeds', '2', '--results_dir', results, '--dry_run']) == 1
    assert 'seeds given twice (--seeds and `seeds:`)' in capfd.readouterr().err
    assert grid.main([sweep, '--results_dir', results, '--dry_run', '--', '--seed', '1']) == 1
    assert '--seed after -- would give every seed of the seeds axis one seed' in capfd.readouterr().err
    with open(sweep, 'w') as f:
        f.write(TINY.replace('  seed:\n    value: 3\n', '') + 'seeds: "0 1"\n')
    assert grid.main([sweep, '--results_dir', results, '--dry_run']) == 1
    assert "parameter seeds: `values` must be a list, got str '0 1'" in capfd.readouterr().err


@pytest.mark.parametrize('extra', [['--run_name', 'x'], ['--results_dir', 'elsewhere'], ['--resume=r']])
def test_flags_that_place_a_points_folder_are_refused_after_the_double_dash(stub, capfd, extra):
    sweep, results, recorded = stub
    assert grid.main([sweep, '--results_dir', results, '--', *extra]) == 1
    err = capfd.readouterr().err
    assert err.startswith('error: --') and 'give grid.py --results_dir instead' in err and recorded() == []


@pytest.mark.parametrize('out', ['c.xyz', 'file.txt/c.png'])
def test_a_bad_plot_name_is_refused_before_any_point_runs(stub, capfd, out, tmp_path):
    sweep, results, recorded = stub
    (tmp_path / 'file.txt').write_text('x')
    assert grid.main([sweep, '--results_dir', results, '--out', str(tmp_path / out)]) == 1
    assert capfd.readouterr().err.startswith('error: --out ') and recorded() == []
