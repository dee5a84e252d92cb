"""The launch scripts and the checkpoint download.

Every script runs with a stand-in python that records its command lines; the real parsers of main.py,
linear.py, transfer.py and evaluate.py read them in this process, so every flag of every script is checked
without a python per script, and so is the convention that a script passes only what differs from the
defaults those programs resolve on their own. The settings check (each setting of its default's kind,
misspelt overrides), the released recipes and the download checks need no python at all. One real run of
each script family on tiny data in the official formats is marked slow."""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from unittest import mock

import pytest
import torch

import hubconf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = sorted(glob.glob('scripts-pretrain-resnet*/*.sh', root_dir=REPO))
LINEAR = sorted(glob.glob('scripts-linear-resnet*/*.sh', root_dir=REPO))
TRANSFER = sorted(glob.glob('scripts-transfer-resnet18/*.sh', root_dir=REPO))
SSL_SOTA = sorted(glob.glob('ssl-sota/*/*.sh', root_dir=REPO))
LAUNCHERS = PRETRAIN + LINEAR + TRANSFER + SSL_SOTA
EVAL = sorted(glob.glob('scripts-eval-resnet*/*.sh', root_dir=REPO))  # their runs: tests/test_evaluate.py
LAUNCH_SCRIPTS = LAUNCHERS + ['quickstart.sh']
# scripts that run another one with the same environment
DELEGATES = {'quickstart.sh': 'scripts-pretrain-resnet18/fashionmnist.sh',
             'scripts-pretrain-resnet18/imagenet.sh': 'scripts-pretrain-resnet50/imagenet.sh'}
# The original README starts every script with `sh script.sh`: on Debian that is dash.
SH = shutil.which('dash') or '/bin/sh'
IMAGENET_CLASSES = ('n01440764', 'n01443537')
RELEASED_FILES = [name for name, _, _ in hubconf.RELEASED.values()] + ['barlowtwins_official_resnet50.pth']
# Environment variables of ordinary machines, clusters, CI and torchrun: never a misspelt setting.
COMMON_ENV = '''HOSTNAME LOGNAME MAIL DISPLAY EDITOR PAGER SSH_CLIENT SSH_CONNECTION SSH_TTY XDG_RUNTIME_DIR
XDG_SESSION_ID DBUS_SESSION_BUS_ADDRESS CUDA_VISIBLE_DEVICES CUDA_HOME NVIDIA_VISIBLE_DEVICES OMP_NUM_THREADS
MKL_NUM_THREADS NCCL_DEBUG NCCL_SOCKET_IFNAME CONDA_PREFIX CONDA_DEFAULT_ENV CONDA_EXE CONDA_SHLVL VIRTUAL_ENV
PIP_NO_CACHE_DIR HF_HOME TORCH_HOME WANDB_API_KEY WANDB_MODE WANDB_PROJECT WANDB_ENTITY WANDB_DIR WANDB_RUN_GROUP
SLURM_JOB_ID SLURM_PROCID SLURM_NTASKS SLURM_NPROCS SLURM_CPUS_PER_TASK SLURM_GPUS SLURM_NODELIST SLURM_JOB_NAME
SLURM_ARRAY_TASK_ID SLURM_LOCALID MASTER_ADDR MASTER_PORT RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE
GITHUB_ACTIONS CI RUNNER_OS GITHUB_WORKSPACE COLUMNS LINES TERM_PROGRAM COLORTERM LESSOPEN http_proxy https_proxy
no_proxy NO_COLOR SUDO_USER DEBIAN_FRONTEND JAVA_HOME GOPATH MANPATH PYTHONUNBUFFERED PYTHONHASHSEED NAME EMAIL
TMUX MIXBT_TRUST_CHECKPOINTS INSTALL'''.split()
NUMBER = r'[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|\d+(-\d+)+'  # a number, or layer sizes (8192-8192-8192)
CHECKED = rf'{NUMBER}|(?i:true|false)'  # the defaults whose form gives a kind that scripts/common.sh checks
# Flags a script may pass whatever their defaults: where it runs and writes, its data set, backbone and
# length, the checkpoint it reads, the method it is, the transfer set of each call and the run's name; and
# --corr_zero, the Mix-BT scripts' statement of the original command line (Barlow Twins' off-diagonal target 0,
# beside --is_mixup), which the sweeps restate with them (tests/test_sweeps.py).
ALWAYS_PASSED = {'--gpu', '--data_root', '--results_dir', '--arch', '--dataset', '--epochs', '--batch_size',
                 '--batch-size', '--model_path', '--method', '--transfer_dataset', '--run_name', '--corr_zero'}


def script_text(script):
    return ''.join(open(os.path.join(REPO, s)).read() for s in {script, DELEGATES.get(script, script)})


def overridable(script):
    """{VAR: (name, default)} of the script's `name=${VAR:-default}` lines (and of the script it runs)."""
    return {m[2]: (m[1], m[3]) for m in re.finditer(r'^([a-z_][a-z0-9_]*)=\$\{([A-Z][A-Z0-9_]*):-(.*?)\}[ \t]*(?:#|$)',
                                                   script_text(script), re.M)}


# ---------------------------------------------------------------------------- running a script
def stub_bin(tmp_path):
    """A stand-in python (also on PATH as python3, with a no-op apt-get) that appends its argv to $ARGS_OUT."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / 'python3').write_text(
        '#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done >> "$ARGS_OUT"\nprintf "\\n\\0" >> "$ARGS_OUT"\n')
    (bin_dir / 'apt-get').write_text('#!/bin/sh\nexit 0\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def run(script, tmp_path, env=None, args=(), shell='bash', stub=True, timeout=60):
    """Run a launch script from tmp_path (any working directory works). With stub, a stand-in python records
    the command lines instead of running them. Returns (process, [argv of each python call])."""
    full_env = {**os.environ, 'WANDB_MODE': 'disabled', 'OMP_NUM_THREADS': '2', 'PYTHON': 'python3'}
    out = tmp_path / 'argv'
    out.unlink(missing_ok=True)
    if stub:
        bin_dir = stub_bin(tmp_path)
        full_env.update(PATH=f'{bin_dir}:{os.environ["PATH"]}', PYTHON=str(bin_dir / 'python3'), ARGS_OUT=str(out))
    full_env.update(env or {})
    proc = subprocess.run([shell, os.path.join(REPO, script), *args], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    calls, call = [], []
    for token in (out.read_text().split('\0')[:-1] if out.exists() else []):
        if token == '\n':
            calls.append(call)
            call = []
        else:
            call.append(token)
    return proc, calls


def flag_values(calls):
    """{flag: value} of every `--flag value` pair in the calls."""
    return {a: b for call in calls for a, b in zip(call, call[1:]) if a.startswith('--') and not b.startswith('--')}


def program_calls(calls):
    """(program, its arguments) of each call of a Python entry point (RESOLVERS; torchrun or not)."""
    for call in calls:
        for i, arg in enumerate(call):
            if os.path.basename(arg) in RESOLVERS:
                yield os.path.basename(arg)[:-3], call[i + 1:]
                break


def resolve_main(argv):
    import main
    return main.get_args(argv)


def resolve_linear(argv):
    import linear
    return linear.get_args(argv)


def resolve_transfer(argv):
    import transfer
    return transfer.get_args(argv)


def resolve_evaluate(argv):
    import evaluate
    return evaluate.get_args(argv)


def resolve_main_imagenet(argv):
    import main_imagenet
    return resolve_main(main_imagenet.translate(argv))


def resolve_evaluate_imagenet(argv):
    import evaluate_imagenet
    return resolve_linear(evaluate_imagenet.translate(argv))


# The configuration each entry point resolves from its command line (main.py: the method's and the data
# set's defaults filled in), by the file a script runs.
RESOLVERS = {'main.py': resolve_main, 'linear.py': resolve_linear, 'transfer.py': resolve_transfer,
             'evaluate.py': resolve_evaluate, 'main_imagenet.py': resolve_main_imagenet,
             'evaluate_imagenet.py': resolve_evaluate_imagenet}


def parser_of(program, argv):
    """The argparse parser that `program` reads `argv` with (the first one its get_args builds)."""
    parsers = []
    parse_args = argparse.ArgumentParser.parse_args

    def spy(parser, *args, **kwargs):
        parsers.append(parser)
        return parse_args(parser, *args, **kwargs)
    with mock.patch.object(argparse.ArgumentParser, 'parse_args', spy):
        RESOLVERS[f'{program}.py'](argv)
    return parsers[0]


def flag_units(argv):
    """(start, end) of each `--flag value` or `--flag` of argv, the arguments after the flags left out."""
    i = 0
    while i < len(argv):
        if argv[i].startswith('--'):
            n = 2 if i + 1 < len(argv) and not argv[i + 1].startswith('--') else 1
            yield i, i + n
            i += n
        else:
            i += 1


@pytest.fixture(scope='module')
def released(tmp_path_factory):
    """Empty files named like the released checkpoints, and a finished fashionmnist pretraining run."""
    root = tmp_path_factory.mktemp('released')
    (root / 'checkpoints').mkdir()
    for name in RELEASED_FILES:
        (root / 'checkpoints' / name).write_bytes(b'')
    run_dir = root / 'results' / 'abcd1234'
    run_dir.mkdir(parents=True)
    for name in ('abcd1234_0.0078125_16_8_fashionmnist_model.pth', 'last.pth'):
        (run_dir / name).write_bytes(b'')
    return root


@pytest.fixture(scope='module')
def default_run(released, tmp_path_factory):
    """default_run(script): (process, calls) of the script with its defaults (bash), once per script, in an
    environment holding the usual variables of clusters, CI and torchrun (none may look like a misspelling)."""
    cache = {}
    env = {name: os.environ.get(name, 'x') for name in COMMON_ENV}
    env.update(CHECKPOINT_DIR=str(released / 'checkpoints'), PRETRAIN_DIR=str(released / 'results'))

    def get(script):
        if script not in cache:
            cache[script] = run(script, tmp_path_factory.mktemp('default'), env)
        return cache[script]
    return get


# ---------------------------------------------------------------------------- every flag of every script
@pytest.mark.parametrize('script', LAUNCH_SCRIPTS)
def test_default_command_lines_are_accepted_by_the_real_parsers(script, default_run):
    """The recorded command lines parse with main.py's, linear.py's and transfer.py's own argument parsers,
    and the script's settings reach them; the script printed them all, and warned about nothing."""
    import linear
    import main
    import transfer
    proc, calls = default_run(script)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'warning' not in proc.stderr, proc.stderr
    launched = list(program_calls(calls))
    assert launched
    for program, argv in launched:
        args = {'main': main, 'linear': linear, 'transfer': transfer}[program].get_args(argv)
        assert args.epochs == int(overridable(script)['EPOCHS'][1]) or script == 'quickstart.sh'
    if script != 'quickstart.sh':  # its own settings are its pretraining script's
        for var, (name, default) in overridable(script).items():
            if '$' not in default:
                assert f'\n{name}={default}\n' in proc.stdout or f"\n{name}='{default}'\n" in proc.stdout, (name, proc.stdout)


def test_released_recipes_name_their_runs_as_the_released_checkpoints(default_run):
    """Each small-data pretraining script reproduces its released checkpoint: main.py's run names,
    <id>_<lambda_BT>_<d>_<batch>_<dataset>, equal the released file names (lambda_BT written as the original's
    `bc` writes it: 0.0009765), with the Mix-BT regulariser on."""
    import main
    checked = 0
    for key, (name, _, _) in hubconf.RELEASED.items():
        arch, dataset = key[:2]
        if dataset == 'imagenet':
            continue
        proc, calls = default_run(f'scripts-pretrain-{arch}/{dataset.replace("_", "")}.sh')
        ((program, argv),) = program_calls(calls)
        args = main.get_args(argv)
        run_id = name.split('_')[0]
        assert f'{main.run_prefix(args, run_id)}_model.pth' == name, (arch, dataset)
        assert args.method == 'mixbt' and args.is_mixup
        checked += 1
    assert checked == 8


@pytest.mark.parametrize('script, original', [
    ('scripts-pretrain-resnet18/cifar100.sh', {'feature_dim': '2048'}),
    ('scripts-pretrain-resnet50/stl10.sh', {'feature_dim': '4096'}),
    ('scripts-pretrain-resnet50/tinyimagenet.sh', {'feature_dim': '4096', 'is_mixup': 'false', 'lmbda': '0.0002441'})])
def test_scripts_that_differ_from_the_original_keep_its_values_in_a_comment(script, original):
    text = open(os.path.join(REPO, script)).read()
    for name, value in original.items():
        (line,) = re.findall(rf'^{name}=.*$', text, re.M)
        assert 'original script' in line and value in line.split('#', 1)[1], line


def test_lambda_bt_is_written_as_the_original_computes_it():
    """`bc` with scale 7 (1/1024 -> 0.0009765): at most 7 decimals, so run names match the released ones."""
    for script in PRETRAIN:
        for value in re.findall(r'^lmbda=\$\{LMBDA:-([^}]*)\}', open(os.path.join(REPO, script)).read(), re.M):
            assert re.fullmatch(r'\d+\.\d{1,7}', value), (script, value)


@pytest.mark.parametrize('script', LAUNCH_SCRIPTS)
def test_sh_runs_the_scripts_with_every_setting_overridable_from_the_environment(script, released, default_run,
                                                                                 tmp_path):
    """`sh script.sh ARGS` (dash) re-runs the script with bash; every VAR of its `name=${VAR:-default}` lines
    reaches the command line, the extra arguments come last, and every flag value that no variable changes
    is one of the flags fixed by design (each script is one data set, backbone and method)."""
    names = overridable(script)
    model = tmp_path / 'model.pth'
    model.write_bytes(b'')
    overrides = {}
    for i, (var, (name, default)) in enumerate(sorted(names.items())):
        if var == 'MODEL_PATH':
            overrides[var] = str(model)
        elif re.fullmatch(r'\d+(-\d+)+', default):
            overrides[var] = f'{32 + i}-{32 + i}'
        elif default.lower() in ('true', 'false'):
            overrides[var] = 'false' if default.lower() == 'true' else 'true'
        elif re.fullmatch(NUMBER, default):
            overrides[var] = str(1000 + i)
        else:
            overrides[var] = f'{name}-set'
    base = {'CHECKPOINT_DIR': str(released / 'checkpoints'), 'PRETRAIN_DIR': str(released / 'results')}
    args = ['--seed', '3', '--note', 'two words']
    proc, calls = run(script, tmp_path, {**base, **overrides}, args, shell=SH)
    assert proc.returncode == 0, proc.stderr[-2000:]
    launched = [call for call in calls if 'pip' not in call and '-c' not in call]  # the quick start's checks
    assert launched and all(call[-len(args):] == args for call in launched)
    changed = flag_values(launched)
    nproc = 'NPROC' in overrides and int(overrides['NPROC'])
    expected = {v for k, v in overrides.items() if k not in ('NPROC', 'CHECKPOINT_DIR', 'PRETRAIN_DIR')}
    assert expected <= set(changed.values()), expected - set(changed.values())
    assert not nproc or str(nproc) == changed['--nproc_per_node']
    fixed = {'--dataset', '--arch', '--method', '--weights', '--train-percent'}
    if script == 'quickstart.sh':
        fixed |= {'--knn_every', '--aug', '--workers'}
    unchanged = {flag for flag, value in flag_values(default_run(script)[1]).items() if changed.get(flag) == value}
    assert unchanged <= fixed, (script, unchanged - fixed)
    if script != 'quickstart.sh':
        for var, value in overrides.items():
            name = names[var][0]
            assert re.search(rf'^{name}=\S*   # from {var}$', proc.stdout, re.M), (name, proc.stdout)


def test_resnet18_imagenet_script_runs_the_resnet50_one(tmp_path):
    """The original README's `sh scripts-pretrain-resnet18/imagenet.sh`: same command, same overrides."""
    env = {'NPROC': '2', 'EPOCHS': '7', 'MIXUP_WARMUP_EPOCHS': '3'}
    proc, calls = run('scripts-pretrain-resnet50/imagenet.sh', tmp_path, env, ['--seed', '3'])
    for shell in ('bash', SH):
        assert run('scripts-pretrain-resnet18/imagenet.sh', tmp_path, env, ['--seed', '3'], shell)[1] == calls
    assert calls[0][:2] == ['-m', 'torch.distributed.run'] and flag_values(calls)['--mixup_warmup_epochs'] == '3'


# ---------------------------------------------------------------------------- the settings check
def test_every_launcher_checks_its_settings_before_it_runs_anything():
    """check_settings comes after the variables and before the first command."""
    for script in LAUNCHERS + EVAL:
        if script in DELEGATES:
            continue
        lines = open(os.path.join(REPO, script)).read().splitlines()
        first = min(i for i, line in enumerate(lines) if re.match(r'(launch |require_checkpoint |for |"\$PYTHON")', line))
        assert lines[first - 1] == 'check_settings' and 'check_settings' not in lines[first:], script
        assert not any(re.match(r'[a-z_]+=', line) for line in lines[first:]), script


NEW_LAUNCHER = """#!/usr/bin/env bash
set -euo pipefail
source "{repo}/scripts/common.sh"
nproc=${{NPROC:-1}}
foo_count=${{FOO_COUNT:-3}}         # a setting no script had: its default's form is its kind
foo_rate=${{FOO_RATE:-0.5}}
foo_decay=${{FOO_DECAY:-1e-4}}
foo_sizes=${{FOO_SIZES:-64-64}}
foo_switch=${{FOO_SWITCH:-false}}
foo_name=${{FOO_NAME:-plain}}
foo_fixed=2.0
name=${{NAME_SET:-7}}                  # names check_settings uses itself are settings like any other
check_settings
echo ran
"""


@pytest.mark.parametrize('env, errors', [
    ({}, []),
    ({'FOO_COUNT': '-2', 'FOO_RATE': '2', 'FOO_DECAY': '.5E+3', 'FOO_SIZES': '8', 'FOO_SWITCH': 'Yes', 'FOO_NAME': '1.5x',
      'NAME_SET': '+4'}, []),
    ({'FOO_SWITCH': '0', 'FOO_RATE': '-1e-3', 'FOO_COUNT': '010'}, []),
    ({'FOO_COUNT': '2.5', 'FOO_RATE': 'fast', 'FOO_DECAY': '1e', 'FOO_SIZES': '64x64', 'FOO_SWITCH': 'maybe',
      'NAME_SET': 'seven', 'NPROC': '0'},
     ["nproc must be a whole number >= 1, got '0' (from NPROC in the environment)",
      "foo_count must be a whole number, got '2.5' (from FOO_COUNT in the environment)",
      "foo_rate must be a number (such as 0.01 or 1e-3), got 'fast' (from FOO_RATE in the environment)",
      "foo_decay must be a number (such as 0.01 or 1e-3), got '1e' (from FOO_DECAY in the environment)",
      "foo_sizes must be layer sizes such as 8192-8192-8192, got '64x64' (from FOO_SIZES in the environment)",
      "foo_switch must be true or false (also 1/0, yes/no), got 'maybe' (from FOO_SWITCH in the environment)",
      "name must be a whole number, got 'seven' (from NAME_SET in the environment)"]),
    ({'FOO_COUNT': '3.0'}, ["foo_count must be a whole number, got '3.0' (from FOO_COUNT in the environment)"])])
def test_a_new_setting_is_checked_by_the_form_of_its_default(env, errors, tmp_path):
    """A launcher that declares settings no script had before: bad values are refused, all of them, before
    anything runs, with no list to extend in scripts/common.sh; names, paths and choices are not checked."""
    script = tmp_path / 'new.sh'
    script.write_text(NEW_LAUNCHER.format(repo=REPO))
    proc = subprocess.run(['bash', str(script)], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, **env})
    found = [line[len('error: '):] for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert found == errors, proc.stderr
    assert (proc.returncode, 'ran' in proc.stdout.split()) == ((1, False) if errors else (0, True)), proc.stderr


def test_a_value_set_in_the_script_is_checked_too(tmp_path):
    """An edited default of the wrong kind names the script; nproc must be at least 1."""
    script = tmp_path / 'edited.sh'
    script.write_text(NEW_LAUNCHER.format(repo=REPO).replace('nproc=${NPROC:-1}', 'nproc=${NPROC:-0}'))
    proc = subprocess.run(['bash', str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and 'ran' not in proc.stdout
    assert f"error: nproc must be a whole number >= 1, got '0' (set in {script})" in proc.stderr


@pytest.mark.parametrize('script', [s for s in LAUNCHERS + EVAL if s not in DELEGATES])
def test_each_flag_default_is_written_in_the_kind_of_its_flag(script, default_run):
    """A variable passed as `--flag "$var"` has a default of its flag's type in the program's real parser, so
    that scripts/common.sh checks it as the program reads it: int flags whole numbers, float flags a decimal
    point or an exponent (4.0, 0.0, 1e-6; not 4 or 0), true/false flags true or false."""
    from mixbt.runtime import str2bool
    text = script_text(script)
    proc, calls = default_run(script)
    ((program, argv), *_) = program_calls(calls)
    parser = parser_of(program, argv)
    defaults = {m[1]: m[2] if m[2] is not None else m[3]  # name=${VAR:-default} or name=default
                for m in re.finditer(r'^([a-z_][a-z0-9_]*)=(?:\$\{[A-Z][A-Z0-9_]*:-([^}]*)\}|([^\s$#]*))(?=\s|$)', text, re.M)}
    checked = 0
    for flag, var in re.findall(r'(--[\w-]+) "\$(\w+)"', text):
        default = defaults.get(var)
        if default is None or '$' in default:
            continue
        kind = parser._option_string_actions[flag].type
        if kind is int:
            assert re.fullmatch(r'[-+]?\d+', default), (script, var, default, 'an int flag: write a whole number')
        elif kind is float:
            assert re.fullmatch(NUMBER, default) and not re.fullmatch(r'[-+]?\d+', default), \
                (script, var, default, 'a float flag: write a decimal point or an exponent')
        elif kind is str2bool:
            assert default.lower() in ('true', 'false'), (script, var, default)
        checked += 1
    assert checked


@pytest.mark.parametrize('script', [s for s in LAUNCHERS + EVAL if s not in DELEGATES])
def test_no_script_passes_a_value_its_program_resolves_on_its_own(script, default_run):
    """Each flag a script passes (but those of ALWAYS_PASSED) changes the configuration the program
    resolves (main.py: with its --method's and --dataset's defaults): a restated default would hide which
    of a script's settings are its recipe's own, and could drift from the default it copies."""
    proc, calls = default_run(script)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for program, argv in program_calls(calls):
        resolve = RESOLVERS[f'{program}.py']
        resolved = vars(resolve(argv))
        for start, end in flag_units(argv):
            if argv[start] in ALWAYS_PASSED:
                continue
            try:
                without = vars(resolve(argv[:start] + argv[end:]))
            except (Exception, SystemExit):
                continue  # needed
            assert without != resolved, (script, ' '.join(argv[start:end]), f'{program}.py resolves it on its own')


@pytest.mark.parametrize('script', ['scripts-pretrain-resnet50/tinyimagenet.sh', 'scripts-pretrain-resnet18/imagenet.sh',
                                    'scripts-linear-resnet50/imagenet_semisup_1.sh', 'ssl-sota/intl/cifar10.sh',
                                    'ssl-sota/cwrgp/cifar10-4views.sh', 'ssl-sota/wmse/stl10.sh',
                                    'scripts-transfer-resnet18/cifar10-to-x.sh', 'scripts-eval-resnet50/imagenet.sh'])
def test_every_numeric_setting_is_checked_before_anything_runs(script, released, tmp_path):
    """Each variable with a numeric or true/false default set to a value of no kind stops the script with an
    `error:` line naming it, before any python runs."""
    numeric = {var: name for var, (name, default) in overridable(script).items() if re.fullmatch(CHECKED, default)}
    env = {var: 'x1' for var in numeric}
    proc, calls = run(script, tmp_path, {**env, 'CHECKPOINT_DIR': str(released / 'checkpoints')})
    assert proc.returncode == 1 and calls == []
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert sorted(e.split()[1] for e in errors) == sorted(numeric.values()), proc.stderr
    assert all(f"got 'x1' (from {var} in the environment)" in proc.stderr for var in numeric)


@pytest.mark.parametrize('env, message', [
    ({'NPROC': 'two'}, "error: nproc must be a whole number >= 1, got 'two'"),
    ({'NPROC': '0'}, "error: nproc must be a whole number >= 1, got '0'"),
    ({'EPOCHS': '1.5'}, "error: epochs must be a whole number, got '1.5'"),
    ({'GPU': 'cuda:0'}, "error: gpu must be a whole number, got 'cuda:0'"),
    ({'LR': '0.01x'}, "error: lr must be a number (such as 0.01 or 1e-3), got '0.01x'"),
    ({'IS_MIXUP': 'on'}, "error: is_mixup must be true or false (also 1/0, yes/no), got 'on'"),
    ({'LMBDA': ''}, None),  # empty: the default
    ({'GPU': '-1', 'LR': '1e-3', 'LMBDA': '.5', 'MIXUP_LOSS_SCALE': '+4', 'EPOCHS': '010', 'IS_MIXUP': 'False'}, None),
    ({'EPOCHS': '0', 'IS_MIXUP': 'YES'}, None)])  # a whole number: main.py itself says an epoch count must be >= 1
def test_numbers_of_each_kind(env, message, tmp_path):
    proc, calls = run('scripts-pretrain-resnet18/cifar10.sh', tmp_path, env)
    if message:
        assert proc.returncode == 1 and calls == [] and message in proc.stderr, proc.stderr
    else:
        assert proc.returncode == 0 and len(calls) == 1, proc.stderr
        assert all(flag_values(calls)[f'--{var.lower()}'] == value for var, value in env.items() if value)


@pytest.mark.parametrize('env, warning', [
    ({'EPOCH': '1'}, 'EPOCH is set in the environment but scripts-pretrain-resnet18/cifar10.sh does not read it: '
                     'did you mean EPOCHS?'),
    ({'epochs': '1'}, 'epochs is set in the environment but scripts-pretrain-resnet18/cifar10.sh does not read it: '
                      'did you mean EPOCHS?'),
    ({'LR_SCHED': 'step'}, 'did you mean LR_SHED?'),
    ({'LAMBDA': '0.1'}, 'did you mean LMBDA?'),
    ({'BATCH': '8'}, 'did you mean BATCH_SIZE?'),
    ({'MIXUP_LOSS_SACLE': '2'}, 'did you mean MIXUP_LOSS_SCALE?'),
    ({'RESULT_DIR': 'r'}, 'did you mean RESULTS_DIR?'),
    ({'FEATUREDIM': '64'}, 'did you mean FEATURE_DIM?'),
    ({'DATASET': 'cifar100'}, 'DATASET is set in the environment but scripts-pretrain-resnet18/cifar10.sh fixes '
                              'dataset'),
    ({'SUBSET': '0', 'K': '25', 'PATH_X': '1', 'HOME': '/nowhere'}, None)])
def test_misspelt_overrides_are_warned_about_and_the_run_goes_on(env, warning, tmp_path):
    proc, calls = run('scripts-pretrain-resnet18/cifar10.sh', tmp_path, env)
    assert proc.returncode == 0 and len(calls) == 1
    warnings = [line for line in proc.stderr.splitlines() if line.startswith('warning')]
    if warning:
        assert len(warnings) == 1 and warning in warnings[0], proc.stderr
        assert flag_values(calls)['--epochs'] == '2000'  # the misspelt value is not used
    else:
        assert warnings == [], proc.stderr


def test_misspellings_of_the_names_of_other_scripts(tmp_path):
    """LAMBDA in a script that has LAMBDA_MIXUP and LAMBD; W_ITERS in one with W_ITER."""
    proc, _ = run('scripts-pretrain-resnet50/imagenet.sh', tmp_path, {'LAMBDA': '0.1', 'NPROC': '1'})
    assert 'LAMBDA is set in the environment' in proc.stderr and 'did you mean LAMBDA_MIXUP or LAMBD?' in proc.stderr
    proc, _ = run('ssl-sota/cwrgp/cifar10.sh', tmp_path, {'W_ITERS': '5'})
    assert 'did you mean W_ITER?' in proc.stderr


# ---------------------------------------------------------------------------- checkpoints the evaluation needs
def test_missing_released_checkpoint_says_where_to_download(tmp_path):
    proc, calls = run('scripts-linear-resnet50/stl10.sh', tmp_path, {'CHECKPOINT_DIR': str(tmp_path)})
    assert proc.returncode == 1 and calls == []
    assert 'pbknx38b_0.0078125_1024_256_stl10_model.pth not found' in proc.stderr
    assert 'https://github.com/wgcban/mix-bt/releases/download/v1.0.0/pbknx38b' in proc.stderr


def test_checkpoint_list_and_manifest_match_hub_registry():
    text = open(os.path.join(REPO, 'checkpoints', 'README.md')).read()
    for name, _, _ in hubconf.RELEASED.values():
        assert hubconf.RELEASE_URL + name in text
    scripts = ' '.join(open(os.path.join(REPO, s)).read() for s in LINEAR + TRANSFER)
    for key, (name, _, _) in hubconf.RELEASED.items():
        if key[1] != 'imagenet' or key[2] == 'mixbt-1.0':
            assert name in scripts, name
    rows = [line.split() for line in open(os.path.join(REPO, 'checkpoints', 'manifest.txt'))
            if line.strip() and not line.startswith('#')]
    assert sorted(row[0] for row in rows) == sorted(RELEASED_FILES)
    for _, size, sha in rows:
        assert size == 'unknown' or size.isdigit()
        assert sha == 'unknown' or re.fullmatch(r'[0-9a-f]{8,64}', sha)


def test_linear_fashionmnist_without_a_pretraining_run_says_to_run_one(tmp_path):
    (tmp_path / 'empty').mkdir()
    for shell in ('bash', SH):
        proc, calls = run('scripts-linear-resnet18/fashionmnist.sh', tmp_path, {'PRETRAIN_DIR': str(tmp_path / 'empty')},
                          shell=shell)
        assert proc.returncode == 1 and calls == [], proc.stderr
        assert 'not found' in proc.stderr and 'bash scripts-pretrain-resnet18/fashionmnist.sh' in proc.stderr
        assert 'bash quickstart.sh' in proc.stderr and 'MODEL_PATH' in proc.stderr and 'PRETRAIN_DIR' in proc.stderr


def test_linear_fashionmnist_probes_the_newest_pretraining_run_never_a_probe_run(tmp_path):
    runs = tmp_path / 'results'
    for i, (run_dir, marker) in enumerate([('old', 'last.pth'), ('new', 'last.pth'), ('probe', 'checkpoint.pth')]):
        (runs / run_dir).mkdir(parents=True)
        (runs / run_dir / marker).write_bytes(b'')
        (runs / run_dir / f'{run_dir}_0.0078125_16_8_fashionmnist_model.pth').write_bytes(b'')
        os.utime(runs / run_dir / f'{run_dir}_0.0078125_16_8_fashionmnist_model.pth', (1e9 + i, 1e9 + i))
    (runs / 'linear').mkdir()  # the linear script's own output folder, when RESULTS_DIR is the same folder
    proc, calls = run('scripts-linear-resnet18/fashionmnist.sh', tmp_path,
                      {'PRETRAIN_DIR': str(runs), 'RESULTS_DIR': str(runs)}, shell=SH)
    assert flag_values(calls)['--model_path'] == str(runs / 'new' / 'new_0.0078125_16_8_fashionmnist_model.pth')
    assert flag_values(calls)['--results_dir'] == str(runs)


STL10 = 'i7det4xq_0.0078125_1024_256_stl10_model.pth'  # a released checkpoint the real runs probe


# ---------------------------------------------------------------------------- one real run of each family (slow)
@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """The data sets the real runs read, in their official layouts, and the checkpoints they probe."""
    import fakedata
    import model as M
    import torchvision
    root = tmp_path_factory.mktemp('world')
    data = root / 'data'
    fakedata.write_cifar(str(data), 'cifar10', n_train=20, n_test=10)
    fakedata.write_stl10(str(data), n_train=10, n_test=10, n_unlabeled=10)
    fakedata.write_mnist_like(str(data / 'FashionMNIST' / 'raw'))
    fakedata.write_mnist_like(str(data / 'MNIST' / 'raw'), seed=1)
    fakedata.write_aircraft(str(data))
    fakedata.write_image_folder(str(data / 'imagenet' / 'train'), IMAGENET_CLASSES, per_class=3, size=72)
    fakedata.write_image_folder(str(data / 'imagenet' / 'val'), IMAGENET_CLASSES, per_class=2, size=72)
    (root / '1percent.txt').write_text(''.join(f'{c}_{i}.JPEG\n' for c in IMAGENET_CLASSES for i in range(2)))
    ckpt = root / 'checkpoints'
    ckpt.mkdir()
    def small_model(dataset):
        return M.build_model(argparse.Namespace(dataset=dataset, arch='resnet18', feature_dim=16, projector=None))
    torch.save(small_model('stl10').state_dict(), ckpt / STL10)
    tv = torchvision.models.resnet50()
    torch.save({k: v for k, v in tv.state_dict().items() if not k.startswith('fc.')},
               ckpt / hubconf.RELEASED[('resnet50', 'imagenet', 'mixbt-1.0')][0])
    run_dir = root / 'results' / 'abcd1234'  # a finished fashionmnist pretraining run
    run_dir.mkdir(parents=True)
    torch.save(small_model('fashionmnist').state_dict(),
               run_dir / 'abcd1234_0.0078125_16_8_fashionmnist_model.pth')
    (run_dir / 'last.pth').write_bytes(b'')  # main.py's training state: what marks a pretraining run folder
    return root


def real_run(script, world, tmp_path, env, args, shell='bash'):
    proc, _ = run(script, tmp_path, {'EPOCHS': '1', 'BATCH_SIZE': '4', 'RESULTS_DIR': str(tmp_path / 'out'),
                                     'DATA_ROOT': str(world / 'data'), 'CHECKPOINT_DIR': str(world / 'checkpoints'),
                                     **env}, args, shell=shell, stub=False, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize('script, env, args', [
    ('scripts-pretrain-resnet18/cifar10.sh', {}, []),
    ('ssl-sota/simclr/cifar10.sh', {}, ['--emb', '16', '--head_size', '32']),
    ('scripts-pretrain-resnet18/imagenet.sh', {'NPROC': '2'},
     ['--image_size', '64', '--projector', '32-32-32', '--ref_world_size', '2'])])
def test_pretraining_scripts_train(script, env, args, world, tmp_path):
    """`sh script.sh` (dash, as the original README) from any working directory: one optimiser step, the kNN
    monitor, a run folder; the ImageNet one with 2 processes under torchrun."""
    if 'imagenet' in script:
        env = {**env, 'DATA_ROOT': str(world / 'data' / 'imagenet')}
    real_run(script, world, tmp_path, env, ['--subset', '4', '--workers', '0', '--k', '3', *args], shell=SH)
    (run_dir,) = [d for d in (tmp_path / 'out').iterdir() if d.is_dir() and d.name != 'wandb']
    files = os.listdir(run_dir)
    assert 'last.pth' in files and any(f.endswith('_model.pth') for f in files)
    assert any(f.endswith('_statistics.csv') for f in files)
    saved = torch.load(run_dir / 'last.pth', weights_only=False)['args']
    assert saved['epochs'] == 1 and saved['batch_size'] == 4


@pytest.mark.slow
@pytest.mark.parametrize('script', ['scripts-linear-resnet18/fashionmnist.sh', 'scripts-linear-resnet50/imagenet_semisup_1.sh'])
def test_linear_scripts_evaluate(script, world, tmp_path):
    env, args = {'PRETRAIN_DIR': str(world / 'results')}, ['--subset', '4', '--workers', '0']
    if 'imagenet' in script:
        env.update(NPROC='1', DATA_ROOT=str(world / 'data' / 'imagenet'), TRAIN_FILES=str(world / '1percent.txt'))
        args += ['--image_size', '64']
    real_run(script, world, tmp_path, env, args, shell=SH)
    (results,) = glob.glob(str(tmp_path / 'out' / '*' / 'results.json'))
    assert 0 <= json.load(open(results))['final_acc@1'] <= 100
    if 'fashionmnist' in script:
        saved = json.load(open(os.path.join(os.path.dirname(results), 'args.json')))
        assert saved['model_path'] == str(world / 'results' / 'abcd1234' / 'abcd1234_0.0078125_16_8_fashionmnist_model.pth')


@pytest.mark.slow
def test_transfer_script_evaluates_each_transfer_set(world, tmp_path):
    expected = ['mnist', 'aircraft']
    real_run('scripts-transfer-resnet18/stl10-to-x.sh', world, tmp_path, {'TRANSFER_DATASETS': ' '.join(expected)},
             ['--subset', '4', '--workers', '0'], shell=SH)
    assert len(glob.glob(str(tmp_path / 'out' / '*' / 'results.json'))) == len(expected)
    csvs = glob.glob(str(tmp_path / 'out' / '*' / '*_statistics.csv'))
    assert sorted(c.rsplit('_transfer_', 1)[1][:-len('_statistics.csv')] for c in csvs) == sorted(expected)


def test_a_setting_a_script_leaves_to_main_py_is_warned_about_with_its_flag(tmp_path):
    """A script that does not restate a default does not read its variable (LR, HEAD_SIZE, BT_LOSS):
    setting it says which flag to pass, and the run goes on with the default."""
    proc, calls = run('ssl-sota/cwrgp/cifar10.sh', tmp_path, {'LR': '0.5', 'HEAD_SIZE': '2048'})
    assert proc.returncode == 0 and calls
    assert ('LR is set in the environment but ssl-sota/cwrgp/cifar10.sh does not read it: pass --lr VALUE'
            in proc.stderr) and 'HEAD_SIZE is set in the environment' in proc.stderr and '--head_size' in proc.stderr
    proc, _ = run('scripts-pretrain-resnet18/cifar10.sh', tmp_path, {'LR': '0.5'})
    assert 'warning' not in proc.stderr  # this script reads LR


def test_every_flag_named_for_a_setting_left_to_the_program_exists():
    from mixbt import config
    pairs = subprocess.run(['bash', '-c', 'source scripts/common.sh; echo $SETTINGS_AS_FLAGS'], cwd=REPO,
                           capture_output=True, text=True).stdout.split()
    options = {o for a in config.build_parser()._actions for o in a.option_strings}
    linear_help = subprocess.run([sys.executable, 'linear.py', '--help'], cwd=REPO, capture_output=True,
                                 text=True).stdout
    assert len(pairs) > 20
    for pair in pairs:
        name, flag = pair.split(':')
        assert flag in options or flag in linear_help, pair
