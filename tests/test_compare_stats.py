"""compare.py over seeds: runs that differ only in --seed are one group (mean ± std (n)), and two
groups that ran the same seeds are compared seed by seed (mean paired difference, 95 % t-interval).
Checked on fabricated run folders with known numbers against scipy.stats and the statistics module."""
import csv
import os
import statistics

import pytest
from scipy import stats

import compare
from mixbt import compare_stats
from test_compare import write_run

KNN = {'barlowtwins': (80.0, 81.0, 79.5), 'mixbt': (82.0, 82.5, 81.0)}  # final kNN top-1 of seeds 0, 1, 2
LINEAR = {'barlowtwins': (90.0, 91.0, 92.0), 'mixbt': (91.5, 90.0, 93.0)}


@pytest.fixture
def seeds(tmp_path):
    """Barlow Twins and Mix-BT, seeds 0 1 2 each: (run folders by method, the results folder)."""
    folders = {}
    for method in ('barlowtwins', 'mixbt'):
        for seed in range(3):
            folder = write_run(tmp_path / 'results' / f'{method}{seed}',
                               {'method': method, 'is_mixup': method == 'mixbt', 'seed': seed},
                               knn=(50.0, 60.0 + seed, KNN[method][seed]))
            with open(os.path.join(folder, 'evaluation.csv'), 'w', newline='') as f:
                csv.writer(f).writerows([('task', 'dataset', 'metric', 'value'),
                                         ('linear', 'cifar10', 'top1', LINEAR[method][seed])])
            folders.setdefault(method, []).append(folder)
    return folders, tmp_path / 'results'


def cells(table, first):
    row = next(line for line in table.splitlines() if line.startswith(f'| {first} '))
    return [c.strip() for c in row.strip('|').split('|')]


def test_runs_that_differ_only_in_seed_form_one_group(seeds):
    folders, _ = seeds
    runs = compare.find(folders['barlowtwins'] + folders['mixbt'])[0]
    groups = compare_stats.seed_groups(runs)
    assert [[r.name for r in g.runs] for g in groups] == [['barlowtwins0', 'barlowtwins1', 'barlowtwins2'],
                                                          ['mixbt0', 'mixbt1', 'mixbt2']]
    assert compare.group_labels(groups) == ['barlowtwins', 'mixbt']
    table = compare.groups_table(groups)
    for method in ('barlowtwins', 'mixbt'):
        mean, std = statistics.mean(KNN[method]), statistics.stdev(KNN[method])
        row = cells(table, method)
        assert row[1:3] == ['0 1 2', '3/3'] and row[4] == f'{mean:.2f} ± {std:.2f} (3)'
        best = [max(60.0 + s, KNN[method][s]) for s in range(3)]
        assert row[5] == f'{statistics.mean(best):.2f} ± {statistics.stdev(best):.2f} (3)'


def test_paired_interval_matches_scipy(seeds):
    reference, other = {0: 80.0, 1: 81.0, 2: 79.5, 7: 70.0}, {0: 82.0, 1: 82.5, 2: 81.0, 5: 99.0}
    interval = compare_stats.paired_interval(reference, other)
    expected = stats.ttest_rel([82.0, 82.5, 81.0], [80.0, 81.0, 79.5]).confidence_interval(0.95)
    assert interval['seeds'] == [0, 1, 2] and interval['n'] == 3  # seeds 7 and 5 have no partner
    assert interval['mean'] == pytest.approx(statistics.mean([2.0, 1.5, 1.5]))
    assert (interval['low'], interval['high']) == pytest.approx((expected.low, expected.high))
    assert compare_stats.verdict(interval, 'mixbt') == 'excludes 0: mixbt higher'
    assert compare_stats.paired_interval({0: 1.0}, {0: 2.0}) is None  # one pair: no interval


def test_paired_table_reports_knn_and_evaluation_numbers_and_says_when_the_interval_includes_0(seeds, capsys,
                                                                                                tmp_path, monkeypatch):
    folders, results = seeds
    monkeypatch.setattr(compare, 'plot', lambda runs, out: out)  # the text only
    assert compare.main([str(results), '--out', str(tmp_path / 'c.png')]) == 0
    out = capsys.readouterr().out
    paired = out.split('Paired by seed')[1].split('\n\n')[1]
    for metric, numbers, verdict in (('final kNN top-1', KNN, 'excludes 0: mixbt higher'),
                                     ('linear cifar10 top1', LINEAR, 'includes 0: no difference shown')):
        ci = stats.ttest_rel(numbers['mixbt'], numbers['barlowtwins']).confidence_interval(0.95)
        mean = statistics.mean(m - b for m, b in zip(numbers['mixbt'], numbers['barlowtwins']))
        row = next([c.strip() for c in line.strip('|').split('|')] for line in paired.splitlines()
                   if f'| {metric} ' in line)
        assert row == ['mixbt - barlowtwins', metric, '3 (0 1 2)', f'{mean:+.2f}', f'[{ci.low:+.2f}, {ci.high:+.2f}]',
                       verdict]
    over = out.split('Evaluations over seeds:')[1].split('\n\n')[1]
    assert cells(over, 'linear')[3:] == [f'{statistics.mean(LINEAR[m]):.2f} ± {statistics.stdev(LINEAR[m]):.2f} (3)'
                                         for m in ('barlowtwins', 'mixbt')]
    assert compare.main([str(results), '--reference', folders['mixbt'][1], '--out', str(tmp_path / 'c.png')]) == 0
    assert '| barlowtwins - mixbt   | final kNN top-1 ' in capsys.readouterr().out


def test_a_diverged_seed_is_counted_apart(seeds):
    folders, _ = seeds
    nan = write_run(os.path.join(os.path.dirname(folders['mixbt'][0]), 'mixbt3'),
                    {'method': 'mixbt', 'is_mixup': True, 'seed': 3}, knn=(50.0, 60.0, float('nan')))
    runs = compare.find(folders['barlowtwins'] + folders['mixbt'] + [nan])[0]
    groups = compare_stats.seed_groups(runs)
    row = cells(compare.groups_table(groups), 'mixbt')
    mean, std = statistics.mean(KNN['mixbt']), statistics.stdev(KNN['mixbt'])
    assert row[4] == f'{mean:.2f} ± {std:.2f} (3; 1 nan)'


def test_groups_are_drawn_as_mean_with_a_std_band(seeds):
    folders, _ = seeds
    runs = compare.find(folders['barlowtwins'] + folders['mixbt'])[0]
    fig = compare.figure(runs)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ['barlowtwins (seeds 0 1 2: mean ± std)',
                                                                  'mixbt (seeds 0 1 2: mean ± std)']
    knn = fig.axes[0]
    assert len(knn.collections) == 2  # one band per group
    line = knn.get_lines()[1]
    assert list(line.get_ydata()) == pytest.approx([50.0, 61.0, statistics.mean(KNN['mixbt'])])


def test_groups_without_two_shared_seeds_are_not_paired_and_it_says_so(tmp_path):
    runs = [compare.read_run(write_run(tmp_path / f'{method}{seed}', {'method': method, 'seed': seed}))
            for method, seeds in (('barlowtwins', (0, 1)), ('mixbt', (1, 2))) for seed in seeds]
    text = compare.report(runs)
    assert 'Paired by seed' not in text
    assert "No paired comparison: no other group ran two or more of the reference group's seeds." in text
