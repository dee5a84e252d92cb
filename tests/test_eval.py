"""linear.py / transfer.py on checkpoints in the released layout, hubconf, detectron2 export."""
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torchvision

import fakedata
import linear
from mixbt import probe
from mixbt import checkpoints as C
from mixbt.errors import MixBTError
from mixbt import data
import model as M


def released_checkpoint(tmp_path, dataset='cifar10', arch='resnet18', feature_dim=64, seed=0):
    """A file exactly like the paper's release: the raw Model.state_dict() saved with torch.save,
    with BatchNorm statistics that are not the defaults (so that a lost load would show)."""
    torch.manual_seed(seed)
    m = M.Model(feature_dim, arch, data.SPECS[dataset].maxpool)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f'abcd1234_0.0078125_{feature_dim}_256_{dataset}_model.pth'
    torch.save(m.state_dict(), path)
    return str(path), m


def capture_backbones(monkeypatch, module):
    """Wrap module.load_backbone to keep each loaded backbone and a copy of its state at load time."""
    seen = []
    real = C.load_backbone

    def wrapped(*a, **k):
        out = real(*a, **k)
        seen.append((out[0], {n: t.clone() for n, t in out[0].state_dict().items()}))
        return out
    monkeypatch.setattr(module, 'load_backbone', wrapped)
    return seen


def assert_frozen(backbone, at_load, bn_trained):
    """The backbone's weights are those of the file; its BatchNorm running statistics changed only
    where the probe trained with the backbone's BatchNorm in train mode (the original's --probe_bn train)."""
    for name, value in backbone.named_parameters():
        assert torch.equal(value, at_load[name]), name
    buffers = [n for n, b in backbone.named_buffers() if b.is_floating_point()]  # running mean and var
    changed = [n for n in buffers if not torch.equal(backbone.state_dict()[n], at_load[n])]
    assert (len(changed) == len(buffers)) if bn_trained else changed == [], changed


@pytest.mark.slow
@pytest.mark.parametrize('no_aug,probe_bn', [(False, None), (True, 'eval')])
def test_linear_evaluates_released_checkpoint_with_every_weight_and_frozen_backbone(tmp_path, monkeypatch, no_aug,
                                                                                     probe_bn):
    fakedata.write_cifar(str(tmp_path / 'data'), 'cifar10', n_train=40, n_test=20)
    path, reference = released_checkpoint(tmp_path)
    seen = capture_backbones(monkeypatch, linear)
    args = ['--dataset', 'cifar10', '--model_path', path, '--data_root', str(tmp_path / 'data'), '--epochs', '2',
            '--batch_size', '16', '--workers', '0', '--results_dir', str(tmp_path / 'res')] + (['--no_aug'] if no_aug else [])
    result = linear.main(args + (['--probe_bn', probe_bn] if probe_bn else []))
    (backbone, at_load), = seen
    for name, value in reference.f.state_dict().items():  # every backbone tensor came from the file
        assert torch.equal(at_load[name], value), name
    assert_frozen(backbone, at_load, bn_trained=probe_bn is None)  # the default: the original's train mode
    assert 0 <= result['final_acc@1'] <= result['final_acc@5'] <= 100
    run = result['run_dir']
    saved = json.load(open(os.path.join(run, 'results.json')))
    assert saved['best_epoch'] in (1, 2) and saved['identity']['probe_bn'] == (probe_bn or 'train')
    assert (saved['train_images'], saved['test_images']) == (40, 20)
    stem = os.path.basename(path)[:-4]
    assert {f'{stem}_linear_statistics.csv', f'{stem}_linear_curves.png', 'checkpoint.pth'} <= set(os.listdir(run))


def kill_in_second_epoch(monkeypatch):
    """Make probe.run_epoch raise in the second training epoch (calls: train 1, test 1, train 2)."""
    from mixbt import probe
    real, calls = probe.run_epoch, []

    def killed(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(probe, 'run_epoch', killed)
    return lambda: monkeypatch.setattr(probe, 'run_epoch', real)


@pytest.mark.slow
@pytest.mark.parametrize('how', ['--resume', '--run_name'])
def test_linear_resume_after_kill_continues_identically(tmp_path, monkeypatch, how):
    """--resume RUN continues a run; so does the same command again with a fixed --run_name."""
    fakedata.write_cifar(str(tmp_path / 'data'), 'cifar10', n_train=20, n_test=10)
    path, _ = released_checkpoint(tmp_path)
    common = ['--dataset', 'cifar10', '--model_path', path, '--data_root', str(tmp_path / 'data'), '--batch_size', '8',
              '--workers', '0', '--no_aug', '--epochs', '3']
    named = ['--run_name', 'probe'] if how == '--run_name' else []
    straight = linear.main(common + ['--results_dir', str(tmp_path / 'a')])
    restore = kill_in_second_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        linear.main(common + named + ['--results_dir', str(tmp_path / 'b')])
    restore()
    (run_id,) = [d for d in os.listdir(tmp_path / 'b') if d != 'wandb']
    again = named if how == '--run_name' else ['--resume', str(tmp_path / 'b' / run_id)]
    resumed = linear.main(common + again + ['--results_dir', str(tmp_path / 'b')])
    assert [d for d in os.listdir(tmp_path / 'b') if d != 'wandb'] == [run_id]  # no new run folder
    a = torch.load(os.path.join(straight['run_dir'], 'checkpoint.pth'))
    b = torch.load(os.path.join(resumed['run_dir'], 'checkpoint.pth'))
    assert b['epoch'] == 3 and [r['epoch'] for r in b['history']] == [1, 2, 3]
    for k in a['fc']:
        assert torch.equal(a['fc'][k], b['fc'][k]), k
    # the backbone's running statistics (BatchNorm in train mode, the default) continue too
    assert a['bn_buffers'] and set(a['bn_buffers']) == set(b['bn_buffers'])
    for k in a['bn_buffers']:
        assert torch.equal(a['bn_buffers'][k], b['bn_buffers'][k]), k
    assert [r['test_acc@1'] for r in a['history']] == [r['test_acc@1'] for r in b['history']]
    if how == '--run_name':  # the folder now holds a finished cifar10 probe: another evaluation is refused
        with pytest.raises(MixBTError, match='holds another run.*--seed'):
            linear.main(common + named + ['--results_dir', str(tmp_path / 'b'), '--seed', '1'])


def test_probe_run_folder_is_fixed_on_slurm(monkeypatch):
    import argparse
    from mixbt import runs
    args = argparse.Namespace(run_name=None)
    monkeypatch.delenv('SLURM_JOB_ID', raising=False)
    assert runs.fixed_name(args, 'm_linear') is None  # a new random folder each launch
    monkeypatch.setenv('SLURM_JOB_ID', '4242')
    assert runs.fixed_name(args, 'm_transfer_dtd') == 'slurm4242_m_transfer_dtd'  # a requeued job finds it again
    assert runs.fixed_name(argparse.Namespace(run_name='mine'), 'm_linear') == 'mine'


def test_feature_batches_give_every_rank_every_step_and_lose_no_sample(monkeypatch):
    from mixbt import distributed as D
    from mixbt import probe
    features, labels = torch.arange(21.0)[:, None], torch.arange(21)
    monkeypatch.setattr(D, 'world_size', lambda: 2)
    parts = []
    for r in range(2):
        monkeypatch.setattr(D, 'rank', lambda r=r: r)
        parts.append(list(probe.feature_batches(features, labels, 5, shuffle=True, seed=3)))
    assert len(parts[0]) == len(parts[1]) == 5  # both ranks run all 5 steps
    assert [len(y) for _, y, _ in parts[1]] == [2, 2, 2, 2, 0]  # an empty part in the last step
    assert [n for _, _, n in parts[0]] == [5, 5, 5, 5, 1]  # the global batch count
    seen = torch.cat([y for rank in parts for _, y, _ in rank])
    assert sorted(seen.tolist()) == list(range(21))


@pytest.mark.slow
def test_fp16_probe_trains_with_a_grad_scaler_and_resumes_it(tmp_path, monkeypatch):
    """--precision fp16 (or auto on a GPU without bf16): a GradScaler scales the loss, and its
    state is saved and restored with the run. (On the CPU the scaler runs on fp32 autocast-free
    training: float16 convolutions on the CPU are too slow for a test.)"""
    from mixbt.runtime import grad_scaler
    cpu = torch.device('cpu')
    assert isinstance(grad_scaler(torch.float16, cpu), torch.amp.GradScaler)
    assert grad_scaler(torch.bfloat16, cpu) is None and grad_scaler(None, cpu) is None
    fakedata.write_cifar(str(tmp_path / 'data'), 'cifar10', n_train=20, n_test=10)
    path, _ = released_checkpoint(tmp_path)
    monkeypatch.setattr(probe, 'grad_scaler', lambda amp, device: grad_scaler(torch.float16, device))
    loaded, real = [], torch.amp.GradScaler.load_state_dict
    monkeypatch.setattr(torch.amp.GradScaler, 'load_state_dict', lambda self, sd: loaded.append(sd) or real(self, sd))
    command = ['--dataset', 'cifar10', '--model_path', path, '--data_root', str(tmp_path / 'data'), '--batch_size',
               '8', '--workers', '0', '--no_aug', '--epochs', '2', '--results_dir', str(tmp_path / 'r'),
               '--run_name', 'fp16']
    restore = kill_in_second_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        linear.main(command)
    restore()
    saved = torch.load(tmp_path / 'r' / 'fp16' / 'checkpoint.pth')
    assert saved['epoch'] == 1 and saved['scaler']['scale'] > 0
    result = linear.main(command)
    assert loaded == [saved['scaler']]
    assert torch.load(tmp_path / 'r' / 'fp16' / 'checkpoint.pth')['scaler'] is not None
    assert 0 <= result['final_acc@1'] <= 100


def run(script, args, repo_root):
    return subprocess.run([sys.executable, script, *args], cwd=repo_root, capture_output=True, text=True,
                          env={**os.environ, 'WANDB_MODE': 'disabled'})


@pytest.mark.slow
def test_wrong_checkpoints_give_clear_errors(tmp_path, repo_root):
    fakedata.write_cifar(str(tmp_path / 'data'), 'cifar10', n_train=10, n_test=5)
    path, _ = released_checkpoint(tmp_path)
    base = ['--data_root', str(tmp_path / 'data'), '--epochs', '1', '--workers', '0']
    with pytest.raises(C.CheckpointError, match='resnet18 backbone but --arch resnet50'):
        linear.main(['--dataset', 'cifar10', '--arch', 'resnet50', '--model_path', path, *base])
    with pytest.raises(C.CheckpointError, match='not for --dataset stl10'):
        linear.main(['--dataset', 'stl10', '--model_path', path, *base])
    junk = tmp_path / 'random.pth'
    junk.write_bytes(os.urandom(2048))
    with pytest.raises(C.CheckpointError, match='not a readable PyTorch checkpoint'):
        linear.main(['--dataset', 'cifar10', '--model_path', str(junk), *base])
    other = tmp_path / 'other.pth'
    torch.save({'encoder.conv.weight': torch.zeros(3)}, other)
    # the command line turns the error into one clear line and exit code 1
    proc = run('linear.py', ['--dataset', 'cifar10', '--model_path', str(other), *base], repo_root)
    assert proc.returncode == 1 and 'missing keys' in proc.stderr and 'unexpected keys: encoder.conv.weight' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_hubconf_loads_local_weights_strictly(tmp_path, repo_root):
    path, reference = released_checkpoint(tmp_path, dataset='stl10')
    net = torch.hub.load(repo_root, 'resnet18', source='local', dataset='stl10', weights=path)
    for name, value in reference.f.state_dict().items():
        assert torch.equal(net.backbone.state_dict()[name], value)
    net.eval()
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    tv = torchvision.models.resnet50()
    tv_path = tmp_path / 'resnet50.pth'
    torch.save({k: v for k, v in tv.state_dict().items() if not k.startswith('fc.')}, tv_path)
    net = torch.hub.load(repo_root, 'mixbt_resnet50', source='local', dataset='imagenet', weights=str(tv_path))
    assert torch.equal(net.backbone.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    with pytest.raises(C.CheckpointError):
        torch.hub.load(repo_root, 'resnet18', source='local', dataset='cifar10', weights=path)  # stl10 file
    import hubconf
    assert hubconf.released_url('resnet18', 'cifar10').endswith('4wdhbpcf_0.0078125_1024_256_cifar10_model.pth')
    with pytest.raises(MixBTError, match='no released'):
        hubconf.released_url('resnet18', 'imagenet', 'bt')


def test_hub_resnet50_without_arguments_is_the_originals_torchvision_model_with_official_weights(monkeypatch):
    """As the original hubconf: torchvision's ResNet-50, fc included, holding the official Barlow Twins
    weights (the release has no fc); every other key must be in the file."""
    import hubconf
    official = torchvision.models.resnet50()
    state = {k: v for k, v in official.state_dict().items() if not k.startswith('fc.')}
    asked = []
    monkeypatch.setattr(hubconf, '_load_state', lambda source: asked.append(source) or state)
    net = hubconf.resnet50()
    assert asked == [hubconf.OFFICIAL_BT_URL]
    assert type(net) is torchvision.models.ResNet and net.fc.out_features == 1000
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    monkeypatch.setattr(hubconf, '_load_state', lambda source: {**state, 'extra.w': torch.zeros(1)})
    with pytest.raises(C.CheckpointError, match='extra.w'):
        hubconf.resnet50()
    assert hubconf.resnet50(pretrained=False).fc.out_features == 1000


@pytest.mark.slow
def test_detectron2_converter_key_mapping(tmp_path, repo_root):
    tv = torchvision.models.resnet50()
    state = {k: v for k, v in tv.state_dict().items() if not k.startswith('fc.')}
    src = tmp_path / 'resnet50.pth'
    torch.save({'model': {f'module.backbone.{k}': v for k, v in state.items()}}, src)  # full training checkpoint
    proc = run('convert_to_detectron2.py', [str(src), str(tmp_path / 'out.pkl')], repo_root)
    assert proc.returncode == 0, proc.stderr
    out = pickle.load(open(tmp_path / 'out.pkl', 'rb'))
    assert out['matching_heuristics'] is True
    model = out['model']
    expected = {'conv1.weight': 'stem.conv1.weight', 'bn1.running_var': 'stem.conv1.norm.running_var',
                'layer1.0.conv1.weight': 'res2.0.conv1.weight', 'layer2.3.bn3.bias': 'res3.3.conv3.norm.bias',
                'layer3.0.downsample.0.weight': 'res4.0.shortcut.weight',
                'layer4.0.downsample.1.running_mean': 'res5.0.shortcut.norm.running_mean'}
    for src_key, dst_key in expected.items():
        assert (model[dst_key] == state[src_key].numpy()).all()
    assert len(model) == len([k for k in state if not k.endswith('num_batches_tracked')])
    assert not any('layer' in k or '.bn' in k or 'downsample' in k for k in model)
    torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7)}, tmp_path / 'bad.pth')
    proc = run('convert_to_detectron2.py', [str(tmp_path / 'bad.pth'), str(tmp_path / 'x.pkl')], repo_root)
    assert proc.returncode == 1 and 'missing keys' in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize('transfer_dataset', ['dtd', 'aircraft'])
def test_transfer_evaluates_released_checkpoint_with_every_weight(tmp_path, monkeypatch, transfer_dataset):
    import transfer
    writer = {'dtd': fakedata.write_dtd, 'aircraft': fakedata.write_aircraft}[transfer_dataset]
    writer(str(tmp_path / 'data'))
    path, reference = released_checkpoint(tmp_path, dataset='stl10')
    seen = capture_backbones(monkeypatch, transfer)
    result = transfer.main(['--dataset', 'stl10', '--transfer_dataset', transfer_dataset, '--model_path', path,
                            '--data_root', str(tmp_path / 'data'), '--epochs', '2', '--batch_size', '4',
                            '--workers', '0', '--results_dir', str(tmp_path / 'res')])
    (backbone, at_load), = seen
    for name, value in reference.f.state_dict().items():
        assert torch.equal(at_load[name], value), name
    assert_frozen(backbone, at_load, bn_trained=True)  # the original evaluate_transfer.py's train mode
    assert 0 <= result['final_acc@1'] <= 100
    stem = os.path.basename(path)[:-4]
    assert f'{stem}_transfer_{transfer_dataset}_statistics.csv' in os.listdir(result['run_dir'])


@pytest.mark.slow
def test_transfer_missing_data_set_is_a_clear_error(tmp_path, repo_root):
    path, _ = released_checkpoint(tmp_path)
    proc = run('transfer.py', ['--dataset', 'cifar10', '--transfer_dataset', 'cu_birds', '--model_path', path,
                               '--data_root', str(tmp_path / 'none'), '--workers', '0'], repo_root)
    assert proc.returncode == 1 and 'CUB_200_2011' in proc.stderr and 'Traceback' not in proc.stderr


def test_dataset_left_out_is_the_one_the_checkpoint_names(tmp_path, capsys):
    import transfer
    released = 'checkpoints/76kk7scz_0.0078125_1024_256_cifar100_model.pth'
    assert linear.get_args(['--model_path', released]).dataset == 'cifar100'
    assert 'cifar100: named by the checkpoint' in capsys.readouterr().out
    assert transfer.get_args(['--model_path', released]).dataset == 'cifar100'
    assert linear.get_args(['--model_path', 'x/02azq6fs_0.0009765_1024_256_tiny_imagenet_model_50.pth']).dataset \
        == 'tiny_imagenet'
    assert linear.get_args(['--model_path', 'x/3fb1op86_1.0000_8192_1024_imagenet_resnet50.pth']).dataset == 'imagenet'
    # given explicitly: honoured where it agrees, refused where the checkpoint names another data set
    assert linear.get_args(['--model_path', released, '--dataset', 'cifar100']).dataset == 'cifar100'
    with pytest.raises(C.CheckpointError, match='pretrained on cifar100.*not for --dataset cifar10'):
        linear.get_args(['--model_path', released, '--dataset', 'cifar10'])
    # a main.py run folder: its args.json
    run = tmp_path / 'abc123'
    run.mkdir()
    (run / 'args.json').write_text(json.dumps({'dataset': 'stl10', 'lmbda': 0.0078125}))
    assert transfer.get_args(['--model_path', str(run / 'last.pth')]).dataset == 'stl10'
    # nothing says: the original default, said aloud; transfer never infers a data set it cannot take
    capsys.readouterr()
    assert linear.get_args(['--model_path', str(tmp_path / 'weights.pth')]).dataset == 'cifar10'
    assert 'the default' in capsys.readouterr().out
    assert transfer.get_args(['--model_path', 'x/3fb1op86_1.0000_8192_1024_imagenet_resnet50.pth']).dataset \
        == 'cifar10'
