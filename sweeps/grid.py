"""Run a wandb sweep's grid without wandb, point by point, through a launch script.

    python3 -m sweeps.grid sweeps/mixbt_resnet18_cifar10_lmbda_s.yaml             # run, or continue, the grid
    python3 -m sweeps.grid sweeps/mixbt_resnet18_cifar10_lmbda_s.yaml --dry_run   # the points and which are done
    python3 -m sweeps.grid sweeps/mixup_on_off_resnet18_cifar10.yaml --seeds 0 1 2   # each point over 3 seeds
    NPROC=2 python3 -m sweeps.grid sweeps/<file>.yaml -- --epochs 100             # script overrides, main.py flags

(from the repository root). Each point runs `bash <script> <flags> [flags after --] --run_name <name>`
with the flags `wandb agent` would give main.py: the sweep command's fixed flags, then the point's
values. A flag the script has an environment override for goes through it (lmbda -> LMBDA, epochs
-> EPOCHS, ...; the script then prints the value the run uses), any other as `--flag value`; flags
after -- come last and win. The script defaults to scripts-pretrain-<arch>/<dataset>.sh of the
sweep's command. A seeds axis (--seeds, or `seeds: [0, 1, 2]` in the sweep file, grid.py only;
wandb's form is a `seed` parameter) makes each seed its own point.

A point's identity is the complete command it runs: the script, every main.py flag given, and the
values of the script's environment overrides. It is recorded beside the point's run folder
(<run name>.sweep_point.json), and a rerun skips a point as done (its statistics reach the last epoch) or
resumes it only when the identity matches; a point whose identity differs (other flags after --,
another environment) runs afresh in its own folder, <name>-<identity digest>, and says so. At the
end the grid's runs are compared (compare.py): a table here, a plot next to the run folders.
"""
import argparse
import hashlib
import itertools
import json
import os
import re
import shlex
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import compare  # noqa: E402
from mixbt import identity  # noqa: E402
from mixbt.errors import MixBTError  # noqa: E402
from sweeps import grid_child  # noqa: E402

NAME_PART = {'lmbda': 'lmbda', 'mixup_loss_scale': 's', 'is_mixup': 'mixup', 'feature_dim': 'd',
             'batch_size': 'batch', 'epochs': 'ep', 'seed': 'seed'}
RECORD = 'sweep_point.json'  # <run name>.sweep_point.json beside the run folder
# Where a run reads and writes, and its device: not what the run is.
LOCATION_FLAGS = ('--gpu', '--data_root', '--results_dir')
# Flags that decide where a point's folder is: grid.py's own business.
OWN_FLAGS = ('run_name', 'results_dir', 'resume')


def load_sweep(path, seeds=None):
    """The sweep configuration, every parameter checked; `seeds` (--seeds) becomes the `seed` axis."""
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
        check_parameter(path, name, spec)
    axis = [('--seeds', seeds)] if seeds is not None else []
    axis += [('`seeds:`', sweep.pop('seeds'))] if 'seeds' in sweep else []
    if 'seed' in sweep['parameters']:
        axis.append(('the `seed` parameter', None))
    if len(axis) > 1:
        raise MixBTError(f'{path}: seeds given twice ({" and ".join(a for a, _ in axis)}); keep one')
    if axis and axis[0][1] is not None:
        check_parameter(path, 'seeds', {'values': axis[0][1]})
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in axis[0][1]):
            raise MixBTError(f'{path}: {axis[0][0]} must be whole numbers, got {axis[0][1]!r}')
        sweep['parameters'] = {'seed': {'values': list(axis[0][1])}, **sweep['parameters']}  # the slowest axis
    return sweep


def check_parameter(path, name, spec):
    """One line for a parameter grid.py cannot run as wandb's grid would."""
    where = f'{path}: parameter {name}'
    if not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_.-]*', str(name)):
        raise MixBTError(f'{where}: not a main.py flag name')
    if not isinstance(spec, dict) or not ('values' in spec or 'value' in spec):
        raise MixBTError(f'{where} has neither `values` nor `value`; grid.py runs grids only')
    values = spec['values'] if 'values' in spec else [spec['value']]
    if 'values' in spec and not isinstance(values, list):
        raise MixBTError(f'{where}: `values` must be a list, got {type(values).__name__} {values!r}; write '
                         f'values: [{values}] (or value: {values} for one fixed value)')
    if not values:
        raise MixBTError(f'{where}: `values` is empty, so the grid has no point; give at least one value')
    for value in values:
        if value is None or not isinstance(value, (str, int, float, bool)):
            raise MixBTError(f'{where}: {value!r} is not a number, text or true/false')
    texts = [value_text(v) for v in values]
    twice = sorted({t for t in texts if texts.count(t) > 1})
    if twice:
        raise MixBTError(f'{where}: {", ".join(twice)} listed twice (two points, one run folder); list it once')


def grid_points(sweep):
    """Every combination of the `values` lists, in the order wandb's grid search takes them (the
    last parameter changes fastest); each point also holds the constant `value` parameters."""
    params = sweep['parameters']
    swept = [k for k, spec in params.items() if 'values' in spec]
    fixed = {k: spec['value'] for k, spec in params.items() if 'values' not in spec}
    return [{**fixed, **dict(zip(swept, combo))} for combo in itertools.product(*(params[k]['values'] for k in swept))]


def swept_names(sweep):
    """The swept parameters in the run name's order: the seed last."""
    names = [k for k, spec in sweep['parameters'].items() if 'values' in spec]
    return [k for k in names if k != 'seed'] + [k for k in names if k == 'seed']


def command_flags(sweep):
    """{flag: value} of the sweep command's fixed flags (`True` for a flag without a value)."""
    tokens = [str(t) for t in sweep.get('command', []) if not str(t).startswith('${')]
    flags = {}
    for i, token in enumerate(tokens):
        if token.startswith('--') and '=' in token:
            flags[token[2:].split('=', 1)[0]] = token.split('=', 1)[1]
        elif token.startswith('--'):
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


def script_overrides(script):
    """{environment variable: default} of a launch script's `name=${VAR:-default}` lines."""
    with open(script) as f:
        text = f.read()
    return {m.group(2): m.group(3) for m in re.finditer(r'^\s*(\w+)=\$\{([A-Z][A-Z0-9_]*):-([^}]*)\}', text, re.M)}


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


def parse_flags(args):
    """{--flag: its last value (argparse keeps the last), True for a bare flag}; other words under ''."""
    flags = {}
    for i, arg in enumerate(args):
        if arg.startswith('--') and '=' in arg:
            flags[arg.split('=', 1)[0]] = arg.split('=', 1)[1]
        elif arg.startswith('--'):
            flags[arg] = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith('--') else True
        elif i == 0 or not args[i - 1].startswith('--') or '=' in args[i - 1]:
            flags.setdefault('', []).append(arg)
    return flags


def check_extra(extra, sweep):
    given = parse_flags(extra)
    own = [f for f in given if f[2:] in OWN_FLAGS]
    if own:
        raise MixBTError(f'{own[0]} after --: grid.py names and places each point\'s folder; give grid.py '
                         '--results_dir instead')
    if '--seed' in given and 'seed' in swept_names(sweep):
        raise MixBTError('--seed after -- would give every seed of the seeds axis one seed; drop one of them')


class Point:
    """One grid point: its main.py flags, the script's environment overrides, its identity."""

    def __init__(self, values, name, script, variables, overrides, settings, extra):
        self.values, self.base_name = values, name
        self.env, self.flags = {}, []
        for flag, value in settings.items():
            if flag in variables and value is not True:
                self.env[variables[flag][0]] = value
            else:
                self.flags += [f'--{flag}'] + ([] if value is True else [value])
        self.flags += list(extra)
        # What the run is: the script, and each main.py flag's value in effect (the script passes its
        # overrides first, then our flags: the last one wins), plus the script's other overrides.
        launcher = {**os.environ, **self.env}
        value_of = lambda var, default: launcher.get(var) or default  # bash's ${VAR:-default}
        passed = {var for var, _ in variables.values()}
        self.identity = {'script': shown_path(script)}
        self.identity.update({f'--{flag}': value_of(*variables[flag]) for flag in variables})
        self.identity.update(parse_flags(self.flags))
        self.identity.update({f'${var}': value_of(var, default) for var, default in overrides.items()
                              if var not in passed})
        for flag in LOCATION_FLAGS:
            self.identity.pop(flag, None)
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:8]
        self.other_name = f'{name}-{digest}'

    def command(self, script, name):
        return ['bash', script, *self.flags, '--run_name', name]

    def shown(self, script, name):
        return ' '.join([f'{k}={shlex.quote(v)}' for k, v in self.env.items()]
                        + [shlex.join(['bash', shown_path(script), *self.command(script, name)[2:]])])


def shown_path(path):
    relative = os.path.relpath(path, ROOT)
    return path if relative.startswith('..') else relative


def record_path(results_dir, name):
    """A point's identity record, beside its run folder (main.py starts a new run only in a folder that
    holds no other files)."""
    return os.path.join(results_dir, f'{name}.{RECORD}')


def choose_folder(point, results_dir):
    """(run name, note or None): the folder whose record holds this point's identity; else the point's
    name where that folder is not there yet; else <name>-<digest>, with the one line that says why."""
    for name in (point.other_name, point.base_name):
        if identity.read_json(record_path(results_dir, name), 'grid point record') == point.identity:
            return name, None
    if not os.path.exists(os.path.join(results_dir, point.base_name)):
        return point.base_name, None
    recorded = identity.read_json(record_path(results_dir, point.base_name), 'grid point record')
    diffs = identity.differences(recorded, point.identity) if isinstance(recorded, dict) else []
    return point.other_name, (identity.stale_note(f'{point.base_name} holds another command\'s run', diffs)
                              + f'; this point runs in {point.other_name}')


def target_epochs(point):
    """The epochs a point trains for: the --epochs in effect (given last, else the script's override)."""
    value = point.identity.get('--epochs')
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # main.py will say what is wrong with it


def progress(folder, target):
    """(epochs done, finished) of a point's run folder; (0, False) when it has no statistics yet."""
    try:
        run = compare.read_run(folder)
    except MixBTError:
        return 0, False
    target = target or run.args.get('epochs')
    return run.epochs_done, bool(target) and run.epochs_done >= int(target)


def overridden_environment(sweep, variables):
    """One note per setting of the sweep that the launcher's environment also sets: the sweep's wins."""
    notes = []
    for flag in [*command_flags(sweep), *sweep['parameters']]:
        if os.environ.get(variables.get(flag, ('',))[0]) and flag not in notes:
            notes.append(flag)
    return [f'note: {variables[f][0]}={os.environ[variables[f][0]]} in the environment is not used: the sweep sets '
            f'--{f} (to change it for every point, give -- --{f} VALUE)' for f in notes]


def plan(sweep, script, extra):
    """The grid's Points, in wandb's order."""
    variables, overrides, fixed = script_variables(script), script_overrides(script), command_flags(sweep)
    swept, tag = swept_names(sweep), script_tag(script)
    return [Point(values, run_name(values, swept, tag), script, variables, overrides,
                  {**fixed, **{k: value_text(v) for k, v in values.items()}}, extra)
            for values in grid_points(sweep)]


def run_grid(args, extra):
    sweep = load_sweep(args.sweep, args.seeds)
    check_extra(extra, sweep)
    out = None if args.dry_run else compare.check_out(args.out or os.path.join(
        args.results_dir, f'{sweep.get("name") or os.path.splitext(os.path.basename(args.sweep))[0]}_compare.png'))
    script = os.path.abspath(args.script) if args.script else default_script(sweep)
    if not os.path.isfile(script):
        raise MixBTError(f'--script {args.script}: no such file')
    results_dir = os.path.abspath(args.results_dir)
    points = plan(sweep, script, extra)
    group = sweep.get('name') or os.path.splitext(os.path.basename(args.sweep))[0]
    variables = script_variables(script)
    for note in overridden_environment(sweep, variables):
        print(note, file=sys.stderr)
    folders, failed = [], []
    for i, point in enumerate(points, 1):
        step = f'[{i}/{len(points)}]'
        name, note = choose_folder(point, results_dir)
        folder = os.path.join(results_dir, name)
        folders.append(folder)
        if note:
            print(f'{step} {note}', flush=True)
        target = target_epochs(point)
        done, finished = progress(folder, target) if os.path.isfile(record_path(results_dir, name)) else (0, False)
        if finished:
            print(f'{step} {name}: done ({done}/{target or done} epochs), skipped', flush=True)
            continue
        state = f'resumes after epoch {done}' if done else 'new'
        print(f'{step} {name}: {state}: {point.shown(script, name)}', flush=True)
        if args.dry_run:
            continue
        os.makedirs(results_dir, exist_ok=True)
        identity.write_json(record_path(results_dir, name), point.identity)
        # RESULTS_DIR puts the folder where the skip check looks; the wandb group gathers the grid's runs.
        env = {**os.environ, **point.env, 'RESULTS_DIR': results_dir}
        env.setdefault('WANDB_RUN_GROUP', group)
        env.setdefault('WANDB_NAME', name)
        try:
            code = grid_child.run(point.command(script, name), env)
        except grid_child.Stopped as e:
            raise grid_child.Stopped(e.signum, f'{step} {name} stopped; run the same command again to continue '
                                               f'the grid (this point resumes from its last epoch)') from None
        if code != 0:
            failed.append(name)
            print(f'{step} {name} failed; going on with the grid', file=sys.stderr, flush=True)

    runs = [r for folder in folders for r in compare.try_read(folder) if isinstance(r, compare.Run)]
    if runs:
        print(f'\n{len(runs)} of {len(points)} points have run:\n')
        print(compare.report(runs, out))
    if failed:
        raise MixBTError(f'{len(failed)} of {len(points)} points failed ({", ".join(failed)}); '
                         'run the same command again to retry them (finished points are skipped)')
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index('--') + 1:] if '--' in argv else []
    argv = argv[:argv.index('--')] if '--' in argv else argv
    p = argparse.ArgumentParser(prog='python3 -m sweeps.grid',
                                description="Run a wandb sweep's grid offline through a launch script",
                                allow_abbrev=False)
    p.add_argument('sweep', help='the sweep configuration (sweeps/<file>.yaml)')
    p.add_argument('--script', default=None, help='launch script (default: scripts-pretrain-<arch>/<dataset>.sh)')
    p.add_argument('--results_dir', default=os.environ.get('RESULTS_DIR', os.path.join(ROOT, 'results')),
                   help='where the run folders go (default: $RESULTS_DIR, else results/)')
    p.add_argument('--seeds', type=int, nargs='+', default=None,
                   help='run every point with each of these seeds (each its own point and folder)')
    p.add_argument('--dry_run', action='store_true', help='list the points and the commands; run nothing')
    p.add_argument('--out', default=None, help='comparison plot (default: <results_dir>/<sweep>_compare.png)')
    args = p.parse_args(argv)
    try:
        return run_grid(args, extra)
    except grid_child.Stopped as e:
        print(f'stopped by {signal.Signals(e.signum).name}: {e.message}', file=sys.stderr)
        return 128 + e.signum
    except MixBTError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
