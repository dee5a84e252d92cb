"""evaluate.py: kNN, linear probe and transfer of one checkpoint in one table, end to end on CPU with
tiny data in the official formats; resuming; the launch scripts."""
import csv
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from mixbt import augment
from mixbt import data
import evaluate
import fake_transfer
import fakedata
from mixbt import knn
from mixbt import readers
import linear
import model as M
import transfer
from mixbt.checkpoints import CheckpointError, load_backbone

PRESENT = ['dtd', 'traffic_sign']
MISSING = ['mnist', 'fashionmnist', 'cu_birds', 'vgg_flower', 'gtsrb', 'aircraft']
QUICK = ['--epochs', '1', '--transfer_epochs', '1', '--batch_size', '8', '--workers', '0', '--no_aug']
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEM = 'abcd1234_0.0078125_16_256_cifar10_model'


def released_checkpoint(folder, dataset='cifar10', arch='resnet18', feature_dim=16):
    """A file in the released layout: the raw Model.state_dict() saved with torch.save."""
    torch.manual_seed(0)
    m = M.Model(feature_dim, arch, data.SPECS[dataset].maxpool)
    path = os.path.join(folder, f'abcd1234_0.0078125_{feature_dim}_256_{dataset}_model.pth')
    torch.save(m.state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    """The probes' per-epoch matplotlib plot takes seconds on a busy CPU and is not what these tests check."""
    from mixbt import runlog
    monkeypatch.setattr(runlog.RunLog, 'plot', lambda self: None)


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """Fake cifar10 and two of the eight transfer sets (DTD; the GTSDB traffic signs); the others are
    absent, Fashion-MNIST's system copy included."""
    root = tmp_path / 'data'
    fakedata.write_cifar(str(root), 'cifar10', n_train=10, n_test=5)
    fakedata.write_dtd(str(root), per_split=1)
    fake_transfer.write_gtsdb(str(root), counts={0: 3, 7: 3})
    monkeypatch.setattr(readers, 'FASHION_MNIST_SYSTEM_DIR', str(tmp_path / 'no-system-copy'))
    return str(root)


def read_csv(path):
    with open(path) as f:
        return [tuple(row) for row in csv.reader(f)]


def expected_rows(eval_dir, parts):
    """The table's rows as the probes' own results.json give them: (task, data set, metric, value)."""
    rows = []
    for part, task, name in parts:
        saved = json.load(open(os.path.join(eval_dir, part, 'results.json')))
        rows += [(task, name, metric, saved[key]) for metric, key in
                 (('top1', 'final_acc@1'), ('top5', 'final_acc@5'), ('best_top1', 'best_acc@1'),
                  ('best_top5', 'best_acc@5'))]
    return rows


def independent_knn(ckpt, root, dataset='cifar10', k=200, temperature=0.5):
    """The weighted kNN monitor on the checkpoint, computed here without evaluate.py."""
    backbone = load_backbone(ckpt, dataset)[0]
    spec = data.SPECS[dataset]
    memory, test = [data.load(dataset, root, split) for split in spec.splits[1:]]
    return knn.knn_monitor(backbone, (augment.eval_images(dataset, memory), memory.labels),
                           (augment.eval_images(dataset, test), test.labels), spec.mean, spec.std, spec.num_classes,
                           torch.device('cpu'), k=k, temperature=temperature, channels_last=True)


def count_calls(monkeypatch, module, name):
    """Wrap module.name to record the arguments of each call; returns the list of calls."""
    real, calls = getattr(module, name), []

    def wrapped(*a, **kw):
        calls.append(a)
        return real(*a, **kw)
    monkeypatch.setattr(module, name, wrapped)
    return calls


def transfer_set(argv):
    return argv[argv.index('--transfer_dataset') + 1]


@pytest.mark.slow
def test_table_holds_exactly_what_each_part_wrote_and_a_second_run_reruns_nothing(tmp_path, data_root, monkeypatch,
                                                                                  capsys):
    ckpt = released_checkpoint(str(tmp_path))
    argv = [ckpt, '--data_root', data_root, '--results_dir', str(tmp_path / 'eval')] + QUICK
    out = evaluate.main(argv)
    eval_dir = str(tmp_path / 'eval' / STEM)
    assert out['eval_dir'] == eval_dir and list(out['skipped']) == MISSING
    assert {'evaluation.csv', 'evaluation.md', 'args.json', 'knn.json', 'linear'} <= set(os.listdir(eval_dir))
    for name in PRESENT:
        assert os.path.isfile(os.path.join(eval_dir, f'transfer_{name}', 'results.json'))
    for name in MISSING:  # nothing is left behind for a set that is not there
        assert not os.path.exists(os.path.join(eval_dir, f'transfer_{name}'))

    # evaluation.csv: exactly the numbers of the kNN monitor and of each probe's results.json
    top1, top5 = independent_knn(ckpt, data_root)
    parts = [('linear', 'linear', 'cifar10')] + [(f'transfer_{n}', 'transfer', n) for n in PRESENT]
    rows = read_csv(out['csv'])
    assert rows[0] == ('task', 'dataset', 'metric', 'value')
    assert [(t, d, m, float(v)) for t, d, m, v in rows[1:]] == \
        [('knn', 'cifar10', 'top1', top1), ('knn', 'cifar10', 'top5', top5)] + expected_rows(eval_dir, parts)

    # evaluation.md: the paper's layout, '-' for each skipped set, which is listed with the reason
    md = open(out['md']).read()
    assert '| checkpoint | kNN top-1 | linear top-1 | ' + ' | '.join(evaluate.TRANSFER) + ' |' in md
    best = lambda part: json.load(open(os.path.join(eval_dir, part, 'results.json')))['best_acc@1']
    final = json.load(open(os.path.join(eval_dir, 'linear', 'results.json')))['final_acc@1']
    cells = [f'{top1:.2f}', f'{final:.2f} ({best("linear"):.2f})']
    cells += [f'{best(f"transfer_{n}"):.2f}' if n in PRESENT else '-' for n in evaluate.TRANSFER]
    assert f'| {STEM}.pth (resnet18, cifar10) | ' + ' | '.join(cells) + ' |' in md
    skipped = md[md.index('Skipped'):].splitlines()
    for name, hint in zip(MISSING, ['MNIST/raw', 'FashionMNIST/raw', 'CUB_200_2011', 'flowers-102', 'gtsrb',
                                    'fgvc-aircraft']):
        (line,) = [l for l in skipped if l.startswith(f'- {name}: ')]
        assert 'not found' in line and hint in line
    assert not any(l.startswith(f'- {name}:') for name in PRESENT for l in skipped)

    # one line per part with its time and the elapsed time
    printed = capsys.readouterr().out
    for i, name in enumerate(['knn cifar10', 'linear cifar10'] + [f'transfer {n}' for n in evaluate.TRANSFER], 1):
        done = 'skipped: ' if name.split()[1] in MISSING else r'top-1 .* in \d:\d\d:\d\d \(elapsed \d:\d\d:\d\d\)'
        assert re.search(rf'\[{i}/10\] {name}: {done}', printed), (name, printed)

    # the same command again: no finished part runs again, only the absent sets are looked for
    knn_calls, linear_calls = count_calls(monkeypatch, knn, 'knn_monitor'), count_calls(monkeypatch, linear, 'main')
    transfer_calls, looked_for = count_calls(monkeypatch, transfer, 'main'), count_calls(monkeypatch, evaluate,
                                                                                         'transfer_missing')
    table, md = open(out['csv']).read(), open(out['md']).read()
    again = evaluate.main(argv)
    assert knn_calls == linear_calls == transfer_calls == []
    assert [name for _, name in looked_for] == MISSING and list(again['skipped']) == MISSING
    assert open(again['csv']).read() == table and open(again['md']).read() == md
    assert '[2/10] linear cifar10: done before' in capsys.readouterr().out

    # another evaluation into the same folder is refused, with the fix
    with pytest.raises(CheckpointError, match=r'changes --epochs 1 -> 2.*--run_name'):
        evaluate.main(argv + ['--epochs', '2'])


@pytest.mark.slow
def test_a_killed_evaluation_continues_where_it_stopped_and_a_set_that_arrives_later_is_evaluated(
        tmp_path, monkeypatch, capsys):
    from mixbt import probe
    root = str(tmp_path / 'data')
    fakedata.write_cifar(root, 'cifar10', n_train=10, n_test=5)
    ckpt = released_checkpoint(str(tmp_path))
    argv = [ckpt, '--data_root', root, '--results_dir', str(tmp_path / 'eval'), '--transfer_datasets', 'dtd',
            *QUICK, '--epochs', '2']
    eval_dir = str(tmp_path / 'eval' / STEM)

    # killed in the linear probe's second epoch (probe.run_epoch calls: train 1, test 1, train 2)
    real_epoch, epochs = probe.run_epoch, []

    def killed(*a, **kw):
        epochs.append(1)
        if len(epochs) == 3:
            raise KeyboardInterrupt
        return real_epoch(*a, **kw)
    monkeypatch.setattr(probe, 'run_epoch', killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate.main(argv)
    monkeypatch.setattr(probe, 'run_epoch', real_epoch)
    assert os.path.isfile(os.path.join(eval_dir, 'knn.json'))
    assert not os.path.exists(os.path.join(eval_dir, 'linear', 'results.json'))
    assert torch.load(os.path.join(eval_dir, 'linear', 'checkpoint.pth'))['epoch'] == 1

    # started again: the kNN is not run again, the probe continues from its epoch 1
    knn_calls, transfer_calls = count_calls(monkeypatch, knn, 'knn_monitor'), count_calls(monkeypatch, transfer, 'main')
    capsys.readouterr()
    second = evaluate.main(argv)
    assert knn_calls == [] and transfer_calls == [] and list(second['skipped']) == ['dtd']
    assert '[1/3] knn cifar10: done before' in capsys.readouterr().out
    history = torch.load(os.path.join(eval_dir, 'linear', 'checkpoint.pth'))['history']
    assert [r['epoch'] for r in history] == [1, 2]
    assert [r[0] for r in read_csv(second['csv'])[1:]] == ['knn'] * 2 + ['linear'] * 4
    assert '| - |' in open(second['md']).read()

    # DTD arrives: the next run evaluates it, and only it
    before = read_csv(second['csv'])
    fakedata.write_dtd(root, per_split=1)
    linear_calls = count_calls(monkeypatch, linear, 'main')
    third = evaluate.main(argv)
    assert knn_calls == linear_calls == [] and [transfer_set(a[0]) for a in transfer_calls] == ['dtd']
    assert third['skipped'] == {} and 'Skipped' not in open(third['md']).read()
    assert read_csv(third['csv'])[:7] == before
    assert read_csv(third['csv'])[7:] == [(t, d, m, str(v)) for t, d, m, v in
                                          expected_rows(eval_dir, [('transfer_dtd', 'transfer', 'dtd')])]


@pytest.mark.slow
def test_run_folder_uses_its_best_model_and_its_own_monitor_settings(tmp_path, data_root):
    """A 1-epoch main.py run: evaluate.py picks <prefix>_model.pth, the run's data set, arch, k and T,
    and its kNN top-1 is the one the run logged for that model."""
    import main
    run = main.main(['--dataset', 'cifar10', '--data_root', data_root, '--arch', 'resnet18', '--feature_dim', '16',
                     '--batch_size', '8', '--epochs', '1', '--workers', '0', '--k', '7', '--temperature', '0.2',
                     '--knn_every', '1', '--save_every', '0', '--results_dir', str(tmp_path / 'runs')])
    (model_file,) = [f for f in os.listdir(run) if f.endswith('_model.pth')]
    out = evaluate.main([run, '--data_root', data_root, '--results_dir', str(tmp_path / 'eval'),
                         '--transfer_datasets'] + QUICK)
    assert os.path.basename(out['eval_dir']) == model_file[:-4]
    saved = json.load(open(os.path.join(out['eval_dir'], 'args.json')))
    assert (saved['dataset'], saved['arch'], saved['k'], saved['temperature']) == ('cifar10', 'resnet18', 7, 0.2)
    assert saved['model_path'] == os.path.realpath(os.path.join(run, model_file))
    probe_args = json.load(open(os.path.join(out['eval_dir'], 'linear', 'args.json')))
    assert probe_args['model_path'] == os.path.realpath(os.path.join(run, model_file))
    (stats,) = [f for f in os.listdir(run) if f.endswith('_statistics.csv')]
    logged = [r for r in csv.DictReader(open(os.path.join(run, stats))) if r['knn_top1']][-1]
    rows = {(t, m): float(v) for t, d, m, v in read_csv(out['csv'])[1:]}
    assert rows[('knn', 'top1')] == pytest.approx(float(logged['knn_top1']))
    assert rows[('knn', 'top5')] == pytest.approx(float(logged['knn_top5']))
    assert not any(t == 'transfer' for t, _ in rows)


def test_imagenet_checkpoint_gets_the_linear_probe_only(tmp_path, monkeypatch):
    import torchvision
    root = tmp_path / 'imagenet'
    for split in ('train', 'val'):
        fakedata.write_image_folder(str(root / split), per_class=2)
    tv = torchvision.models.resnet18()
    ckpt = str(tmp_path / 'abcd1234_1.0000_8192_1024_imagenet_resnet18.pth')
    torch.save({k: v for k, v in tv.state_dict().items() if not k.startswith('fc.')}, ckpt)
    knn_calls, transfer_calls = count_calls(monkeypatch, knn, 'knn_monitor'), count_calls(monkeypatch, transfer, 'main')
    out = evaluate.main([ckpt, '--data_root', str(root), '--results_dir', str(tmp_path / 'eval'), '--epochs', '1',
                         '--batch_size', '4', '--workers', '0'])
    assert knn_calls == [] and transfer_calls == [] and out['skipped'] == {}
    lin = json.load(open(os.path.join(out['eval_dir'], 'linear', 'results.json')))
    assert [(t, d, m) for t, d, m, _ in read_csv(out['csv'])[1:]] == \
        [('linear', 'imagenet', m) for m in ('top1', 'top5', 'best_top1', 'best_top5')]
    md = open(out['md']).read()
    assert '| checkpoint | kNN top-1 | linear top-1 |\n' in md
    assert f'(resnet18, imagenet) | - | {lin["best_acc@1"]:.2f} |' in md


@pytest.mark.slow
def test_bad_input_is_one_error_line_with_the_fix(tmp_path, capsys):
    not_a_run = tmp_path / 'probe_run'
    not_a_run.mkdir()
    (not_a_run / 'args.json').write_text('{"dataset": "cifar10"}')
    early_run = tmp_path / 'early_run'
    early_run.mkdir()
    (early_run / 'args.json').write_text('{"dataset": "cifar10", "arch": "resnet18", "lmbda": 0.0078125}')
    ckpt = released_checkpoint(str(tmp_path))
    common = ['--results_dir', str(tmp_path / 'eval'), '--workers', '0']
    for args, message in [
            ([str(tmp_path / 'absent.pth')], 'no checkpoint or run folder at'),
            ([str(not_a_run)], 'not a main.py run folder'),
            ([str(early_run)], 'holds no <prefix>_model.pth yet'),
            ([ckpt, '--dataset', 'stl10'], 'not for --dataset stl10'),
            ([ckpt, '--data_root', str(tmp_path / 'nowhere')], 'cifar10 not found under'),  # not a transfer set: fatal
            ([ckpt, '--epochs', '0'], '--epochs 0 must be at least 1')]:
        with pytest.raises(SystemExit) as stop:
            evaluate.cli(args + common)
        err = capsys.readouterr().err
        assert stop.value.code == 1 and err.startswith('error: ') and message in err, (message, err)
    # the command line itself: one line, no traceback
    proc = subprocess.run([sys.executable, 'evaluate.py', str(tmp_path / 'absent.pth')], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith('error: no checkpoint or run folder at')
    assert len(proc.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- launch scripts
SCRIPTS = sorted(f'{d}/{f}' for d in ('scripts-eval-resnet18', 'scripts-eval-resnet50')
                 for f in os.listdir(os.path.join(REPO, d)))


def run_script(script, tmp_path, env):
    """Run a launch script with a stand-in python that records its argv; returns (process, argv list)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / 'python3'
    stub.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done >> "$ARGS_OUT"\n')
    stub.chmod(0o755)
    out = tmp_path / 'argv'
    out.unlink(missing_ok=True)
    proc = subprocess.run(['bash', os.path.join(REPO, script)], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, 'PYTHON': str(stub), 'ARGS_OUT': str(out), **env})
    return proc, out.read_text().split('\0')[:-1] if out.exists() else []


@pytest.mark.parametrize('script', SCRIPTS)
def test_launch_scripts_run_evaluate_with_their_data_set_and_backbone_and_take_overrides(script, tmp_path):
    text = open(os.path.join(REPO, script)).read()
    released = re.search(r'\$checkpoint_dir/([\w.]+\.pth)', text)
    (tmp_path / 'ckpt').mkdir()
    env = {'CHECKPOINT_DIR': str(tmp_path / 'ckpt'), 'PRETRAIN_DIR': str(tmp_path / 'results')}
    if released:
        (tmp_path / 'ckpt' / released.group(1)).write_bytes(b'')
    else:  # the newest pretraining run's best model
        run = tmp_path / 'results' / 'abcd1234'
        run.mkdir(parents=True)
        for name in ('abcd1234_0.0078125_16_8_fashionmnist_model.pth', 'last.pth'):
            (run / name).write_bytes(b'')
    proc, argv = run_script(script, tmp_path, env)
    assert proc.returncode == 0 and 'warning' not in proc.stderr, proc.stderr
    program = next(i for i, a in enumerate(argv) if os.path.basename(a) == 'evaluate.py')
    args = evaluate.get_args(argv[program + 1:])
    arch, dataset = re.fullmatch(r'scripts-eval-(resnet\d+)/(\w+)\.sh', script).groups()
    assert (args.arch, args.dataset.replace('_', '')) == (arch, dataset)
    assert os.path.isfile(args.checkpoint)
    assert args.epochs == (100 if dataset == 'imagenet' else 200) and args.results_dir.endswith('results/eval')
    assert ('torch.distributed.run' in argv) == (dataset == 'imagenet')
    # every setting is printed and overridable from the environment
    proc, argv = run_script(script, tmp_path, {**env, 'EPOCHS': '3', 'DATA_ROOT': '/x', 'NPROC': '1'})
    args = evaluate.get_args(argv[next(i for i, a in enumerate(argv) if a.endswith('evaluate.py')) + 1:])
    assert (args.epochs, args.data_root) == (3, '/x') and 'epochs=3   # from EPOCHS' in proc.stdout
