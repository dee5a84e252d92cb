"""Run a wandb sweep's grid without wandb, point by point, through a launch script.

    python3 -m sweeps.grid sweeps/mixbt_resnet18_cifar10_lmbda_s.yaml             # run, or continue, the grid
    python3 -m sweeps.grid sweeps/mixbt_resnet18_cifar10_lmbda_s.yaml --dry_run   # the points and which are done
    EPOCHS=100 python3 -m sweeps.grid sweeps/<file>.yaml -- --seed 1               # script overrides, main.py flags

Each point runs `bash <script> [flags after --] --run_name <name>`, the swept values set through the
script's own environment overrides (lmbda -> LMBDA, mixup_loss_scale -> MIXUP_LOSS_SCALE, is_mixup ->
IS_MIXUP, ...; a swept flag the script has no variable for is passed as `--flag value`). The script
defaults to scripts-pretrain-<arch>/<dataset>.sh of the sweep's command. The run name comes from the
point (sweep-resnet18-cifar10-lmbda0.0078125-s4), so a rerun continues the grid: a point whose
statistics already reach the last epoch is skipped, an interrupted one resumes (main.py resumes a
--run_name folder that holds last.pth). At the end the grid's runs are compared (compare.py): a table
here, a plot next to the run folders.
"""
import argparse
import itertools
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import compare  # noqa: E402
from mixbt.errors import MixBTError  # noqa: E402

NAME_PART = {'lmbda': 'lmbda', 'mixup_loss_scale': 's', 'is_mixup': 'mixup', 'feature_dim': 'd',
             'batch_size': 'batch', 'epochs': 'ep'}


def load_sweep(path):
    import yaml
    try:
        with open(path) as f:
            sweep = yaml.safe_load(f)
    except OSError as e:
        raise MixBTError(f'{path}: {e.strerror}') from None
    except yaml.YAMLError as e:
        raise MixBTError(f'{path}: not valid YAML ({" ".join(str(e).split())})') from None
    if not isinstance(sweep, dict) or not isinstance(sweep.get('parameters'), dict) or not sweep['parameters']:
        raise MixBTError(f'{path}: not a wandb sweep configuration (no `parameters`)')
    for name, spec in sweep['parameters'].items():
        if not isinstance(spec, dict) or not ('values' in spec or 'value' in spec):
            raise MixBTError(f'{path}: parameter {name} has neither `values` nor `value`; grid.py runs grids only')
    return sweep


def grid_points(sweep):
    """Every combination of the `values` lists, in the order wandb's grid search takes them (the
    last parameter changes fastest); each point also holds the constant `value` parameters."""
    params = sweep['parameters']
    swept = [k for k, spec in params.items() if 'values' in spec]
    fixed = {k: spec['value'] for k, spec in params.items() if 'values' not in spec}
    return [{**fixed, **dict(zip(swept, combo))} for combo in itertools.product(*(params[k]['values'] for k in swept))]


def swept_names(sweep):
    return [k for k, spec in sweep['parameters'].items() if 'values' in spec]


def command_flags(sweep):
    """{flag: value} of the sweep command's fixed flags (`True` for a flag without a value)."""
    tokens = [str(t) for t in sweep.get('command', []) if not str(t).startswith('${')]
    flags = {}
    for i, token in enumerate(tokens):
        if token.startswith('--'):
            value = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith('--') else True
            flags[token[2:]] = value
    return flags


def default_script(sweep):
    flags = command_flags(sweep)
    if 'arch' not in flags or 'dataset' not in flags:
        raise MixBTError('the sweep command names no --arch/--dataset: give the launch script with --script')
    script = os.path.join(ROOT, f'scripts-pretrain-{flags["arch"]}', f'{flags["dataset"].replace("_", "")}.sh')
    if not os.path.isfile(script):
        raise MixBTError(f'no launch script {os.path.relpath(script, ROOT)} for this sweep: give one with --script')
    return script


def script_variables(script):
    """{main.py flag: (environment variable, default)} of a launch script's `name=${VAR:-default}`
    lines whose `$name` is passed as `--flag "$name"`."""
    with open(script) as f:
        text = f.read()
    variables = {m.group(1): (m.group(2), m.group(3))
                 for m in re.finditer(r'^\s*(\w+)=\$\{([A-Z][A-Z0-9_]*):-([^}]*)\}', text, re.M)}
    return {m.group(1): variables[m.group(2)]
            for m in re.finditer(r'--(\w+) "\$\{?(\w+)\}?"', text) if m.group(2) in variables}


def value_text(value):
    """A swept value as the command line gets it: 4.0 -> 4, True -> true."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def run_name(point, swept, tag):
    parts = []
    for key in swept:
        short, text = NAME_PART.get(key, key), value_text(point[key])
        parts.append(f'{short}{text}' if re.fullmatch(r'[-+0-9.e]+', text) else f'{short}-{text}')
    return re.sub(r'[^A-Za-z0-9._-]', '_', '-'.join(['sweep', tag] + parts))


def script_tag(script):
    """scripts-pretrain-resnet18/cifar10.sh -> resnet18-cifar10."""
    folder = os.path.basename(os.path.dirname(os.path.abspath(script)))
    return f'{folder.replace("scripts-pretrain-", "")}-{os.path.splitext(os.path.basename(script))[0]}'


def flag_value(args, flag):
    """The last value of `--flag` in a main.py argument list (argparse keeps the last one), or None."""
    value = None
    for i, arg in enumerate(args):
        if arg == f'--{flag}' and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f'--{flag}='):
            value = arg.split('=', 1)[1]
    return value


def target_epochs(point, extra, variables):
    """The epochs a point trains for: a main.py flag after --, the sweep, the environment, the script."""
    for value in (flag_value(extra, 'epochs'), point.get('epochs')):
        if value is not None:
            return int(value)
    if 'epochs' in variables:
        env, default = variables['epochs']
        try:
            return int(os.environ.get(env, default))
        except ValueError:
            return None  # main.py will say what is wrong with it
    return None


def progress(folder, target):
    """(epochs done, finished) of a point's run folder; (0, False) when it has no statistics yet."""
    try:
        run = compare.read_run(folder)
    except MixBTError:
        return 0, False
    target = target or run.args.get('epochs')
    return run.epochs_done, bool(target) and run.epochs_done >= int(target)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index('--') + 1:] if '--' in argv else []
    argv = argv[:argv.index('--')] if '--' in argv else argv
    p = argparse.ArgumentParser(description="Run a wandb sweep's grid offline through a launch script",
                                allow_abbrev=False)
    p.add_argument('sweep', help='the sweep configuration (sweeps/<file>.yaml)')
    p.add_argument('--script', default=None, help='launch script (default: scripts-pretrain-<arch>/<dataset>.sh)')
    p.add_argument('--results_dir', default=os.environ.get('RESULTS_DIR', os.path.join(ROOT, 'results')),
                   help='where the run folders go (default: $RESULTS_DIR, else results/)')
    p.add_argument('--dry_run', action='store_true', help='list the points and the commands; run nothing')
    p.add_argument('--out', default=None, help='comparison plot (default: <results_dir>/<sweep>_compare.png)')
    args = p.parse_args(argv)
    try:
        return run_grid(args, extra)
    except MixBTError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1


def run_grid(args, extra):
    sweep = load_sweep(args.sweep)
    script = os.path.abspath(args.script) if args.script else default_script(sweep)
    if not os.path.isfile(script):
        raise MixBTError(f'--script {args.script}: no such file')
    variables = script_variables(script)
    relative = os.path.relpath(script)
    shown_script = script if relative.startswith('..') else relative
    results_dir = os.path.abspath(args.results_dir)
    swept, points = swept_names(sweep), grid_points(sweep)
    group = sweep.get('name') or os.path.splitext(os.path.basename(args.sweep))[0]
    folders, failed = [], []
    for i, point in enumerate(points, 1):
        name = run_name(point, swept, script_tag(script))
        folder = os.path.join(results_dir, name)
        folders.append(folder)
        env, flags = {}, []
        for key, value in point.items():
            if key in variables:
                env[variables[key][0]] = value_text(value)
            else:
                flags += [f'--{key}', value_text(value)]
        command = ['bash', script, *extra, *flags, '--run_name', name]
        shown = ' '.join([f'{k}={shlex.quote(v)}' for k, v in env.items()]
                         + [shlex.join(['bash', shown_script, *command[2:]])])
        target = target_epochs(point, extra, variables)
        done, finished = progress(folder, target)
        if finished:
            print(f'[{i}/{len(points)}] {name}: done ({done}/{target or done} epochs), skipped', flush=True)
            continue
        state = f'resumes after epoch {done}' if done else 'new'
        print(f'[{i}/{len(points)}] {name}: {state}: {shown}', flush=True)
        if args.dry_run:
            continue
        # RESULTS_DIR puts the folder where the skip check looks; the wandb group gathers the grid's runs.
        full_env = {**os.environ, **env, 'RESULTS_DIR': results_dir}
        full_env.setdefault('WANDB_RUN_GROUP', group)
        full_env.setdefault('WANDB_NAME', name)
        if subprocess.run(command, env=full_env).returncode != 0:
            failed.append(name)
            print(f'[{i}/{len(points)}] {name} failed; going on with the grid', file=sys.stderr, flush=True)

    runs = [run for folder in folders for run in compare.try_read_run(folder)]
    if runs:
        out = None if args.dry_run else (args.out or os.path.join(results_dir, f'{group}_compare.png'))
        print(f'\n{len(runs)} of {len(points)} points have run:\n')
        print(compare.report(runs, out))
    if failed:
        raise MixBTError(f'{len(failed)} of {len(points)} points failed ({", ".join(failed)}); '
                         'run the same command again to retry them (finished points are skipped)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
