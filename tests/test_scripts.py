"""Every launch script runs end to end with tiny overrides on tiny data in the official formats."""
import glob
import json
import os
import subprocess

import pytest
import torch
import torchvision

import fakedata
import hubconf
import model as M

PRETRAIN = sorted(glob.glob('scripts-pretrain-resnet*/*.sh', root_dir=os.path.dirname(os.path.dirname(__file__))))
LINEAR = sorted(glob.glob('scripts-linear-resnet*/*.sh', root_dir=os.path.dirname(os.path.dirname(__file__))))
TRANSFER = sorted(glob.glob('scripts-transfer-resnet18/*.sh', root_dir=os.path.dirname(os.path.dirname(__file__))))
IMAGENET_CLASSES = ('n01440764', 'n01443537')


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """One data root with every data set in its official layout, and a folder of checkpoints
    named like the released files."""
    root = tmp_path_factory.mktemp('world')
    data = root / 'data'
    fakedata.write_cifar(str(data), 'cifar10', n_train=20, n_test=10)
    fakedata.write_cifar(str(data), 'cifar100', n_train=20, n_test=10)
    fakedata.write_stl10(str(data), n_train=10, n_test=10, n_unlabeled=10)
    fakedata.write_tiny_imagenet(str(data))
    fakedata.write_mnist_like(str(data / 'FashionMNIST' / 'raw'))
    fakedata.write_mnist_like(str(data / 'MNIST' / 'raw'), seed=1)
    for writer in (fakedata.write_dtd, fakedata.write_cub, fakedata.write_flowers102, fakedata.write_gtsrb,
                   fakedata.write_aircraft):
        writer(str(data))
    fakedata.write_image_folder(str(data / 'imagenet' / 'train'), IMAGENET_CLASSES, per_class=3, size=72)
    fakedata.write_image_folder(str(data / 'imagenet' / 'val'), IMAGENET_CLASSES, per_class=2, size=72)
    (root / '1percent.txt').write_text(''.join(f'{c}_{i}.JPEG\n' for c in IMAGENET_CLASSES for i in range(2)))
    ckpt = root / 'checkpoints'
    ckpt.mkdir()
    for key, (name, _, _) in hubconf.RELEASED.items():
        arch, dataset = key[0], key[1]
        if dataset == 'imagenet':
            tv = torchvision.models.resnet50()
            state = {k: v for k, v in tv.state_dict().items() if not k.startswith('fc.')}
        else:
            state = M.Model(16, dataset, arch).state_dict()
        torch.save(state, ckpt / name)
    # a finished fashionmnist pretraining run, for scripts-linear-resnet18/fashionmnist.sh
    run = root / 'results' / 'abcd1234'
    run.mkdir(parents=True)
    torch.save(M.Model(16, 'fashionmnist', 'resnet18').state_dict(), run / 'abcd1234_0.0078125_16_8_fashionmnist_model.pth')
    return root


def run_script(script, env, args, repo_root, cwd):
    full_env = {**os.environ, 'WANDB_MODE': 'disabled', 'OMP_NUM_THREADS': '2', 'PYTHON': 'python3', **env}
    return subprocess.run(['bash', os.path.join(repo_root, script), *args], cwd=cwd, capture_output=True, text=True,
                          env=full_env, timeout=900)


@pytest.mark.parametrize('script', PRETRAIN)
def test_pretrain_script_runs(script, world, repo_root, tmp_path):
    env = {'EPOCHS': '1', 'BATCH_SIZE': '4', 'DATA_ROOT': str(world / 'data'), 'RESULTS_DIR': str(tmp_path)}
    args = ['--subset', '4', '--workers', '0', '--k', '3']  # one optimiser step, then the kNN monitor
    if os.path.basename(script) == 'imagenet.sh':
        env.update(NPROC='2', DATA_ROOT=str(world / 'data' / 'imagenet'), BATCH_SIZE='4', PROJECTOR='32-32-32')
        args += ['--image_size', '64']
    proc = run_script(script, env, args, repo_root, cwd=str(tmp_path))  # any working directory
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [d for d in os.listdir(tmp_path) if os.path.isdir(tmp_path / d) and d != 'wandb']
    files = os.listdir(tmp_path / run)
    assert 'last.pth' in files and any(f.endswith('_model.pth') for f in files)
    assert any(f.endswith('_statistics.csv') for f in files)
    saved = torch.load(tmp_path / run / 'last.pth', weights_only=False)['args']
    if os.path.basename(script) != 'imagenet.sh':
        assert saved['lr'] == 0.01 and saved['lr_shed'] == 'cosine' and saved['batch_size'] == 4


@pytest.mark.parametrize('script', LINEAR)
def test_linear_script_runs(script, world, repo_root, tmp_path):
    env = {'EPOCHS': '1', 'BATCH_SIZE': '4', 'DATA_ROOT': str(world / 'data'), 'RESULTS_DIR': str(tmp_path),
           'CHECKPOINT_DIR': str(world / 'checkpoints')}
    args = ['--subset', '4', '--workers', '0']
    if os.path.basename(script).startswith('imagenet'):
        env.update(NPROC='1', DATA_ROOT=str(world / 'data' / 'imagenet'), BATCH_SIZE='4',
                   TRAIN_FILES=str(world / '1percent.txt'))
        args += ['--image_size', '64']
    if script.endswith('fashionmnist.sh'):
        env['RESULTS_DIR'] = str(world / 'results')
    proc = run_script(script, env, args, repo_root, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = glob.glob(os.path.join(env['RESULTS_DIR'], '*', 'results.json'))
    assert results and 0 <= json.load(open(results[0]))['final_acc@1'] <= 100


ALL_SEVEN = ['dtd', 'mnist', 'fashionmnist', 'cu_birds', 'vgg_flower', 'traffic_sign', 'aircraft']


@pytest.mark.parametrize('script', TRANSFER)
def test_transfer_script_runs(script, world, repo_root, tmp_path):
    """cifar10-to-x runs its default list (all seven sets); the others two sets each, to keep CI short."""
    env = {'EPOCHS': '1', 'BATCH_SIZE': '4', 'DATA_ROOT': str(world / 'data'), 'RESULTS_DIR': str(tmp_path),
           'CHECKPOINT_DIR': str(world / 'checkpoints')}
    expected = ALL_SEVEN
    if not script.endswith('/cifar10-to-x.sh'):
        expected = ['mnist', 'aircraft']
        env['TRANSFER_DATASETS'] = ' '.join(expected)
    proc = run_script(script, env, ['--subset', '4', '--workers', '0'], repo_root, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(glob.glob(str(tmp_path / '*' / 'results.json'))) == len(expected)
    csvs = glob.glob(str(tmp_path / '*' / '*_statistics.csv'))
    assert sorted(c.rsplit('_transfer_', 1)[1][:-len('_statistics.csv')] for c in csvs) == sorted(expected)


def test_missing_released_checkpoint_says_where_to_download(repo_root, tmp_path):
    proc = run_script('scripts-linear-resnet50/stl10.sh', {'CHECKPOINT_DIR': str(tmp_path)}, [], repo_root,
                      str(tmp_path))
    assert proc.returncode == 1
    assert 'pbknx38b_0.0078125_1024_256_stl10_model.pth not found' in proc.stderr
    assert 'https://github.com/wgcban/mix-bt/releases/download/v1.0.0/pbknx38b' in proc.stderr


def test_checkpoint_list_matches_hub_registry(repo_root):
    text = open(os.path.join(repo_root, 'checkpoints', 'README.md')).read()
    for name, _, _ in hubconf.RELEASED.values():
        assert hubconf.RELEASE_URL + name in text
    scripts = ' '.join(open(os.path.join(repo_root, s)).read() for s in LINEAR + TRANSFER)
    for key, (name, _, _) in hubconf.RELEASED.items():
        if key[1] != 'imagenet' or key[2] == 'mixbt-1.0':
            assert name in scripts, name


def test_download_script_fails_clearly_without_network(repo_root, tmp_path):
    proc = subprocess.run(['bash', os.path.join(repo_root, 'scripts', 'download_checkpoints.sh'),
                           'i7det4xq_0.0078125_1024_256_stl10_model.pth'], capture_output=True, text=True,
                          env={**os.environ, 'CHECKPOINT_DIR': str(tmp_path), 'PATH': '/usr/bin:/bin'}, timeout=300)
    if proc.returncode == 0:  # a machine with network access simply downloads it
        assert (tmp_path / 'i7det4xq_0.0078125_1024_256_stl10_model.pth').stat().st_size > 0
    else:
        assert 'could not download' in proc.stderr and 'copy it to' in proc.stderr
        assert not list(tmp_path.glob('*.part'))
