"""Runs repeated over seeds: groups, mean ± std (n), and the paired comparison of two groups.

Runs whose settings differ only in --seed form a group. Two groups that ran the same seeds are
compared seed by seed (the same seed gives both the same initialisation and data order, so the
difference of a pair carries less noise than the difference of two means): the mean paired
difference with its 95 % t-interval, mean(d) ± t(0.975, n - 1) * sd(d) / sqrt(n).
"""
import json
import math

from mixbt.compare_runs import NOT_SETTINGS


class Group:
    """Runs with the same settings, seed apart."""

    def __init__(self, runs):
        self.runs = runs

    @property
    def seeds(self):
        return [run.args.get('seed') for run in self.runs]

    def by_seed(self, value_of):
        """{seed: value} of the runs whose seed occurs once in the group and whose value is a number."""
        seeds = self.seeds
        out = {}
        for run, seed in zip(self.runs, seeds):
            value = value_of(run)
            if seeds.count(seed) == 1 and isinstance(value, float):
                out[seed] = value
        return out


def identity_key(run):
    return json.dumps({k: v for k, v in run.args.items() if k not in NOT_SETTINGS and k != 'seed'},
                      sort_keys=True, default=str)


def seed_groups(runs):
    """The runs in groups of equal settings but the seed, in the order their first run comes."""
    groups = {}
    for run in runs:
        groups.setdefault(identity_key(run), []).append(run)
    return [Group(members) for members in groups.values()]


def summary(values):
    """(mean, sample std or None, n finite, n not finite) of numbers; NaN/inf (a diverged run) are
    counted apart, not averaged."""
    finite = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    bad = sum(1 for v in values if isinstance(v, float) and not math.isfinite(v))
    if not finite:
        return None, None, 0, bad
    mean = sum(finite) / len(finite)
    std = (math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else None)
    return mean, std, len(finite), bad


def mean_std_text(values, spec='.2f'):
    """'52.00 ± 1.23 (3)', with '; 1 nan' when a run's value is not finite; '-' for no value at all."""
    mean, std, n, bad = summary(values)
    if n == 0:
        return f'nan ({bad})' if bad else '-'
    text = f'{mean:{spec}}' + (f' ± {std:{spec}}' if std is not None else '') + f' ({n}'
    return text + (f'; {bad} nan)' if bad else ')')


def curve(runs, key, skip_init=True):
    """[(epoch, mean, std or None)] of `key` over the runs, epoch by epoch (each epoch over the runs that
    logged a finite value there)."""
    by_epoch = {}
    for run in runs:
        for row in run.rows:
            value = row.get(key)
            if isinstance(value, float) and math.isfinite(value) and not (skip_init and row['epoch'] == 0):
                by_epoch.setdefault(row['epoch'], []).append(value)
    out = []
    for epoch in sorted(by_epoch):
        mean, std, _, _ = summary(by_epoch[epoch])
        out.append((epoch, mean, std))
    return out


def paired_interval(reference, other, confidence=0.95):
    """The paired comparison of two {seed: value}: {'seeds', 'n', 'mean', 'low', 'high'} of other - reference
    over the seeds both hold with finite values; None when fewer than two pairs."""
    seeds = [s for s in reference if s in other and math.isfinite(reference[s]) and math.isfinite(other[s])]
    if len(seeds) < 2:
        return None
    from scipy import stats
    diffs = [other[s] - reference[s] for s in seeds]
    mean, std, n, _ = summary(diffs)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return {'seeds': seeds, 'n': n, 'mean': mean, 'low': mean - half, 'high': mean + half}


def verdict(interval, other):
    """One plain sentence about a paired interval."""
    if interval['low'] <= 0 <= interval['high']:
        return 'includes 0: no difference shown'
    return f'excludes 0: {other} {"higher" if interval["mean"] > 0 else "lower"}'
