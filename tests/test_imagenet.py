"""The ImageNet path on CPU: ResNet-50 at small resolution on a tiny generated ImageFolder,
2 gloo processes, LARS, mixup warm-up, global BatchNorm, export, auto-resume, evaluation."""
import csv
import os
import socket
import subprocess
import sys

import pytest
import torch
import torchvision

from mixbt import distributed as D
import fakedata
import main as pretrain
import main_imagenet
import evaluate_imagenet
from mixbt import checkpoints as C
from mixbt.errors import MixBTError
import model as M

CLASSES = ('n01440764', 'n01443537', 'n01484850')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def imagenet(tmp_path):
    root = tmp_path / 'imagenet'
    fakedata.write_image_folder(str(root / 'train'), CLASSES, per_class=4, size=72)
    fakedata.write_image_folder(str(root / 'val'), CLASSES, per_class=2, size=72, seed=7)
    return root


def torchrun(script, args, repo_root, nproc=2):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc), '--master_port',
           str(free_port()), script, *args]
    env = {**os.environ, 'WANDB_MODE': 'disabled', 'OMP_NUM_THREADS': '1'}
    return subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, env=env, timeout=900)


def test_original_imagenet_command_line_maps_onto_main():
    argv = main_imagenet.translate(['/data/imagenet', '--epochs', '300', '--batch-size', '1024',
                                    '--learning-rate-weights', '0.2', '--learning-rate-biases', '0.0048',
                                    '--weight-decay', '1e-6', '--lambd', '0.0051', '--projector', '8192-8192-8192',
                                    '--is_mixup', 'true', '--lambda_mixup', '1.0', '--checkpoint-dir', '/ckpt'])
    args = pretrain.get_args(argv)
    assert (args.dataset, args.data_root, args.arch) == ('imagenet', '/data/imagenet', 'resnet50')
    assert (args.epochs, args.batch_size, args.lmbda, args.results_dir) == (300, 1024, 0.0051, '/ckpt')
    assert (args.lr_weights, args.lr_biases, args.weight_decay) == (0.2, 0.0048, 1e-6)
    assert args.is_mixup and args.mixup_loss_scale == 0.5 and args.mixup_warmup_epochs == 10
    assert (args.optimizer, args.sync_bn, args.projector) == ('lars', True, '8192-8192-8192')
    bt = pretrain.get_args(main_imagenet.translate(['/d', '--is_mixup', 'false']))
    assert bt.method == 'barlowtwins' and not bt.is_mixup
    ev = linear_args(evaluate_imagenet.translate(['/d', '/w.pth', '--weights', 'finetune', '--train-percent', '1',
                                                 '--lr-backbone', '0.005', '--lr-classifier', '0.5',
                                                 '--weight-decay', '0', '--epochs', '20']))
    assert (ev.dataset, ev.data_root, ev.model_path, ev.weights, ev.train_percent) == ('imagenet', '/d', '/w.pth',
                                                                                      'finetune', 1)
    assert (ev.lr_backbone, ev.lr_classifier, ev.weight_decay, ev.epochs, ev.batch_size) == (0.005, 0.5, 0, 20, 256)


def linear_args(argv):
    import linear
    return linear.get_args(argv)


# The two evaluate.py command lines of the official Barlow Twins README, verbatim.
OFFICIAL_LINEAR = 'python evaluate.py /path/to/imagenet/ /path/to/checkpoint/resnet50.pth --lr-classifier 0.1'
OFFICIAL_SEMISUP = ('python evaluate.py /path/to/imagenet/ /path/to/checkpoint/resnet50.pth --weights finetune '
                    '--train-perc 1 --epochs 20 --lr-backbone 0.002 --lr-classifier 0.5 --weight-decay 0 '
                    '--checkpoint-dir ./checkpoint/semisup/')


def test_official_evaluate_command_lines_run_unchanged():
    ev = linear_args(evaluate_imagenet.translate(OFFICIAL_LINEAR.split()[2:]))
    assert (ev.dataset, ev.data_root, ev.model_path) == ('imagenet', '/path/to/imagenet/',
                                                         '/path/to/checkpoint/resnet50.pth')
    assert (ev.weights, ev.train_percent, ev.lr_classifier, ev.lr_backbone) == ('freeze', 100, 0.1, 0.0)
    assert (ev.epochs, ev.batch_size, ev.weight_decay) == (100, 256, 1e-6)  # the official defaults
    assert (ev.results_dir, ev.run_name) == ('checkpoint', 'lincls')  # official default ./checkpoint/lincls/
    ev = linear_args(evaluate_imagenet.translate(OFFICIAL_SEMISUP.split()[2:]))
    assert (ev.weights, ev.train_percent, ev.epochs) == ('finetune', 1, 20)
    assert (ev.lr_backbone, ev.lr_classifier, ev.weight_decay) == (0.002, 0.5, 0.0)
    assert (ev.results_dir, ev.run_name) == ('checkpoint', 'semisup')  # the run folder is --checkpoint-dir itself
    ev = linear_args(evaluate_imagenet.translate(['/d', '/w.pth', '--checkpoint-dir=/ckpt/a/b', '--train-percent',
                                                  '10']))
    assert (ev.results_dir, ev.run_name, ev.train_percent) == ('/ckpt/a', 'b', 10)
    with pytest.raises(SystemExit):  # abbreviations other than the README's stay rejected
        linear_args(evaluate_imagenet.translate(['/d', '/w.pth', '--train-pe', '1']))


def test_mixup_weight_warm_up_is_linear_over_epochs():
    from mixbt.methods import BarlowTwins, Progress
    method = BarlowTwins(M.Model(8, 'resnet18', False), 0.005, mixup_loss_scale=0.5, mixup_warmup_epochs=10)
    assert method.mixup_scale(Progress(0, 300, 0, 100)) == 0
    assert method.mixup_scale(Progress(2, 300, 250, 100)) == pytest.approx(0.5 * 2.5 / 10)
    assert method.mixup_scale(Progress(12, 300, 1200, 100)) == 0.5


def test_slurm_variables_map_onto_torchrun_ones(monkeypatch):
    for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.setenv(k, 'x')  # recorded, so that teardown removes what the mapping writes
        monkeypatch.delenv(k)
    monkeypatch.setenv('SLURM_NTASKS', '16')
    monkeypatch.setenv('SLURM_PROCID', '9')
    monkeypatch.setenv('SLURM_LOCALID', '1')
    monkeypatch.setenv('SLURM_JOB_ID', '4242')
    monkeypatch.setenv('SLURM_JOB_NODELIST', 'gpu[07-08]')
    monkeypatch.setenv('PATH', '/nonexistent')  # no scontrol: parse the node list ourselves
    D._slurm_to_torchrun_env()
    assert (os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['LOCAL_RANK']) == ('9', '16', '1')
    assert os.environ['MASTER_ADDR'] == 'gpu07' and os.environ['MASTER_PORT'] == str(29500 + 4242)


@pytest.mark.slow
def test_imagenet_pretraining_two_processes_exports_resnet50_and_auto_resumes(tmp_path, imagenet, repo_root):
    results = tmp_path / 'ckpt'
    args = [str(imagenet), '--batch-size', '4', '--projector', '32-32-32', '--image_size', '32', '--workers', '0',
            '--checkpoint-dir', str(results), '--run_name', 'in1k', '--lambda_mixup', '1.0', '--save_every', '0',
            '--ref_world_size', '2']  # the reference loss's groups: batch 4 forms 2, not the default 8
    proc = torchrun('main_imagenet.py', args + ['--epochs', '2'], repo_root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = results / 'in1k'
    state = torch.load(run / 'last.pth')
    assert state['epoch'] == 2 and state['args']['optimizer'] == 'lars' and state['args']['sync_bn']
    assert [g['base_lr'] for g in state['optimizer']['param_groups']] == [0.2 * 4 / 256, 0.0048 * 4 / 256]
    rows = list(csv.DictReader(open(run / 'in1k_0.0051_32_4_imagenet_statistics.csv')))
    assert len(rows) == 2 and float(rows[0]['loss_mix']) < float(rows[1]['loss_mix'])  # warm-up from 0
    # the export is a plain torchvision ResNet-50 state dict without fc: the released format
    backbone = torchvision.models.resnet50()
    backbone.fc = torch.nn.Identity()
    exported = torch.load(run / 'resnet50.pth')
    backbone.load_state_dict(exported, strict=True)
    assert torch.equal(exported['layer4.2.bn3.weight'], state['model']['backbone.layer4.2.bn3.weight'])
    # the same command with more epochs finds its own state and continues (no new folder)
    proc = torchrun('main_imagenet.py', args + ['--epochs', '3'], repo_root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f'Resumed {run}' in proc.stdout and os.listdir(results) == ['in1k']
    assert torch.load(run / 'last.pth')['epoch'] == 3


def torchvision_backbone_file(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet50()
    path = tmp_path / 'resnet50.pth'
    torch.save({k: v for k, v in tv.state_dict().items() if not k.startswith('fc.')}, path)
    return str(path), tv


def test_imagenet_linear_keeps_backbone_frozen(tmp_path, imagenet, monkeypatch):
    import linear
    path, tv = torchvision_backbone_file(tmp_path)
    seen = []
    real = C.load_backbone
    monkeypatch.setattr(linear, 'load_backbone', lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    result = linear.main(['--dataset', 'imagenet', '--data_root', str(imagenet), '--model_path', path, '--epochs', '1',
                          '--batch-size', '4', '--image_size', '64', '--workers', '0', '--results_dir', str(tmp_path / 'r')])
    assert 0 <= result['final_acc@1'] <= 100
    for k, v in seen[0][0].state_dict().items():
        assert torch.equal(v, tv.state_dict()[k]), k


@pytest.mark.slow
def test_imagenet_semi_supervised_finetuning_two_processes(tmp_path, imagenet, repo_root):
    path, tv = torchvision_backbone_file(tmp_path)
    subset = tmp_path / '1percent.txt'
    subset.write_text(''.join(f'{c}_{i}.JPEG\n' for c in CLASSES for i in range(2)))  # SimCLR list format
    out = tmp_path / 'semi'
    proc = torchrun('evaluate_imagenet.py', [str(imagenet), path, '--weights', 'finetune', '--train-perc', '1',
                                             '--train-files', str(subset), '--epochs', '1', '--lr-backbone', '0.005',
                                             '--lr-classifier', '0.5', '--weight-decay', '0', '--batch-size', '4',
                                             '--image_size', '64', '--workers', '0', '--checkpoint-dir', str(out)],
                    repo_root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = torch.load(out / 'checkpoint.pth')  # --checkpoint-dir is the run folder
    assert state['epoch'] == 1 and state['backbone'] is not None
    assert not torch.equal(state['backbone']['conv1.weight'], tv.conv1.weight)  # fine-tuned
    assert [g['initial_lr'] for g in state['optimizer']['param_groups']] == [0.5, 0.005]  # classifier, backbone


@pytest.mark.slow
def test_evaluation_restarted_with_the_same_checkpoint_dir_continues_exactly(tmp_path, imagenet, monkeypatch):
    """The official evaluate.py behaviour: the same command again continues from
    --checkpoint-dir; 1 epoch + kill + restart equals 2 epochs straight (backbone and BN too)."""
    import linear
    from test_eval import kill_in_second_epoch
    path, _ = torchvision_backbone_file(tmp_path)
    subset = tmp_path / '1percent.txt'
    subset.write_text(''.join(f'{c}_{i}.JPEG\n' for c in CLASSES for i in range(3)))

    def command(folder):
        return evaluate_imagenet.translate([str(imagenet), path, '--weights', 'finetune', '--train-perc', '1',
                                            '--train-files', str(subset), '--epochs', '2', '--lr-backbone', '0.005',
                                            '--lr-classifier', '0.5', '--weight-decay', '0', '--batch-size', '4',
                                            '--image_size', '64', '--workers', '0', '--checkpoint-dir', str(folder)])
    linear.main(command(tmp_path / 'straight'))
    restore = kill_in_second_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        linear.main(command(tmp_path / 'restarted'))
    restore()
    assert torch.load(tmp_path / 'restarted' / 'checkpoint.pth')['epoch'] == 1
    linear.main(command(tmp_path / 'restarted'))
    a = torch.load(tmp_path / 'straight' / 'checkpoint.pth')
    b = torch.load(tmp_path / 'restarted' / 'checkpoint.pth')
    assert a['epoch'] == b['epoch'] == 2 and [r['epoch'] for r in b['history']] == [1, 2]
    for part in ('fc', 'backbone'):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    # the folder holds this fine-tuning run: a linear evaluation there is refused, not mixed in
    with pytest.raises(C.CheckpointError, match='holds another run'):
        linear.main(evaluate_imagenet.translate([str(imagenet), path, '--image_size', '64', '--workers', '0',
                                                 '--checkpoint-dir', str(tmp_path / 'restarted')]))


def test_missing_subset_list_is_a_clear_error(tmp_path, imagenet):
    import linear
    path, _ = torchvision_backbone_file(tmp_path)
    with pytest.raises(FileNotFoundError, match='no such file'):
        linear.main(['--dataset', 'imagenet', '--data_root', str(imagenet), '--model_path', path, '--weights',
                     'finetune', '--train-percent', '10', '--train-files', str(tmp_path / 'absent.txt'),
                     '--workers', '0'])


def test_every_name_of_the_subset_list_is_checked_up_front(tmp_path, imagenet):
    import linear
    path, _ = torchvision_backbone_file(tmp_path)
    names = [f'{c}_{i}.JPEG' for c in CLASSES for i in range(4)] + ['n01440764_99.JPEG', 'n09999999_1.JPEG']
    subset = tmp_path / '10percent.txt'
    subset.write_text('\n'.join(names) + '\n')  # the absent files come after the first 5 names
    with pytest.raises(FileNotFoundError, match=r'2 of the 14 files .* n01440764_99.JPEG, n09999999_1.JPEG'):
        linear.main(['--dataset', 'imagenet', '--data_root', str(imagenet), '--model_path', path, '--weights',
                     'finetune', '--train-percent', '10', '--train-files', str(subset), '--workers', '0'])


def test_subset_list_is_read_by_rank_zero_only(monkeypatch):
    import argparse
    import linear
    reads = []
    monkeypatch.setattr(linear, 'read_subset_list', lambda source, percent: reads.append(source) or ['a_1.JPEG'])
    monkeypatch.setattr(D, 'is_main', lambda: False)
    monkeypatch.setattr(D, 'broadcast_object', lambda obj: (['n01_1.JPEG'], None))  # what rank 0 sends
    args = argparse.Namespace(train_files=None, train_percent=1)
    assert linear.subset_list(args) == ['n01_1.JPEG'] and reads == []
    monkeypatch.setattr(D, 'broadcast_object', lambda obj: (None, 'could not download the 1% subset list'))
    with pytest.raises(FileNotFoundError, match='could not download'):  # rank 0's error reaches every rank
        linear.subset_list(args)


def test_subset_list_without_a_subset_is_an_error():
    with pytest.raises(MixBTError, match='--train-files'):
        linear_args(['--dataset', 'imagenet', '--model_path', 'w.pth', '--train-files', 'x.txt'])
    with pytest.raises(MixBTError, match='--train-percent'):
        linear_args(['--dataset', 'cifar10', '--model_path', 'w.pth', '--train-percent', '1'])
