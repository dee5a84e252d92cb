"""compare.py: one plot and one table over several pretraining run folders, read offline from the
folders alone. The folders are written by runlog.RunLog itself, with rows shaped as main.py logs them."""
import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys

import pytest

import compare
from mixbt import identity, runlog
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
def no_picture(monkeypatch):
    """compare.main without drawing (slow on a busy machine) where a test reads only the text."""
    monkeypatch.setattr(compare, 'plot', lambda runs, out: out)


@pytest.fixture
def grid(tmp_path):
    results = tmp_path / 'results'
    a = write_run(results / 'runa', {'lmbda': 0.0078125, 'mixup_loss_scale': 4.0, 'workers': 2})
    b = write_run(results / 'runb', {'lmbda': 0.0009765, 'mixup_loss_scale': 2.0}, knn=(45.0, 50.0, 58.5))
    return results, a, b


def test_table_gives_final_and_best_metrics_per_run_labelled_by_differing_settings(grid):
    _, a, b = grid
    table = compare.summary_table(compare.find([a, b])[0])
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


def test_plot_overlays_knn_loss_and_each_loss_term(grid):
    results, a, b = grid
    c = write_run(results / 'byol', {'method': 'byol'}, method_terms=False)
    runs = compare.find([a, b, c])[0]
    assert compare.panels(runs) == ['knn_top1', 'loss', 'loss_bt', 'loss_mix']


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
        assert [r.name for r in compare.find([target])[0]] == ['runa', 'runb']
    assert [r.name for r in compare.find([a, str(results / 'run*'), b])[0]] == ['runa', 'runb']  # no duplicates
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
        compare.find([str(folder)])[0]
    assert compare.main([str(folder), '--out', str(tmp_path / 'x.png')]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: {folder}') and err.count('\n') == 1, err
    assert not (tmp_path / 'x.png').exists()
    expected = {'missing': 'no such folder', 'empty': 'no args.json', 'probe': 'linear/transfer evaluation run',
                'no_statistics': 'has not finished an epoch', 'container_of_probes': 'holds no pretraining run'}
    assert expected[case] in err


@pytest.mark.slow
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


def test_evaluation_csv_rows_are_printed_side_by_side(grid, capsys, tmp_path, no_picture):
    _, a, b = grid
    with open(os.path.join(a, 'evaluation.csv'), 'w', newline='') as f:
        csv.writer(f).writerows([['task', 'dataset', 'metric', 'value'], ['linear', 'cifar10', 'top1', '92.58'],
                                 ['transfer', 'dtd', 'top1', '64.1']])
    with open(os.path.join(b, 'evaluation.csv'), 'w', newline='') as f:
        csv.writer(f).writerows([['task', 'dataset', 'metric', 'value'], ['linear', 'cifar10', 'top1', '91.00']])
    text = compare.evaluation_tables(compare.find([a, b])[0])
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
    text = compare.evaluation_tables(compare.find([a, b])[0])
    assert '| runa | linear | 92.58 | 99.8 |' in text and 'runb' not in text



# ---------------------------------------------------------------------------- bad statistics rows
def test_nan_is_shown_as_nan_and_never_is_the_best(tmp_path):
    run = compare.read_run(write_run(tmp_path / 'r', knn=(float('nan'), 30.0, 20.0)))
    assert run.best_knn() == (30.0, 2)  # max() over (nan, 1) kept the NaN: "best nan @ 1"
    folder = write_run(tmp_path / 'n', knn=(40.0, 50.0, float('nan')))
    with open(compare.read_run(folder).statistics) as f:
        text = f.read()
    with open(compare.read_run(folder).statistics, 'w') as f:
        f.write(text.replace('336.66666666666663', 'nan'))
    table = compare.summary_table([compare.read_run(folder)])
    assert [c.strip() for c in table.splitlines()[2].strip('|').split('|')][3:] == ['nan', 'nan', '50.00 @ 2']


def test_a_torn_row_is_not_an_epoch_and_is_flagged(tmp_path, capsys, no_picture):
    folder = write_run(tmp_path / 'r', epochs=2)
    path = compare.read_run(folder).statistics
    with open(path, 'a') as f:
        f.write('3,4\n')  # a copy cut in the middle of the last row
    run = compare.read_run(folder)
    assert run.epochs_done == 2 and run.torn == ['line 4 (2 of 9 cells)']
    assert compare.main([folder, '--out', str(tmp_path / 'x.png')]) == 0
    out = capsys.readouterr().out
    assert '| r   | -        | 2/3 (1 torn row) |' in out
    assert f'- r: {path} line 4 (2 of 9 cells) is torn: not counted as an epoch' in out


# ---------------------------------------------------------------------------- bad input, one line each
@pytest.mark.parametrize('content, says', [('[1, 2]', 'holds a JSON list, not the object of settings'),
                                           ('{"lmbda": 0.1', 'args.json is not JSON')])
def test_an_args_json_that_is_not_an_object_is_one_error_line(grid, tmp_path, capsys, content, says):
    _, a, b = grid
    with open(os.path.join(a, 'args.json'), 'w') as f:
        f.write(content)
    assert compare.main([a, b, '--out', str(tmp_path / 'x.png')]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: {a}/args.json ') and says in err and err.count('\n') == 1
    assert not (tmp_path / 'x.png').exists()


@pytest.mark.parametrize('case', ['format', 'parent_is_a_file', 'read_only', 'folder'])
def test_a_bad_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch, case):
    (tmp_path / 'file').write_text('x')
    ro = tmp_path / 'ro'
    ro.mkdir(mode=0o500)
    real = os.access
    monkeypatch.setattr(os, 'access', lambda p, mode, **k: False if os.path.abspath(p) == str(ro) else real(p, mode))
    out = {'format': tmp_path / 'c.xyz', 'parent_is_a_file': tmp_path / 'file' / 'c.png',
           'read_only': ro / 'c.png', 'folder': tmp_path}[case]
    monkeypatch.setattr(compare, 'find', lambda paths: pytest.fail('runs read before --out was checked'))
    assert compare.main([str(tmp_path / 'runs'), '--out', str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: --out {out}') and err.count('\n') == 1, err
    expected = {'format': '.xyz is not a picture format', 'parent_is_a_file': 'is a file, not a folder',
                'read_only': 'is not writable', 'folder': 'is a folder'}
    assert expected[case] in err


def test_out_without_an_extension_writes_the_name_it_prints(grid, tmp_path, capsys):
    _, a, b = grid
    assert compare.main([a, b, '--out', str(tmp_path / 'noext')]) == 0
    assert f'Plot: {tmp_path / "noext.png"}' in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ['noext.png', 'results']


# ---------------------------------------------------------------------------- evaluate.py's folders
def evaluate_folder(results, run_folder, model, sha256=None, rows=(('linear', 'cifar10', 'top1', '92.58'),
                                                                     ('transfer', 'dtd', 'top1', '64.1'))):
    """An evaluate.py folder, results/eval/<checkpoint stem>/, as evaluate.py leaves it."""
    folder = results / 'eval' / os.path.splitext(model)[0]
    os.makedirs(folder)
    settings = {'checkpoint': str(run_folder), 'model_path': os.path.realpath(os.path.join(run_folder, model))}
    if sha256:
        settings['model_sha256'] = sha256  # evaluate.py records it when it starts
    (folder / 'args.json').write_text(json.dumps(settings))
    with open(folder / 'evaluation.csv', 'w', newline='') as f:
        csv.writer(f).writerows([('task', 'dataset', 'metric', 'value'), *rows])
    return str(folder)


def write_model(folder, content=b'weights'):
    name = f'{os.path.basename(folder)}_0.0078125_1024_256_cifar10_model.pth'
    with open(os.path.join(folder, name), 'wb') as f:
        f.write(content)
    return name, hashlib.sha256(content).hexdigest()


def test_the_runs_evaluations_are_found_and_shown_while_its_checkpoint_is_unchanged(grid, tmp_path, capsys, no_picture):
    results, a, b = grid
    model, sha = write_model(a)
    evaluation = evaluate_folder(results, a, model, sha)
    out = str(tmp_path / 'x.png')
    assert compare.main([a, b, '--out', out]) == 0
    printed = capsys.readouterr().out
    assert '| task     | dataset | metric | runa  |' in printed and '| linear   | cifar10 | top1   | 92.58 |' in printed
    assert '| transfer | dtd     | top1   | 64.1  |' in printed
    write_model(a, b'weights of a later best epoch')
    assert compare.main([a, b, '--out', out]) == 0
    printed = capsys.readouterr().out
    assert '92.58' not in printed
    assert (f'- {evaluation} is an evaluation of an earlier {model} of runa (checkpoint sha256 {sha[:12]}... -> now '
            in printed) and f'evaluate it again: python3 evaluate.py {a}' in printed


def test_the_record_beside_evaluation_csv_names_the_checkpoint_of_the_table(grid, tmp_path, capsys, no_picture):
    """A re-evaluation of a new best model was started (args.json names it) and killed before it wrote
    its table: evaluation.csv still holds the numbers of the earlier model."""
    results, a, _ = grid
    old_model, old = write_model(a, b'earlier best')
    evaluation = evaluate_folder(results, a, old_model, old)
    identity.record_identity(os.path.join(evaluation, 'evaluation.csv'), {'model_sha256': old})
    _, new = write_model(a, b'later best')
    settings = json.load(open(os.path.join(evaluation, 'args.json')))
    (tmp_path / 'results' / 'eval' / os.path.basename(evaluation) / 'args.json').write_text(
        json.dumps({**settings, 'model_sha256': new}))
    assert compare.main([a, '--out', str(tmp_path / 'x.png')]) == 0
    printed = capsys.readouterr().out
    assert '92.58' not in printed and f'(checkpoint sha256 {old[:12]}... -> now {new[:12]}...)' in printed


def test_an_evaluation_without_a_checkpoint_sha256_is_not_shown_as_the_runs(grid, tmp_path, capsys, no_picture):
    results, a, b = grid
    model, _ = write_model(a)
    evaluation = evaluate_folder(results, a, model)
    assert compare.main([a, '--out', str(tmp_path / 'x.png')]) == 0
    printed = capsys.readouterr().out
    assert '92.58' not in printed and f'- {evaluation} records no checkpoint sha256' in printed


def test_an_evaluation_folder_given_says_what_it_evaluated(grid, tmp_path, capsys):
    results, a, _ = grid
    model, sha = write_model(a)
    evaluation = evaluate_folder(results, a, model, sha)
    assert compare.main([evaluation, '--out', str(tmp_path / 'x.png')]) == 0
    printed = capsys.readouterr().out
    assert 'has not finished an epoch' not in printed
    assert printed.startswith(f'{evaluation} is an evaluation (evaluate.py) of '
                              f'{os.path.realpath(os.path.join(a, model))}, not a pretraining run\n')
    write_model(a, b'rewritten')
    assert compare.main([evaluation, '--out', str(tmp_path / 'x.png')]) == 0
    assert f'not a pretraining run; that file has been rewritten since (sha256 {sha[:12]}... -> now ' in \
        capsys.readouterr().out
    assert '| linear   | cifar10 | top1   | 92.58' in printed and not (tmp_path / 'x.png').exists()


# ---------------------------------------------------------------------------- monitor columns
def test_extra_numeric_columns_get_a_table_and_a_panel(tmp_path):
    args = argparse.Namespace(**ARGS)
    log = runlog.RunLog(str(tmp_path / 'm'), 'm_x', args, 'test', 'm')
    for epoch in (1, 2):
        log.log({'epoch': epoch, 'loss': 1.0 / epoch, 'lr': 0.01, 'knn_top1': 50.0 + epoch, 'knn_top5': 80.0,
                 'gen_gap': 3.0 * epoch, 'erank_features': 100.0 + epoch, 'offdiag_mass': None,
                 'custom_monitor': 0.5})
    runs = [compare.read_run(str(tmp_path / 'm')), compare.read_run(write_run(tmp_path / 'plain'))]
    assert compare.panels(runs) == ['knn_top1', 'loss', 'loss_bt', 'loss_mix', 'gen_gap', 'erank_features',
                                    'custom_monitor']  # offdiag_mass: never logged
    table = compare.monitors_table(runs)
    assert table.splitlines()[0].split('|')[1:-1] == [' run   ', ' gen_gap ', ' erank_features ', ' custom_monitor ']
    assert '| m     | 6       | 102            | 0.5            |' in table
    assert '| plain | -       | -              | -              |' in table
    titles = [ax.get_title() for ax in compare.figure(runs).axes if ax.get_visible()]
    assert titles[4:] == ['generalisation gap (train - test kNN top-1)', 'effective rank: features', 'custom_monitor']


# ---------------------------------------------------------------------------- the picture
def test_the_picture_is_readable_at_100_percent(grid, tmp_path):
    from PIL import Image
    _, a, b = grid
    runs = compare.find([a, b])[0]
    fig = compare.figure(runs)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ['kNN top-1 (%)', 'loss', 'loss_bt', 'loss_mix']
    assert {ax.get_xlabel() for ax in axes} == {'epoch'}
    assert len({round(ax.get_position().y0, 2) for ax in axes}) == 2  # two rows of two, not one row of four
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ['runa: λ_BT=1/128 s=4', 'runb: λ_BT=1/1024 s=2']
    assert min(t.get_fontsize() for ax in axes for t in ax.get_xticklabels()) >= 9
    out = compare.plot(runs, str(tmp_path / 'plots' / 'c.png'))
    with open(out, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    width, height = Image.open(out).size
    assert 700 <= width <= 1100 and 550 <= height <= 900, (width, height)
