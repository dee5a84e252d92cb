"""Run folder, per-epoch CSV, PNG plot and wandb, that never block training.

Only the main process logs. wandb runs online when logged in, offline otherwise, and not at
all with WANDB_MODE=disabled (or when the package is missing): training never waits on it.
"""
import csv
import json
import os
import secrets
import string
import sys

from mixbt import distributed as D


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
        try:
            logged_in = bool(wandb.api.api_key)
        except Exception:
            logged_in = False
        mode = 'online' if logged_in else 'offline'
    os.makedirs(folder, exist_ok=True)
    for attempt in ([mode, 'offline'] if mode == 'online' else [mode]):
        try:
            return wandb.init(project=project, config=config, dir=folder, id=run_id, resume='allow' if resume else None,
                              mode=attempt, group=group, name=name,
                              settings=wandb.Settings(init_timeout=30, silent=True))
        except Exception as e:
            print(f'wandb ({attempt}) failed to start: {e}', file=sys.stderr)
    return None


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
            with open(os.path.join(folder, 'args.json'), 'w') as f:
                json.dump(vars(args), f, indent=2, default=str)
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
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
        os.replace(tmp, self.csv_path)
        self.plot()
        if self.wandb is not None:
            try:
                self.wandb.log({k: v for k, v in row.items() if v is not None and v != ''})
            except Exception as e:
                print(f'wandb.log failed: {e}', file=sys.stderr)

    def plot(self):
        """One panel per group of keys: e.g. (('loss', 'loss_bt', 'loss_mix'), ('knn_top1',))."""
        try:
            import matplotlib
            matplotlib.use('Agg')
            import matplotlib.pyplot as plt
        except ImportError:
            return
        panels = [[k for k in group if any(r.get(k) not in (None, '') for r in self.history)]
                  for group in self.plot_keys]
        panels = [p for p in panels if p]
        if not panels:
            return
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
        for ax, keys in zip(axes[0], panels):
            for k in keys:
                pts = [(r['epoch'], r[k]) for r in self.history if r.get(k) not in (None, '')]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker='.' if len(pts) < 40 else None, label=k)
            ax.set_xlabel('epoch')
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(self.prefix, fontsize=9)
        fig.tight_layout()
        tmp = self.plot_path + '.tmp.png'
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, self.plot_path)

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
