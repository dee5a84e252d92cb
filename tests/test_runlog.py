"""wandb never blocks: disabled, offline without a key, online with one, offline when online fails;
the SLURM requeue handler."""
import os
import signal
import sys
import time
import types

import pytest

from mixbt import runlog


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
    fake = types.SimpleNamespace(init=init, Settings=Settings, api=types.SimpleNamespace(api_key=None),
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
    fake_wandb.api.api_key = 'k' * 40
    assert runlog.start_wandb('p', {}, str(tmp_path), 'abc').mode == 'online'
    fake_wandb.fail_online = True
    assert runlog.start_wandb('p', {}, str(tmp_path), 'abc').mode == 'offline'
    assert fake_wandb.calls == ['online', 'online', 'offline']


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
