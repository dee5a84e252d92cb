"""wandb never blocks: disabled, offline without a key, online with one, offline when online fails,
and never through its deprecated API; the run's plot (labels, whole epochs, a legend over no line,
no hidden or flat lines); a full disk named as the checkpoint writer names it; the SLURM requeue
handler."""
import argparse
import errno
import os
import signal
import sys
import time
import types

import pytest
import torch

from mixbt import runlog, saving


@pytest.fixture
def fake_wandb(monkeypatch):
    calls = []

    class Settings:
        def __init__(self, **kw):
            self.kw = kw

    def init(**kw):
        calls.append(kw['mode'])
        if kw['mode'] == 'online' and fake.fail_online:
            raise TimeoutError('no network')
        return types.SimpleNamespace(mode=kw['mode'], project=kw['project'])
    def login(prompt=True, verify=True):
        assert prompt is False and verify is False  # never a prompt, never the network
        return fake.api_key is not None

    class DeprecatedApi:
        @property
        def api_key(self):
            raise AssertionError('wandb.api is deprecated')
    fake = types.SimpleNamespace(init=init, Settings=Settings, login=login, api=DeprecatedApi(), api_key=None,
                                 fail_online=False, calls=calls)
    monkeypatch.setitem(sys.modules, 'wandb', fake)
    monkeypatch.delenv('WANDB_MODE', raising=False)
    return fake


def test_wandb_disabled_by_environment(fake_wandb, monkeypatch, tmp_path):
    monkeypatch.setenv('WANDB_MODE', 'disabled')
    assert runlog.start_wandb('p', {}, str(tmp_path), 'id') is None and fake_wandb.calls == []


def test_wandb_offline_without_api_key(fake_wandb, tmp_path):
    run = runlog.start_wandb('Barlow-Twins-MixUp-cifar10-resnet18', {}, str(tmp_path), 'abc')
    assert run.mode == 'offline' and run.project == 'Barlow-Twins-MixUp-cifar10-resnet18'


def test_wandb_online_with_key_falls_back_to_offline(fake_wandb, tmp_path):
    fake_wandb.api_key = 'k' * 40
    assert runlog.start_wandb('p', {}, str(tmp_path), 'abc').mode == 'online'
    fake_wandb.fail_online = True
    assert runlog.start_wandb('p', {}, str(tmp_path), 'abc').mode == 'offline'
    assert fake_wandb.calls == ['online', 'online', 'offline']


@pytest.fixture
def real_wandb(monkeypatch, tmp_path):
    """The installed wandb with no credentials anywhere (a bare HOME), read afresh."""
    wandb = pytest.importorskip('wandb')
    for name in ('WANDB_MODE', 'WANDB_API_KEY', 'WANDB_SILENT', 'WANDB_CONFIG_DIR', 'NETRC', 'WANDB_BASE_URL'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('HOME', str(tmp_path))
    wandb.teardown()  # wandb reads its settings once per process
    yield wandb
    wandb.teardown()


def test_wandb_credentials_are_read_without_the_deprecated_api(real_wandb, monkeypatch, capfd, recwarn):
    """wandb.api.api_key printed 'wandb.api and wandb.ensure_configured() are deprecated' on every run.
    Asking wandb.login(prompt=False, verify=False) instead: no warning, no prompt, no network."""
    started = time.time()
    assert runlog.wandb_logged_in(real_wandb) is False
    monkeypatch.setenv('WANDB_API_KEY', 'k' * 40)
    assert runlog.wandb_logged_in(real_wandb) is True
    assert time.time() - started < 4  # no server was asked (it greets a logged-in user by name unless silent)
    err = capfd.readouterr().err
    assert 'deprecated' not in err and 'logged in' not in err and 'API key is configured' not in err, err
    assert not [w for w in recwarn if 'deprecat' in str(w.message).lower()]
    assert 'WANDB_SILENT' not in os.environ  # the user's setting is left as it was


@pytest.mark.slow
def test_wandb_offline_run_starts_and_finishes_without_warnings(real_wandb, tmp_path, capfd):
    run = runlog.start_wandb('p', {'lr': 0.1}, str(tmp_path / 'runs'), 'abcd1234')
    assert run is not None and run.settings.mode == 'offline'
    run.log({'loss': 1.0})
    run.finish()
    err = capfd.readouterr().err
    assert 'deprecated' not in err and 'WARNING' not in err, err


# ---------------------------------------------------------------------------- the run's plot
def no_mixup_history(epochs=5):
    """Rows as main.py logs them for Barlow Twins without mixup: loss is loss_bt, loss_mix is 0;
    epoch 0 is the kNN monitor's random-init baseline."""
    rows = [{'epoch': 0, 'knn_top1': 10.0, 'knn_top5': 50.0}]
    for e in range(1, epochs + 1):
        loss = 100.0 / e + 0.123 * e
        rows.append({'epoch': e, 'loss': loss, 'loss_bt': loss, 'loss_mix': 0.0, 'lr': 0.1,
                     'knn_top1': 10.0 + 5 * e, 'knn_top5': 50.0 + 4 * e, 'knn20_euclid_top1': None})
    return rows


def make_log(tmp_path, history, plot_keys):
    return runlog.RunLog(str(tmp_path / 'run'), 'abcd1234_0.0078125_128_256_cifar10', argparse.Namespace(lr=0.1),
                         'p', 'abcd1234', history=history, plot_keys=plot_keys)


MAIN_PANELS = (('loss', 'loss_bt', 'loss_mix'), ('knn_top1', 'knn_top5', 'knn20_euclid_top1'))


def test_plot_has_labels_whole_epochs_and_a_legend_over_no_line(tmp_path):
    from PIL import Image
    rows = no_mixup_history()
    log = make_log(tmp_path, rows[:-1], MAIN_PANELS)  # as a resumed run: its history, then one more row
    log.log(rows[-1])
    assert Image.open(log.plot_path).size == (1000, 380)  # 5 x 3.8 inches per panel, 100 dpi
    fig = log.figure()
    fig.canvas.draw()
    assert fig._suptitle.get_text() == 'abcd1234_0.0078125_128_256_cifar10'
    (loss_ax, knn_ax) = fig.axes
    assert [ax.get_xlabel() for ax in fig.axes] == ['epoch', 'epoch']
    assert [loss_ax.get_ylabel(), knn_ax.get_ylabel()] == ['loss', 'accuracy (%)']
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(t == int(t) for t in ticks), ticks
        legend, box = ax.get_legend(), ax.get_window_extent()
        assert legend.get_window_extent().y1 <= box.y0  # under the axes (and their tick labels): over no line
    # no mixup: one loss line (not a second one hidden under it), no flat zero line
    assert [line.get_label() for line in loss_ax.get_lines()] == ['loss = loss_bt']
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ['loss = loss_bt', 'loss_mix = 0 (not drawn)']
    assert [line.get_label() for line in knn_ax.get_lines()] == ['knn_top1', 'knn_top5']  # the empty key: no line


def test_plot_with_mixup_draws_every_loss(tmp_path):
    rows = [{'epoch': e, 'loss': 3.0 / e, 'loss_bt': 2.0 / e, 'loss_mix': 1.0 / e} for e in (1, 2)]
    fig = make_log(tmp_path, rows, MAIN_PANELS).figure()
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ['loss', 'loss_bt', 'loss_mix']
    assert len(fig.axes) == 1  # no kNN values yet: no empty panel


def test_axis_labels_of_every_panel():
    assert runlog.axis_label(['train_loss', 'test_loss']) == 'loss'
    assert runlog.axis_label(['train_acc@1', 'test_acc@1', 'test_acc@5']) == 'accuracy (%)'
    assert runlog.axis_label(['knn_train_top1', 'knn_top1', 'gen_gap']) == 'accuracy (%)'
    assert runlog.axis_label(['erank_features', 'offdiag_mass']) == 'effective rank / cross-correlation'
    assert runlog.axis_label(['images_per_s']) == 'images_per_s'


# ---------------------------------------------------------------------------- a full disk
def test_full_disk_at_the_plot_is_named_as_the_checkpoint_writer_names_it(tmp_path, monkeypatch):
    """--knn_every 0 on a nearly full disk: the plot was the first write to fail, with matplotlib's
    OSError and a traceback. Now the same one line as a checkpoint write, and no temporary file."""
    import matplotlib.figure

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')
    log = make_log(tmp_path, [], MAIN_PANELS)
    log.log(no_mixup_history()[1])
    before = open(log.plot_path, 'rb').read()
    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', full)
    with pytest.raises(runlog.RunLogError) as plot_error:
        log.log(no_mixup_history()[2])
    folder = str(tmp_path / 'run')
    assert str(plot_error.value) == (f'could not write {log.plot_path}: no space left on {folder}; '
                                     f'the previous file is intact')
    assert open(log.plot_path, 'rb').read() == before and sorted(os.listdir(folder)) == sorted(
        ['args.json', os.path.basename(log.csv_path), os.path.basename(log.plot_path)])

    def full_save(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(torch, 'save', full_save)
    with pytest.raises(saving.CheckpointError) as checkpoint_error:
        saving.atomic_save({'w': torch.zeros(1)}, os.path.join(folder, 'last.pth'))
    assert f': no space left on {folder}; ' in str(checkpoint_error.value)
    assert str(plot_error.value).split(':', 1)[1].split(';')[0] == str(checkpoint_error.value).split(':', 1)[1].split(';')[0]


def test_other_write_failures_name_their_cause(tmp_path):
    error = runlog.write_failure(str(tmp_path / 'x.csv'), PermissionError(errno.EACCES, 'Permission denied'))
    assert str(error) == f'could not write {tmp_path / "x.csv"}: PermissionError: Permission denied; nothing was written'


def test_slurm_sigusr1_requeues_the_job(tmp_path, monkeypatch):
    import main
    marker = tmp_path / 'requeued'
    scontrol = tmp_path / 'scontrol'
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {marker}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv('PATH', f'{tmp_path}:{os.environ["PATH"]}')
    monkeypatch.setenv('SLURM_JOB_ID', '777')
    previous = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)
    try:
        main.install_requeue_handler(str(tmp_path / 'last.pth'))
        with pytest.raises(SystemExit):
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(5)  # the handler runs (and exits) before this returns
    finally:
        signal.signal(signal.SIGUSR1, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    assert marker.read_text().split() == ['requeue', '777']
