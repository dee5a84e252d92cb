"""compare.py: one plot and one table over several pretraining run folders, read offline from the
folders alone. The folders are written by runlog.RunLog itself, with rows shaped as main.py logs them."""
import argparse
import csv
import os
import subprocess
import sys

import pytest

import compare
from mixbt import runlog
from mixbt.errors import MixBTError

ARGS = {'dataset': 'cifar10', 'arch': 'resnet18', 'feature_dim': 1024, 'temperature': 0.5, 'k': 200,
        'batch_size': 256, 'epochs': 3, 'lr': 0.01, 'lr_shed': 'cosine', 'lmbda': 0.0078125, 'corr_neg_one': False,
        'is_mixup': True, 'mixup_loss_scale': 4.0, 'gpu': 0, 'method': 'mixbt', 'data_root': 'data',
        'results_dir': 'results', 'seed': 0, 'workers': 8, 'knn_every': 1, 'knn_init': False, 'run_name': None}


def write_run(folder, args=None, epochs=3, knn=(40.0, 55.0, 52.0), knn_init=None, method_terms=True):
    """A pretraining run folder as main.py leaves it: args.json and <prefix>_statistics.csv."""
    args = argparse.Namespace(**{**ARGS, **(args or {})})
    run_id = os.path.basename(folder)
    log = runlog.RunLog(str(folder), f'{run_id}_{args.lmbda}_{args.feature_dim}_{args.batch_size}_{args.dataset}',
                        args, 'test', run_id)
    if knn_init is not None:
        log.log({'epoch': 0, 'knn_top1': knn_init, 'knn_top5': knn_init + 20})
    for epoch in range(1, epochs + 1):
        terms = {'loss_bt': 1000.0 / epoch, 'loss_mix': 10.0 / epoch} if method_terms else {}
        loss = sum(terms.values()) if terms else 5.0 / epoch
        top1 = knn[epoch - 1] if epoch - 1 < len(knn) else None
        log.log({'epoch': epoch, 'loss': loss, **terms, 'lr': 0.01, 'epoch_time': 1.0, 'images_per_s': 100.0,
                 'knn_top1': top1, 'knn_top5': None if top1 is None else top1 + 30})
    return str(folder)


def write_probe_run(folder):
    """A linear.py run folder: args.json, statistics with train/test columns, results.json."""
    os.makedirs(folder)
    open(os.path.join(folder, 'args.json'), 'w').write('{"model_path": "x.pth"}')
    with open(os.path.join(folder, 'x_linear_statistics.csv'), 'w', newline='') as f:
        csv.writer(f).writerows([['epoch', 'train_loss', 'test_acc@1'], [1, 0.5, 60.0]])
    open(os.path.join(folder, 'results.json'), 'w').write('{"top1": 60.0}')
    return str(folder)


@pytest.fixture
def grid(tmp_path):
    results = tmp_path / 'results'
    a = write_run(results / 'runa', {'lmbda': 0.0078125, 'mixup_loss_scale': 4.0, 'workers': 2})
    b = write_run(results / 'runb', {'lmbda': 0.0009765, 'mixup_loss_scale': 2.0}, knn=(45.0, 50.0, 58.5))
    return results, a, b


def test_table_gives_final_and_best_metrics_per_run_labelled_by_differing_settings(grid):
    _, a, b = grid
    table = compare.summary_table(compare.find_runs([a, b]))
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].strip('|').split('|')] == [
        'run', 'settings', 'epochs', 'final loss', 'final kNN top-1', 'best kNN top-1 @ epoch']
    assert [c.strip() for c in lines[2].strip('|').split('|')] == ['runa', 'λ_BT=1/128 s=4', '3/3', '336.7', '52.00',
                                                                  '55.00 @ 2']
    assert [c.strip() for c in lines[3].strip('|').split('|')] == ['runb', 'λ_BT=1/1024 s=2', '3/3', '336.7', '58.50',
                                                                  '58.50 @ 3']


def test_legend_names_only_the_settings_that_differ(tmp_path):
    same = [compare.read_run(write_run(tmp_path / n, {'workers': w, 'results_dir': n}))
            for n, w in (('x', 1), ('y', 2))]
    assert compare.labels(same) == ['x', 'y']  # where or how fast a run ran does not tell runs apart
    runs = [compare.read_run(write_run(tmp_path / 'd', {'feature_dim': 2048, 'lmbda': 0.0051})),
            compare.read_run(write_run(tmp_path / 'e', {'feature_dim': 1024}))]
    assert compare.labels(runs) == ['λ_BT=0.0051 d=2048', 'λ_BT=1/128 d=1024']
    bt = [compare.read_run(write_run(tmp_path / 'bt', {'method': 'barlowtwins', 'is_mixup': False})),
          compare.read_run(write_run(tmp_path / 'mix'))]
    assert compare.labels(bt) == ['barlowtwins', 'mixbt']  # the method already says mixup on/off
    twins = [compare.read_run(write_run(tmp_path / 'p', {'seed': 1})), compare.read_run(write_run(tmp_path / 'q')),
             compare.read_run(write_run(tmp_path / 'r'))]
    assert compare.labels(twins) == ['seed=1', 'seed=0 (q)', 'seed=0 (r)']


def test_plot_overlays_knn_loss_and_each_loss_term(grid, tmp_path):
    results, a, b = grid
    c = write_run(results / 'byol', {'method': 'byol'}, method_terms=False)
    runs = compare.find_runs([a, b, c])
    assert compare.panels(runs) == ['knn_top1', 'loss', 'loss_bt', 'loss_mix']
    out = compare.plot(runs, str(tmp_path / 'plots' / 'cmp.png'))
    with open(out, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_cli_prints_the_table_and_writes_the_plot(grid, tmp_path, capsys):
    _, a, b = grid
    out = tmp_path / 'compare.png'
    assert compare.main([a, b, '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert '| runa | λ_BT=1/128 s=4' in printed and '| runb | λ_BT=1/1024 s=2' in printed
    assert f'Plot: {out}' in printed and out.stat().st_size > 0


def test_quoted_glob_and_results_folder_skip_what_is_not_a_pretraining_run(grid, tmp_path, capsys):
    results, a, b = grid
    os.makedirs(results / 'wandb' / 'offline-run-x')
    write_probe_run(results / 'linear' / 'probe1')
    (results / 'notes.txt').write_text('x')
    for target in (str(results / '*'), str(results)):
        assert [r.name for r in compare.find_runs([target])] == ['runa', 'runb']
    assert [r.name for r in compare.find_runs([a, str(results / 'run*'), b])] == ['runa', 'runb']  # no duplicates
    assert compare.main([str(results / 'nothing*'), '--out', str(tmp_path / 'x.png')]) == 1
    assert 'error: no pretraining run folders match' in capsys.readouterr().err


@pytest.mark.parametrize('case', ['missing', 'empty', 'probe', 'no_statistics', 'container_of_probes'])
def test_a_folder_that_is_not_a_run_folder_is_a_one_line_error(case, tmp_path, capsys):
    folder = tmp_path / 'f'
    if case == 'empty':
        folder.mkdir()
    elif case == 'probe':
        write_probe_run(folder)
    elif case == 'no_statistics':
        folder.mkdir()
        (folder / 'args.json').write_text('{}')
    elif case == 'container_of_probes':
        write_probe_run(folder / 'probe1')
    with pytest.raises(MixBTError):
        compare.find_runs([str(folder)])
    assert compare.main([str(folder), '--out', str(tmp_path / 'x.png')]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: {folder}') and err.count('\n') == 1, err
    assert not (tmp_path / 'x.png').exists()
    expected = {'missing': 'no such folder', 'empty': 'no args.json', 'probe': 'linear/transfer evaluation run',
                'no_statistics': 'has not finished an epoch', 'container_of_probes': 'holds no pretraining run'}
    assert expected[case] in err


def test_command_line_error_exits_1_without_a_traceback(tmp_path, repo_root):
    proc = subprocess.run([sys.executable, 'compare.py', str(tmp_path)], cwd=repo_root, capture_output=True,
                          text=True)
    assert proc.returncode == 1 and proc.stderr.startswith('error: ') and 'Traceback' not in proc.stderr


def test_random_init_row_and_unfinished_runs(tmp_path):
    run = compare.read_run(write_run(tmp_path / 'r', {'epochs': 10}, epochs=4, knn=(None, 30.0, None, None),
                                     knn_init=35.0))
    assert run.epochs_done == 4 and run.last('knn_top1') == 30.0
    assert run.best_knn() == (30.0, 2)  # the random-init baseline (epoch 0) is never the best, as in main.py
    assert '| r   | -        | 4/10' in compare.summary_table([run])
    assert compare.panels([run]) == ['knn_top1', 'loss', 'loss_bt', 'loss_mix']


def test_evaluation_csv_rows_are_printed_side_by_side(grid, capsys, tmp_path):
    _, a, b = grid
    with open(os.path.join(a, 'evaluation.csv'), 'w', newline='') as f:
        csv.writer(f).writerows([['task', 'dataset', 'metric', 'value'], ['linear', 'cifar10', 'top1', '92.58'],
                                 ['transfer', 'dtd', 'top1', '64.1']])
    with open(os.path.join(b, 'evaluation.csv'), 'w', newline='') as f:
        csv.writer(f).writerows([['task', 'dataset', 'metric', 'value'], ['linear', 'cifar10', 'top1', '91.00']])
    text = compare.evaluation_tables(compare.find_runs([a, b]))
    assert text.splitlines()[0].split('|')[1:-1] == [' task     ', ' dataset ', ' metric ', ' runa  ', ' runb  ']
    assert '| linear   | cifar10 | top1   | 92.58 | 91.00 |' in text
    assert '| transfer | dtd     | top1   | 64.1  | -     |' in text
    os.remove(os.path.join(b, 'evaluation.csv'))
    with open(os.path.join(b, 'evaluation.md'), 'w') as f:
        f.write('| task | top1 |\n|---|---|\n| linear | 91.0 |\n')
    assert compare.main([a, b, '--out', str(tmp_path / 'x.png')]) == 0
    printed = capsys.readouterr().out
    assert 'Evaluations:' in printed and 'runb (evaluation.md):' in printed and '| linear | 91.0 |' in printed


def test_evaluation_csv_without_a_value_column_is_printed_as_rows(grid):
    _, a, b = grid
    with open(os.path.join(a, 'evaluation.csv'), 'w', newline='') as f:
        csv.writer(f).writerows([['task', 'top1', 'top5'], ['linear', '92.58', '99.8']])
    text = compare.evaluation_tables(compare.find_runs([a, b]))
    assert '| runa | linear | 92.58 | 99.8 |' in text and 'runb' not in text
