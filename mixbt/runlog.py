"""Run folder, per-epoch CSV, PNG plot and wandb, that never block training.

Only the main process logs. wandb runs online when logged in, offline otherwise, and not at
all with WANDB_MODE=disabled (or when the package is missing): training never waits on it.
"""
import csv
import errno
import json
import os
import re
import secrets
import shutil
import string
import sys

from mixbt import distributed as D
from mixbt.errors import MixBTError

# The quantity on a panel's y axis, by key (the first pattern that matches); a key that matches
# none is its own label.
QUANTITIES = ((r'loss', 'loss'), (r'top\d|acc@|gen_gap', 'accuracy (%)'), (r'erank', 'effective rank'),
              (r'diag', 'cross-correlation'), (r'^lr$', 'learning rate'))
LOW_SPACE = 64 * 2**20  # as the checkpoint writer: below this a failed write is put down to a full disk


class RunLogError(MixBTError):
    pass


def write_failure(path, error):
    """The one-line error for a failed write of `path`, worded as the checkpoint writer's."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if getattr(error, 'errno', None) == errno.ENOSPC or (free is not None and free < LOW_SPACE):
        reason = f'no space left on {folder}'
    else:
        reason = f'{type(error).__name__}: {getattr(error, "strerror", None) or error}'
    kept = 'the previous file is intact' if os.path.exists(path) else 'nothing was written'
    return RunLogError(f'could not write {path}: {reason}; {kept}')


def new_run_id():
    alphabet = string.ascii_lowercase + string.digits
    return ''.join(secrets.choice(alphabet) for _ in range(8))


def start_wandb(project, config, folder, run_id, resume=False, group=None, name=None):
    """A wandb run, or None. Mode: WANDB_MODE if set, else online with an API key, else offline."""
    mode = os.environ.get('WANDB_MODE')
    if mode == 'disabled':
        return None
    try:
        import wandb
    except ImportError:
        print('wandb is not installed: logging to CSV only', file=sys.stderr)
        return None
    if mode is None:
        mode = 'online' if wandb_logged_in(wandb) else 'offline'
    os.makedirs(folder, exist_ok=True)
    for attempt in ([mode, 'offline'] if mode == 'online' else [mode]):
        try:
            return wandb.init(project=project, config=config, dir=folder, id=run_id, resume='allow' if resume else None,
                              mode=attempt, group=group, name=name,
                              settings=wandb.Settings(init_timeout=30, silent=True))
        except Exception as e:
            print(f'wandb ({attempt}) failed to start: {e}', file=sys.stderr)
    return None


def wandb_logged_in(wandb):
    """Whether wandb holds credentials (WANDB_API_KEY, ~/.netrc, its settings): never a prompt,
    never the network (verify=False), and quiet (WANDB_SILENT while wandb reads its settings;
    otherwise it looks the account up online to greet it). wandb.login(prompt=False) is the
    current API; wandb.api.api_key warns on every run since wandb 0.2x, so it serves only a
    wandb too old to have `prompt`."""
    silent = os.environ.get('WANDB_SILENT')
    os.environ['WANDB_SILENT'] = 'true'
    try:
        return bool(wandb.login(prompt=False, verify=False))
    except TypeError:
        try:
            return bool(wandb.api.api_key)
        except Exception:
            return False
    except Exception:
        return False
    finally:
        if silent is None:
            del os.environ['WANDB_SILENT']
        else:
            os.environ['WANDB_SILENT'] = silent


class RunLog:
    """Writes args.json, <prefix>_statistics.csv and <prefix>_curves.png in the run folder and
    mirrors every row to wandb. `history` (a list of dicts) is saved in checkpoints so a
    resumed run continues the same CSV and plot."""

    def __init__(self, folder, prefix, args, wandb_project, run_id, resume=False, history=None,
                 plot_keys=(), wandb_group=None, wandb_name=None):
        self.folder, self.prefix, self.plot_keys = folder, prefix, plot_keys
        self.history = list(history or [])
        self.main = D.is_main()
        self.wandb = None
        if self.main:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, 'args.json')
            try:
                with open(path, 'w') as f:
                    json.dump(vars(args), f, indent=2, default=str)
            except OSError as e:
                raise write_failure(path, e) from e
            self.wandb = start_wandb(wandb_project, vars(args), os.path.dirname(os.path.abspath(folder)),
                                     run_id, resume, wandb_group, wandb_name)

    @property
    def csv_path(self):
        return os.path.join(self.folder, f'{self.prefix}_statistics.csv')

    @property
    def plot_path(self):
        return os.path.join(self.folder, f'{self.prefix}_curves.png')

    def log(self, row):
        self.history.append(dict(row))
        if not self.main:
            return
        keys = []
        for r in self.history:
            keys += [k for k in r if k not in keys]
        tmp = self.csv_path + '.tmp'
        try:
            with open(tmp, 'w', newline='') as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(self.history)
            os.replace(tmp, self.csv_path)
        except OSError as e:
            _remove(tmp)
            raise write_failure(self.csv_path, e) from e
        self.plot()
        if self.wandb is not None:
            try:
                self.wandb.log({k: v for k, v in row.items() if v is not None and v != ''})
            except Exception as e:
                print(f'wandb.log failed: {e}', file=sys.stderr)

    def figure(self):
        """The plot as a matplotlib figure (None without matplotlib or values): one panel per group
        of keys, e.g. (('loss', 'loss_bt', 'loss_mix'), ('knn_top1',))."""
        try:
            import matplotlib
            matplotlib.use('Agg')
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        panels = [p for p in (panel_series(self.history, group) for group in self.plot_keys) if p]
        if not panels:
            return None
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False,
                                 layout='constrained')
        for ax, series in zip(axes[0], panels):
            draw_panel(ax, series)
        fig.suptitle(self.prefix, fontsize=9)
        return fig

    def plot(self):
        """Write the plot atomically: a failed write leaves the previous one."""
        fig = self.figure()
        if fig is None:
            return
        import matplotlib.pyplot as plt
        tmp = self.plot_path + '.tmp.png'
        try:
            fig.savefig(tmp, dpi=100)
            os.replace(tmp, self.plot_path)
        except OSError as e:
            _remove(tmp)
            raise write_failure(self.plot_path, e) from e
        finally:
            plt.close(fig)

    def summary(self, **values):
        if self.wandb is not None:
            for k, v in values.items():
                self.wandb.summary[k] = v

    def finish(self):
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception:
                pass


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def panel_series(history, keys):
    """The panel's series, [{'names', 'epochs', 'values', 'drawn'}], of the keys that have values.
    A series equal to one before it is not drawn again: its name joins that one's (without mixup,
    loss = loss_bt); one that is 0 at every epoch beside others that are not is named in the
    legend, not drawn as a flat line."""
    found = []
    for k in keys:
        pts = [(r['epoch'], float(r[k])) for r in history if r.get(k) not in (None, '')]
        if pts:
            found.append({'names': [k], 'epochs': [p[0] for p in pts], 'values': [p[1] for p in pts], 'drawn': True})
    some_nonzero = any(v != 0 for s in found for v in s['values'])
    out = []
    for s in found:
        twin = next((o for o in out if o['drawn'] and o['epochs'] == s['epochs'] and _close(o['values'], s['values'])),
                    None)
        if twin is not None:
            twin['names'] += s['names']
        else:
            s['drawn'] = not some_nonzero or any(v != 0 for v in s['values'])
            out.append(s)
    return out


def _close(a, b):
    return all(abs(x - y) <= 1e-9 * max(abs(x), abs(y), 1e-12) for x, y in zip(a, b))


def axis_label(names):
    """The quantities of the keys, in order: 'loss', 'accuracy (%)', ..."""
    found = []
    for name in names:
        label = next((q for pattern, q in QUANTITIES if re.search(pattern, name)), name)
        if label not in found:
            found.append(label)
    return ' / '.join(found)


def draw_panel(ax, series):
    """Lines over whole epochs, the quantity on the y axis, and the legend under the axes,
    where it covers no line."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator
    handles = []
    for s in series:
        label = ' = '.join(s['names'])
        if s['drawn']:
            (line,) = ax.plot(s['epochs'], s['values'], marker='.' if len(s['epochs']) < 40 else None, label=label)
        else:
            line = Line2D([], [], linestyle='none', label=f'{label} = 0 (not drawn)')
        handles.append(line)
    ax.set_xlabel('epoch')
    ax.set_ylabel(axis_label([name for s in series for name in s['names']]))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, loc='upper center', bbox_to_anchor=(0.5, -0.2), ncol=min(3, len(handles)),
              fontsize=8, frameon=False)
