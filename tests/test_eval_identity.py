"""Evaluation results follow the identity rule (mixbt/identity.py): a probe is continued, and a
result reused, only when it was computed from the same checkpoint content and settings; records
are written whole and a torn one is one error line; the probe's BatchNorm is the original's by
default; what the table and the probe say is true."""
import argparse
import json
import os
import re

import pytest
import torch

import evaluate
import fake_transfer
import fakedata
import linear
import transfer
from mixbt import identity, knn, probe, probe_runs, readers
from mixbt.errors import MixBTError
from test_eval import kill_in_second_epoch, released_checkpoint
from test_evaluate import count_calls, independent_knn, read_csv

QUICK = ['--epochs', '1', '--transfer_epochs', '1', '--batch_size', '8', '--workers', '0', '--no_aug']
STEM = 'abcd1234_0.0078125_64_256_cifar10_model'


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    from mixbt import runlog
    monkeypatch.setattr(runlog.RunLog, 'plot', lambda self: None)


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    root = tmp_path / 'data'
    fakedata.write_cifar(str(root), 'cifar10', n_train=10, n_test=5)
    monkeypatch.setattr(readers, 'FASHION_MNIST_SYSTEM_DIR', str(tmp_path / 'no-system-copy'))
    return str(root)


def rewrite(tmp_path, seed):
    """Another backbone at the same path, as main.py rewrites a run's best model when kNN improves."""
    return released_checkpoint(tmp_path, seed=seed)[0]


# ---------------------------------------------------------------------------- units
def test_probe_batchnorm_follows_the_probe_only_in_the_originals_train_mode():
    for bn, training in (('train', True), ('eval', False)):
        backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.AdaptiveAvgPool2d(1))
        p = probe.Probe(backbone, 4, 2, freeze=True, bn=bn)
        p.train()
        assert p.fc.training and backbone.training == training and backbone[1].training == training
        p.eval()
        assert not backbone.training and not backbone[1].training  # the test pass: running statistics
    assert not any(x.requires_grad for x in backbone.parameters())
    assert probe.format_time(3725.4) == '1:02:05' and probe.format_time(59.6) == '0:01:00'


def test_probe_identity_is_the_backbone_content_and_the_settings_that_define_the_probe(tmp_path):
    path = tmp_path / 'm.pth'
    path.write_bytes(b'one')
    args = argparse.Namespace(model_path=str(path), epochs=3, seed=0, probe_bn='train', workers=2, run_name='a',
                              data_root='x', precision='auto')
    first = probe_runs.probe_identity(args)
    assert first == {'epochs': 3, 'seed': 0, 'probe_bn': 'train', 'model_sha256': identity.file_sha256(str(path))}
    assert probe_runs.probe_identity(argparse.Namespace(**{**vars(args), 'workers': 0, 'run_name': 'b'})) == first
    assert probe_runs.probe_identity(argparse.Namespace(**{**vars(args), 'probe_bn': 'eval'})) != first
    os.utime(path, ns=(1, 1))
    path.write_bytes(b'two')  # the same path, another content
    assert probe_runs.probe_identity(args)['model_sha256'] != first['model_sha256']


def fake_epochs(monkeypatch, losses):
    """probe.run_epoch without training: (loss, top-1, top-5) from `losses`, one per call."""
    values = iter(losses)
    monkeypatch.setattr(probe, 'run_epoch', lambda *a, **k: (next(values), 50.0, 75.0))


def linear_argv(tmp_path, path, root, *extra):
    return ['--dataset', 'cifar10', '--model_path', path, '--data_root', root, '--batch_size', '8', '--workers', '0',
            '--results_dir', str(tmp_path / 'res'), '--run_name', 'probe', *extra]


def test_a_probe_stopped_by_a_non_finite_loss_says_what_was_saved(tmp_path, cifar_root, monkeypatch, capsys):
    path, _ = released_checkpoint(tmp_path)
    # in the first epoch: there is no checkpoint.pth, and the folder (args.json only) goes as a failed start
    fake_epochs(monkeypatch, [float('nan'), 1.0])
    with pytest.raises(SystemExit):
        linear.cli(linear_argv(tmp_path, path, cifar_root, '--epochs', '2'))
    err = capsys.readouterr().err
    assert err.startswith('error: the probe loss became non-finite in epoch 1') and 'nothing was saved' in err
    assert 'holds epoch' not in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / 'res' / 'probe')
    # in the second: checkpoint.pth holds the first, and the folder stays to be continued
    fake_epochs(monkeypatch, [1.0, 1.0, float('inf'), 1.0])
    with pytest.raises(MixBTError, match='epoch 2.*checkpoint.pth holds epoch 1, the last finite state'):
        linear.main(linear_argv(tmp_path, path, cifar_root, '--epochs', '2'))
    assert torch.load(tmp_path / 'res' / 'probe' / 'checkpoint.pth')['epoch'] == 1


def test_probe_results_are_written_whole_with_their_identity_and_each_epoch_tells_the_time(
        tmp_path, cifar_root, monkeypatch, capsys):
    path, _ = released_checkpoint(tmp_path)
    real_dump = json.dump

    def killed_in_results(obj, f, **kw):  # a kill while results.json is being written
        if 'results.json' in getattr(f, 'name', ''):
            f.write('{"final_acc@1": ')
            raise KeyboardInterrupt
        return real_dump(obj, f, **kw)
    fake_epochs(monkeypatch, [1.0] * 4)
    monkeypatch.setattr(json, 'dump', killed_in_results)
    with pytest.raises(KeyboardInterrupt):
        linear.main(linear_argv(tmp_path, path, cifar_root, '--epochs', '2'))
    assert not os.path.exists(tmp_path / 'res' / 'probe' / 'results.json')  # never a torn record
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith('Epoch ')]
    assert len(lines) == 2 and all(re.search(r' \| elapsed \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d$', l) for l in lines)
    monkeypatch.setattr(json, 'dump', real_dump)
    result = linear.main(linear_argv(tmp_path, path, cifar_root, '--epochs', '2'))  # finished: reported
    saved = json.load(open(os.path.join(result['run_dir'], 'results.json')))
    assert saved['identity']['model_sha256'] == identity.file_sha256(path)
    assert (saved['identity']['epochs'], saved['identity']['probe_bn']) == (2, 'train')
    assert (saved['train_images'], saved['test_images']) == (10, 5)


def test_torn_records_are_one_error_line_naming_the_file(tmp_path, capsys):
    path, _ = released_checkpoint(tmp_path)
    common = ['--results_dir', str(tmp_path / 'eval'), '--workers', '0', '--data_root', str(tmp_path / 'none')]
    eval_dir = tmp_path / 'eval' / STEM
    run = tmp_path / 'run'
    run.mkdir()
    (run / f'{STEM}.pth').write_bytes(open(path, 'rb').read())
    (run / 'args.json').write_text('{"dataset": "cifar10", "lmb')
    cases = [(run / 'args.json', [str(run)]), (eval_dir / 'args.json', [path]), (eval_dir / 'knn.json', [path]),
             (eval_dir / 'linear' / 'results.json', [path])]
    for torn, argv in cases:
        if torn.parent != run:
            torn.parent.mkdir(parents=True, exist_ok=True)
            torn.write_text('{"top1": 12.5, "top')
        with pytest.raises(SystemExit) as stop:
            evaluate.cli(argv + common)
        err = capsys.readouterr().err
        assert stop.value.code == 1 and err.startswith(f'error: {torn} is not a readable'), (torn, err)
        fix = 'Restore it' if torn.parent == run else 'delete it and run the command again'
        assert fix in err and len(err.strip().splitlines()) == 1
        if torn.parent != run:
            torn.unlink()


# ---------------------------------------------------------------------------- end to end (tiny)
@pytest.mark.slow
def test_evaluate_recomputes_a_rewritten_checkpoint_and_keeps_the_sets_a_narrower_rerun_leaves_out(
        tmp_path, cifar_root, monkeypatch, capsys):
    fakedata.write_dtd(cifar_root, per_split=1)
    fake_transfer.write_gtsdb(cifar_root, counts={0: 3, 7: 3})
    path, _ = released_checkpoint(tmp_path)
    argv = [path, '--data_root', cifar_root, '--results_dir', str(tmp_path / 'eval'), '--subset', '100'] + QUICK
    first = evaluate.main(argv + ['--transfer_datasets', 'dtd', 'traffic_sign'])
    table = read_csv(first['csv'])
    assert [r[1] for r in table[1:]] == ['cifar10'] * 6 + ['dtd'] * 4 + ['traffic_sign'] * 4
    md = open(first['md']).read()
    # the k used (the bank holds 10 images) and the images used, not the numbers asked for
    assert 'k 10 (--k 200, but the memory bank holds 10 images), T 0.5' in md and 'k 200, T' not in md
    assert 'images used: kNN 10 memory / 5 test, linear 10 train / 5 test' in md and 'only the first 100' not in md
    assert json.load(open(os.path.join(first['eval_dir'], 'knn.json')))['k'] == 10

    # narrower: nothing runs, and the finished traffic_sign rows stay
    calls = [count_calls(monkeypatch, m, n) for m, n in ((knn, 'knn_monitor'), (linear, 'main'), (transfer, 'main'))]
    capsys.readouterr()
    second = evaluate.main(argv + ['--transfer_datasets', 'dtd'])
    assert calls == [[], [], []] and read_csv(second['csv']) == table and '| traffic_sign |' in open(second['md']).read()
    assert '[3/3] transfer dtd: done before' in capsys.readouterr().out

    # the checkpoint at the same path is rewritten: every part it names is computed afresh, with one line
    # each; the traffic_sign rows, computed from the old file, leave the table
    rewrite(tmp_path, seed=1)
    third = evaluate.main(argv + ['--transfer_datasets', 'dtd'])
    out = capsys.readouterr().out
    assert [len(c) for c in calls] == [1, 1, 1] and 'done before' not in out
    for what in ('knn cifar10', 'linear cifar10', 'transfer dtd'):
        assert re.search(rf'^{what}: computed afresh, .*model_sha256', out, re.M), (what, out)
    assert 'transfer traffic_sign: left out of the table, computed from other inputs (model_sha256' in out
    rows = read_csv(third['csv'])
    assert identity.recorded_identity(third['csv']) == {'model_sha256': identity.file_sha256(path)}  # compare.py's
    assert [r[1] for r in rows[1:]] == ['cifar10'] * 6 + ['dtd'] * 4
    top1, _ = independent_knn(path, cifar_root)
    assert float(rows[1][3]) == top1
    for part in ('linear', 'transfer_dtd'):  # the probes ran again, on the new backbone
        saved = json.load(open(os.path.join(third['eval_dir'], part, 'results.json')))
        assert saved['identity']['model_sha256'] == identity.file_sha256(path)


@pytest.mark.slow
def test_a_killed_probe_is_continued_only_on_the_same_backbone(tmp_path, cifar_root, monkeypatch, capsys):
    path, _ = released_checkpoint(tmp_path)
    argv = linear_argv(tmp_path, path, cifar_root, '--epochs', '2', '--no_aug')
    restore = kill_in_second_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        linear.main(argv)
    restore()
    rewrite(tmp_path, seed=1)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        linear.cli(argv)
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'continues a probe of another backbone file' in err and '--run_name' in err
    assert len(err.strip().splitlines()) == 1
    assert torch.load(tmp_path / 'res' / 'probe' / 'checkpoint.pth')['epoch'] == 1  # left as it was

    # evaluate.py: its killed linear part is started afresh on the new backbone, and says so
    eval_argv = [path, '--data_root', cifar_root, '--results_dir', str(tmp_path / 'eval'), '--transfer_datasets',
                 *QUICK, '--epochs', '2']
    restore = kill_in_second_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        evaluate.main(eval_argv)
    restore()
    state = os.path.join(tmp_path, 'eval', STEM, 'linear', 'checkpoint.pth')
    old_run = torch.load(state)['run_id']
    rewrite(tmp_path, seed=2)
    capsys.readouterr()
    evaluate.main(eval_argv)
    out = capsys.readouterr().out
    assert re.search(r'^linear cifar10: computed afresh, .*model_sha256', out, re.M) and 'Resumed' not in out
    saved = torch.load(state)
    assert saved['run_id'] != old_run and [r['epoch'] for r in saved['history']] == [1, 2]
    assert saved['identity']['model_sha256'] == identity.file_sha256(path)


@pytest.mark.slow
@pytest.mark.parametrize('program', ['linear', 'transfer'])
def test_the_default_probe_trains_with_batch_statistics_and_tests_in_eval_mode(tmp_path, cifar_root, monkeypatch,
                                                                              program):
    """The original: net.train() while the classifier trains, net.eval() for the test pass; --probe_bn eval:
    the backbone's BatchNorm in eval mode in both (and, inputs not augmented, run once on cached features)."""
    fakedata.write_dtd(cifar_root, per_split=1)
    path, _ = released_checkpoint(tmp_path)
    real_epoch, seen = probe.run_epoch, []

    def spied(forward, batches, device, optimizer=None, *a, **k):
        phase = 'train' if optimizer is not None else 'test'
        bn = next(m for m in forward.modules() if isinstance(m, torch.nn.BatchNorm2d)) \
            if any(isinstance(m, torch.nn.BatchNorm2d) for m in forward.modules()) else None
        seen.append((phase, None if bn is None else bn.training))
        return real_epoch(forward, batches, device, optimizer, *a, **k)
    monkeypatch.setattr(probe, 'run_epoch', spied)
    common = ['--dataset', 'cifar10', '--model_path', path, '--data_root', cifar_root, '--epochs', '1',
              '--batch_size', '8', '--workers', '0', '--results_dir', str(tmp_path / 'res')]
    run = (lambda *x: linear.main(common + ['--no_aug', *x])) if program == 'linear' else \
        (lambda *x: transfer.main(common + ['--transfer_dataset', 'dtd', *x]))
    run()
    assert seen == [('train', True), ('test', False)]
    seen.clear()
    run('--probe_bn', 'eval')
    assert seen == [('train', None), ('test', None)]  # the classifier alone, on cached features
