"""--dataset folder through the entry scripts, on Fashion-MNIST images written as PNG files: a labelled
folder is pretrained (kNN monitor on its held-out split), probed, evaluated and visualised; an
unlabelled one is pretrained without monitors, and the tools that need labels refuse it in one line."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from mixbt import data as datasets
from mixbt import readers
from mixbt.errors import MixBTError

TINY = ['--arch', 'resnet18', '--feature_dim', '16', '--batch_size', '16', '--epochs', '1', '--workers', '0',
        '--gpu', '-1', '--image_size', '16', '--visuals', 'false', '--knn_every', '1', '--save_every', '0']


def write_folder(root, per_class=8, classes=4, labelled=True):
    images = readers.read_idx(os.path.join(readers.FASHION_MNIST_SYSTEM_DIR, 't10k-images-idx3-ubyte.gz'))
    labels = readers.read_idx(os.path.join(readers.FASHION_MNIST_SYSTEM_DIR, 't10k-labels-idx1-ubyte.gz'))
    for c in range(classes):
        folder = os.path.join(root, f'class{c}' if labelled else '')
        os.makedirs(folder, exist_ok=True)
        for i in np.flatnonzero(labels == c)[:per_class]:
            Image.fromarray(images[i]).save(os.path.join(folder, f'{c}_{i}.png'))
    return str(root)


@pytest.mark.slow
def test_labelled_folder_pretrains_probes_evaluates_and_visualises(tmp_path, capsys):
    import evaluate
    import main
    import visualize
    root = write_folder(tmp_path / 'images')
    run = main.main(['--dataset', 'folder', '--data_root', root, '--results_dir', str(tmp_path / 'runs')] + TINY)
    out = capsys.readouterr().out
    assert 'folder: ' in out and '28 training images in 4 classes, test split: 10% of each class held out (4' in out
    assert 'kNN top1' in out
    saved = json.load(open(os.path.join(run, 'args.json')))
    assert (saved['dataset'], saved['image_size']) == ('folder', 16)
    argv = [run, '--data_root', root, '--results_dir', str(tmp_path / 'eval'), '--epochs', '1', '--batch_size', '16',
            '--workers', '0', '--gpu', '-1', '--no_aug', '--transfer_datasets']
    result = evaluate.main(argv)
    assert set(result['results']) == {'knn', 'linear'} and result['results']['knn']['test_images'] == 4
    # one more image in the folder: its results are not reused for the new contents
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(os.path.join(root, 'class0', 'added.png'))
    datasets._FOLDER_ROW.clear()  # as a new command: the folder is read again
    capsys.readouterr()
    evaluate.main(argv)
    out = capsys.readouterr().out
    assert 'knn folder: computed afresh' in out and 'linear folder: computed afresh' in out
    assert 'folder_identity' in out
    (model,) = [f for f in os.listdir(run) if f.endswith('_folder_model.pth')]
    paths = visualize.main([os.path.join(run, model), '--data_root', root, '--gpu', '-1', '--workers', '0',
                            '--projection', 'pca', '--out_dir', str(tmp_path / 'vis')])
    assert all(os.path.isfile(p) for p in paths)


@pytest.mark.slow
def test_unlabelled_folder_pretrains_with_the_label_free_monitors_and_the_probe_refuses_it(tmp_path, capsys):
    import linear
    import main
    root = write_folder(tmp_path / 'images', labelled=False)
    run = main.main(['--dataset', 'folder', '--data_root', root, '--results_dir', str(tmp_path / 'runs')] + TINY)
    out = capsys.readouterr().out
    assert '32 unlabelled images' in out and 'kNN top1' not in out
    assert 'the label-free monitors run on 32 training images' in out
    import csv
    (stats,) = [f for f in os.listdir(run) if f.endswith('_statistics.csv')]
    last = list(csv.DictReader(open(os.path.join(run, stats))))[-1]
    assert float(last['erank_features']) > 0 and float(last['offdiag_mass']) > 0 and not last['knn_top1']
    (model,) = [f for f in os.listdir(run) if f.endswith('_folder_model.pth')]
    with pytest.raises(MixBTError, match='linear.py needs labelled images'):
        linear.main(['--model_path', os.path.join(run, model), '--data_root', root, '--gpu', '-1',
                     '--results_dir', str(tmp_path / 'lin')])


@pytest.mark.slow
def test_a_folder_with_one_class_stops_before_any_run_folder_is_made(tmp_path):
    import main
    root = write_folder(tmp_path / 'images', classes=1)
    with pytest.raises(MixBTError, match='at least 2 classes'):
        main.main(['--dataset', 'folder', '--data_root', root, '--results_dir', str(tmp_path / 'runs')] + TINY)
    assert not os.path.exists(tmp_path / 'runs') or not os.listdir(tmp_path / 'runs')


def test_a_96_px_folder_model_has_the_imagenet_stem_and_its_checkpoint_names_the_size(tmp_path):
    """Wiring of the stem: 96 px and up build the torchvision 7x7 stride-2 stem in the small-data Model;
    the checkpoint loads back at that size and is refused, naming --image_size, at a size of another stem."""
    import torch
    from argparse import Namespace
    from mixbt.checkpoints import CheckpointError, load_backbone
    from model import build_model
    args = Namespace(dataset='folder', image_size=96, feature_dim=16, arch='resnet18', projector=None)
    datasets.spec_of(args, read_folder=False)
    model = build_model(args)
    assert model.f[0].kernel_size == (7, 7) and model.f[0].stride == (2, 2)
    path = str(tmp_path / 'x_0.005_16_16_folder_model.pth')
    torch.save(model.state_dict(), path)
    backbone = load_backbone(path, 'folder')[0].eval()
    assert backbone(torch.zeros(1, 3, 96, 96)).flatten(1).shape == (1, 512)
    datasets.spec_of(Namespace(dataset='folder', image_size=64), read_folder=False)
    with pytest.raises(CheckpointError, match='imagenet stem.*--dataset folder at --image_size 64'):
        load_backbone(path, 'folder')


def test_aug_gpu_is_refused_for_a_folder_the_device_views_cannot_make(tmp_path):
    """96 px and up: the ImageNet views blur and solarise, which the device views do not (refused
    before the folder is read); a streamed folder: its images are not in memory (refused once it is
    read, before any run folder is made)."""
    import main
    from mixbt.config import get_args
    with pytest.raises(MixBTError, match='--aug gpu has no blur or solarisation.*--image_size 96.*--aug cpu'):
        get_args(['--dataset', 'folder', '--data_root', str(tmp_path / 'absent'), '--image_size', '96',
                  '--aug', 'gpu'])
    root = write_folder(tmp_path / 'images', per_class=2, classes=2)
    argv = ['--dataset', 'folder', '--data_root', root, '--results_dir', str(tmp_path / 'runs'), '--aug', 'gpu']
    with pytest.raises(MixBTError, match='--aug gpu needs the images in memory.*streamed.*--aug cpu'):
        main.main(argv + ['--max_memory_gb', '0'] + TINY)
    assert not os.path.exists(tmp_path / 'runs') or not os.listdir(tmp_path / 'runs')


def test_the_aug_default_is_gpu_only_for_a_folder_held_in_memory_without_blur(tmp_path, monkeypatch):
    import torch
    from mixbt import config
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    root = write_folder(tmp_path / 'images', per_class=2, classes=2)

    def aug(size, max_memory_gb):
        args = config.get_args(['--dataset', 'folder', '--data_root', root, '--image_size', str(size),
                                '--max_memory_gb', str(max_memory_gb)])
        assert args.aug is None  # streamed or not is known once the folder is read (main.main)
        config.resolve_aug(args, datasets.spec_of(args))
        return args.aug
    assert (aug(32, 4), aug(64, 4), aug(32, 0), aug(96, 4)) == ('gpu', 'gpu', 'cpu', 'cpu')
    assert config.get_args(['--dataset', 'cifar10']).aug == 'gpu'


def test_the_printed_configuration_of_a_folder_run_holds_its_folder_settings():
    from mixbt.config import applicable_settings, get_args
    folder = applicable_settings(get_args(['--dataset', 'folder', '--image_size', '64']))
    assert (folder['image_size'], folder['folder_labels'], folder['max_memory_gb']) == (64, 'auto', 4.0)
    assert not {'image_size', 'folder_labels', 'max_memory_gb'} & set(applicable_settings(get_args([])))


def test_the_device_views_make_a_folder_held_in_memory(tmp_path):
    """--aug gpu (the CUDA default for such a folder): DeviceViews takes the folder's resolved row."""
    import torch
    from mixbt import config
    from mixbt.gpu_augment import DeviceViews
    from mixbt.train_data import load_data
    root = write_folder(tmp_path / 'images', per_class=4, classes=2)
    args = config.get_args(['--dataset', 'folder', '--data_root', root, '--image_size', '32', '--aug', 'gpu',
                            '--batch_size', '4', '--workers', '0'])
    train, _, _ = load_data(args)
    views = DeviceViews(args, train, 2, torch.device('cpu'))
    first = next(iter(views.epoch(0)))
    assert len(first) == 2 and first[0].shape[1:] == (3, 32, 32)
