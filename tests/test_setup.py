"""The README's two commands on any machine: `bash quickstart.sh` and `bash quickstart.sh --test`.

A stand-in python3 plays each kind of machine (pip accepts installs or refuses them as Debian's does,
PEP 668; torch importable or not; requirements missing or not; pip offline) and logs every call, so
nothing is downloaded. The quick start's own checks also run on the real interpreters of this machine."""
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBIAN_PYTHON = '/usr/bin/python3'

# $role: system or venv. The system python answers from $HAS_TORCH, $MISSING (requirements it lacks),
# $MANAGED (refuses pip: PEP 668), $PIP_RC, $VENV_RC; `-m venv [--system-site-packages] DIR` writes DIR's
# python3, which has torch when it sees a system torch, and whose pip always works.
FAKE_PYTHON = r'''#!/bin/sh
role=system
printf '%s %s | PATH=%s\n' "$role" "$(printf '%s' "$*" | tr '\n' ' ')" "$PATH" >> "$CALLS"
has=$(dirname "$0")/../has-torch  # in a venv: it sees a system torch, or requirements.txt was installed
case "$*" in
  *"import torch, torchvision"*) [ $role = venv ] && { [ -f "$has" ]; exit $?; }; exit $HAS_TORCH ;;
  *importlib.metadata*) [ $role = venv ] && [ -f "$has.all" ] || echo "$MISSING"; exit 0 ;;
  *EXTERNALLY-MANAGED*) [ $role = venv ] && exit 0; exit $MANAGED ;;
  *"import pip"*) exit 0 ;;
  "-m venv"*)
    [ "$VENV_RC" = 0 ] || { mkdir -p "$3/bin"; exit "$VENV_RC"; }  # as Debian without python3-venv: half made
    dir=$3
    if [ "$3" = --system-site-packages ]; then dir=$4; mkdir -p "$dir"; [ $HAS_TORCH = 0 ] && : > "$dir/has-torch"; fi
    mkdir -p "$dir/bin" && sed 's/^role=system$/role=venv/' "$0" > "$dir/bin/python3" && chmod +x "$dir/bin/python3"
    exit 0 ;;
  "-m pip install -r requirements.txt") [ $role = venv ] && { : > "$has"; : > "$has.all"; exit 0; }; exit $PIP_RC ;;
  "-m pip"*) [ $role = venv ] && exit 0; exit $PIP_RC ;;
esac
exit 0
'''


def quickstart(tmp_path, args=(), has_torch=True, missing='', managed=False, pip_ok=True, venv_ok=True,
               apt_ok=False, env=None):
    """Run quickstart.sh with the stand-in python3 first on PATH. Returns (process, calls, venv dir):
    calls are (role, argv, PATH) of each python call."""
    bin_dir, calls = tmp_path / 'bin', tmp_path / 'calls'
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / 'python3').write_text(FAKE_PYTHON)
    (bin_dir / 'apt-get').write_text(f'#!/bin/sh\necho "apt-get $*" >> "$CALLS"\nexit {0 if apt_ok else 100}\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    venv = tmp_path / 'venv'
    calls.unlink(missing_ok=True)
    full_env = {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'CALLS': str(calls),
                'HAS_TORCH': '0' if has_torch else '1', 'MISSING': missing, 'MANAGED': '1' if managed else '0',
                'PIP_RC': '0' if pip_ok else '1', 'VENV_RC': '0' if venv_ok else '1', 'VENV_DIR': str(venv),
                'WANDB_MODE': 'disabled', **(env or {})}
    for name in ('PYTHON', 'INSTALL', 'PIP_BREAK_SYSTEM_PACKAGES'):
        if name not in (env or {}):
            full_env.pop(name, None)
    proc = subprocess.run(['bash', os.path.join(REPO, 'quickstart.sh'), *args], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True, timeout=60)
    logged = []
    for line in (calls.read_text().splitlines() if calls.exists() else []):
        if line.startswith('apt-get '):
            logged.append(('apt-get', line[len('apt-get '):], ''))
        else:
            head, path = line.rsplit(' | PATH=', 1)
            role, _, argv = head.partition(' ')
            logged.append((role, argv, path))
    return proc, logged, venv


def pip_calls(calls, role):
    return [argv for r, argv, _ in calls if r == role and argv.startswith('-m pip')]


def trained_by(calls):
    return [r for r, argv, _ in calls if 'main.py' in argv]


# ---------------------------------------------------------------------------- a python that accepts pip installs
@pytest.mark.parametrize('case', ['no torch', 'torch, others missing, offline', 'all there', 'INSTALL=1'])
def test_installs_only_what_is_missing_and_keeps_an_importable_torch(case, tmp_path):
    """requirements.txt only without torch (or with INSTALL=1); never over an importable torch; an install
    of the others that fails (offline) does not stop the run. No virtual environment."""
    has_torch, missing = case != 'no torch', 'numpy wandb' if 'missing' in case else ''
    proc, calls, venv = quickstart(tmp_path, has_torch=has_torch, missing=missing, pip_ok=not has_torch,
                                   env={'INSTALL': '1'} if case == 'INSTALL=1' else None)
    pip = pip_calls(calls, 'system')
    assert not venv.exists() and not any('-m venv' in argv for _, argv, _ in calls)
    if case == 'INSTALL=1':  # pip fails here (torch importable): with INSTALL=1 that stops the quick start
        assert proc.returncode != 0 and pip == ['-m pip install -r requirements.txt'] and not trained_by(calls)
        return
    assert proc.returncode == 0, proc.stderr
    assert trained_by(calls) == ['system']
    assert 'warning: ' not in proc.stderr.replace('warning: could not install', '')  # SUBSET, K, INSTALL: no alarm
    if case == 'no torch':
        assert pip == ['-m pip install -r requirements.txt'] and 'about 3 GB to download' in proc.stderr
    elif case == 'all there':
        assert pip == []
    else:
        assert len(pip) == 1 and 'requirements.txt' not in pip[0] and 'warning: could not install' in proc.stderr
        assert '(numpy wandb); its torch stays' in proc.stderr


# ---------------------------------------------------------------------------- a python that refuses them (PEP 668)
def test_stock_debian_python_gets_a_virtual_environment_once(tmp_path):
    """`bash quickstart.sh` stopped with `error: externally-managed-environment`. Now: a venv (without the
    system site: there is no torch to reuse), requirements.txt installed there, the run in its python,
    and how to use it afterwards; a second run uses the same venv."""
    proc, calls, venv = quickstart(tmp_path, has_torch=False, missing='numpy', managed=True)
    assert proc.returncode == 0, proc.stderr
    assert [argv for r, argv, _ in calls if '-m venv' in argv] == [f'-m venv {venv}']
    assert pip_calls(calls, 'system') == [] and pip_calls(calls, 'venv') == ['-m pip install -r requirements.txt']
    assert trained_by(calls) == ['venv']
    assert 'PEP 668' in proc.stderr and 'about 3 GB to download' in proc.stderr
    assert f'source {venv}/bin/activate' in proc.stdout
    proc, calls, _ = quickstart(tmp_path, has_torch=False, missing='numpy', managed=True)
    assert proc.returncode == 0 and not any('-m venv' in argv for _, argv, _ in calls)
    assert pip_calls(calls, 'venv') == [] and trained_by(calls) == ['venv']


def test_managed_python_with_torch_gets_a_venv_that_keeps_its_torch(tmp_path):
    proc, calls, venv = quickstart(tmp_path, has_torch=True, missing='pyyaml', managed=True)
    assert proc.returncode == 0, proc.stderr
    assert [argv for r, argv, _ in calls if '-m venv' in argv] == [f'-m venv --system-site-packages {venv}']
    (pip,) = pip_calls(calls, 'venv')
    assert 'requirements.txt' not in pip and pip_calls(calls, 'system') == []  # torch: the system's
    assert trained_by(calls) == ['venv'] and 'that sees its torch' in proc.stderr


def test_managed_python_with_everything_installed_is_used_as_it_is(tmp_path):
    """Debian's packages (or a managed python with all of requirements.txt): nothing to install, no venv."""
    proc, calls, venv = quickstart(tmp_path, managed=True)
    assert proc.returncode == 0 and not venv.exists() and trained_by(calls) == ['system']
    assert 'source' not in proc.stdout


def test_without_the_venv_module_one_error_line_says_what_to_install(tmp_path):
    """Debian without python3-venv: root asks apt-get for it; otherwise (or when that fails) one error line,
    the half-made venv removed, nothing run."""
    proc, calls, venv = quickstart(tmp_path, has_torch=False, managed=True, venv_ok=False)
    assert proc.returncode == 1 and not trained_by(calls) and not venv.exists()
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'sudo apt-get install python3-venv' in errors[0], proc.stderr
    asked = [argv for r, argv, _ in calls if r == 'apt-get']
    assert asked == (['install -y -qq python3-venv'] if os.geteuid() == 0 else [])


def test_missing_python_is_one_error_line(tmp_path):
    proc, calls, _ = quickstart(tmp_path, env={'PYTHON': str(tmp_path / 'nosuch' / 'python3')})
    assert proc.returncode == 1 and calls == []
    assert proc.stderr.startswith('error: ') and 'not found' in proc.stderr and len(proc.stderr.splitlines()) == 1


# ---------------------------------------------------------------------------- the README's test command
@pytest.mark.parametrize('managed', [False, True])
def test_test_command_runs_pytest_in_the_python_it_installed_into(managed, tmp_path):
    """`bash quickstart.sh --test [ARGS]`: the same installation, then `python -m pytest -q ARGS` in that
    python, first on PATH (the tests start python3 themselves); no training, no data set."""
    proc, calls, venv = quickstart(tmp_path, ['--test', '-m', 'not slow'], has_torch=not managed, managed=managed)
    assert proc.returncode == 0, proc.stderr
    role = 'venv' if managed else 'system'
    ((who, argv, path),) = [c for c in calls if '-m pytest' in c[1]]
    assert who == role and argv == '-m pytest -q -m not slow' and not trained_by(calls)
    if managed:
        assert path.split(':')[0] == f'{venv}/bin'
    assert not [c for c in calls if c[0] == 'apt-get' and 'dataset' in c[1]]


def test_ci_runs_exactly_the_readme_test_command():
    lines = [line for line in open(os.path.join(REPO, '.ci', 'run')).read().splitlines()
             if line.strip() and not line.startswith('#')]
    assert lines[-1] == 'bash quickstart.sh --test'
    assert not any('pip install' in line or 'pytest' in line for line in lines[:-1])


# ---------------------------------------------------------------------------- the checks on real interpreters
def quickstart_function(name, python, env=None):
    """Run one of quickstart.sh's shell functions with a real interpreter."""
    script = f'source <(sed -n "/^{name}()/,/^}}/p" quickstart.sh); {name} "$0"'
    return subprocess.run(['bash', '-c', script, python], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.mark.skipif(not os.path.isfile(DEBIAN_PYTHON), reason='no system python3 here')
def test_pip_check_on_the_real_interpreters(tmp_path):
    """Debian's python refuses installs (its EXTERNALLY-MANAGED marker), unless the user
    set PIP_BREAK_SYSTEM_PACKAGES; a venv of it accepts them (made without pip: nothing is fetched)."""
    env = {'PIP_BREAK_SYSTEM_PACKAGES': ''}
    marker = subprocess.run([DEBIAN_PYTHON, '-c', 'import sysconfig; print(sysconfig.get_path("stdlib"))'],
                            capture_output=True, text=True).stdout.strip() + '/EXTERNALLY-MANAGED'
    if not os.path.isfile(marker):
        pytest.skip(f'{DEBIAN_PYTHON} is not externally managed here')
    assert quickstart_function('pip_allowed', DEBIAN_PYTHON, env).returncode == 1
    assert quickstart_function('pip_allowed', DEBIAN_PYTHON, {'PIP_BREAK_SYSTEM_PACKAGES': '1'}).returncode == (
        0 if subprocess.run([DEBIAN_PYTHON, '-c', 'import pip'], capture_output=True).returncode == 0 else 1)
    venv = tmp_path / 'venv'
    made = subprocess.run([DEBIAN_PYTHON, '-m', 'venv', '--without-pip', '--system-site-packages', str(venv)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f'no venv module for {DEBIAN_PYTHON}')
    has_pip = subprocess.run([str(venv / 'bin' / 'python3'), '-c', 'import pip'], capture_output=True).returncode == 0
    assert quickstart_function('pip_allowed', str(venv / 'bin' / 'python3'), env).returncode == (0 if has_pip else 1)


def test_missing_requirements_on_this_python():
    """The requirements this python lacks, by distribution name (pillow, pyyaml, scikit-learn: no import names
    to map): none on a machine the suite runs on, so the quick start installs nothing here."""
    import importlib.metadata as md
    proc = quickstart_function('missing_requirements', sys.executable)
    assert proc.returncode == 0, proc.stderr
    names = [re.split(r'[=<>~!; #]', line.strip())[0] for line in open(os.path.join(REPO, 'requirements.txt'))]
    expected = []
    for name in names:
        if name and name not in ('torch', 'torchvision'):
            try:
                md.version(name)
            except md.PackageNotFoundError:
                expected.append(name)
    assert proc.stdout.split() == expected


def test_requirements_pin_every_third_party_import():
    """sweeps/grid.py imports yaml: PyYAML is pinned with the rest, each at one exact version."""
    pins = {}
    for line in open(os.path.join(REPO, 'requirements.txt')):
        line = line.split('#')[0].strip()
        if line:
            name, version = line.split('==')
            pins[name.lower()] = version
    assert {'torch', 'torchvision', 'numpy', 'pyyaml', 'wandb', 'matplotlib', 'pytest'} <= set(pins)
    assert all(re.fullmatch(r'[0-9][0-9a-z.]*', v) for v in pins.values()), pins
    assert 'import yaml' in open(os.path.join(REPO, 'sweeps', 'grid.py')).read()


def test_run_outputs_in_the_repository_are_ignored_by_git():
    if shutil.which('git') is None or not os.path.isdir(os.path.join(REPO, '.git')):
        pytest.skip('not a git checkout')
    for path in ('compare.png', '.venv/bin/python3', 'results/x/last.pth', 'data/FashionMNIST/raw/x',
                 'checkpoints/x.pth', 'wandb/run'):
        proc = subprocess.run(['git', 'check-ignore', '-q', '--no-index', path], cwd=REPO)
        assert proc.returncode == 0, path
