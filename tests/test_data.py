"""Each loader reads small files written in the data set's official format."""
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from mixbt import augment
from mixbt import data
from mixbt import readers
import fakedata
from mixbt.errors import MixBTError


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_cifar_reads_official_python_pickles(tmp_path, name):
    written = fakedata.write_cifar(str(tmp_path), name)
    for split in ('train', 'test'):
        d = data.load(name, str(tmp_path), split)
        flat, labels = written[split]
        assert d.images.shape == (len(labels), 32, 32, 3) and d.images.dtype == np.uint8
        np.testing.assert_array_equal(d.images.transpose(0, 3, 1, 2).reshape(len(labels), -1), flat)
        np.testing.assert_array_equal(d.labels, labels)
    assert len(d.classes) == (10 if name == 'cifar10' else 100)


def test_stl10_reads_official_binaries_and_eval_geometry(tmp_path):
    written = fakedata.write_stl10(str(tmp_path))
    train = data.load('stl10', str(tmp_path), 'train')
    np.testing.assert_array_equal(train.images, written['train'][0])
    np.testing.assert_array_equal(train.labels, written['train'][1])  # 1-based on disk
    both = data.load('stl10', str(tmp_path), 'train+unlabeled')
    assert len(both) == 50 and (both.labels[20:] == -1).all()
    test = data.load('stl10', str(tmp_path), 'test')
    evald = augment.eval_images('stl10', test)
    assert evald.shape == (10, 64, 64, 3)
    pil = augment.eval_geometry('stl10')(Image.fromarray(test.images[3]))
    np.testing.assert_array_equal(evald[3], np.asarray(pil))


def test_tiny_imagenet_reads_zip_layout_with_val_annotations(tmp_path):
    wnids, val_labels = fakedata.write_tiny_imagenet(str(tmp_path))
    train = data.load('tiny_imagenet', str(tmp_path), 'train')
    assert train.images.shape == (12, 64, 64, 3) and train.classes == wnids
    assert train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    val = data.load('tiny_imagenet', str(tmp_path), 'val')
    assert val.labels.tolist() == [sorted(wnids).index(fakedata_w) for fakedata_w in
                                   [('n01443537', 'n01629819', 'n01641577')[c] for c in val_labels]]
    img = np.asarray(Image.open(tmp_path / 'tiny-imagenet-200' / 'val' / 'images' / 'val_2.JPEG').convert('RGB'))
    np.testing.assert_array_equal(val.images[2], img)


def test_tiny_imagenet_also_reads_val_sorted_into_class_folders(tmp_path):
    wnids, _ = fakedata.write_tiny_imagenet(str(tmp_path))
    base = tmp_path / 'tiny-imagenet-200' / 'val'
    for line in (base / 'val_annotations.txt').read_text().splitlines():
        fn, w = line.split('\t')[:2]
        (base / w).mkdir(exist_ok=True)
        os.rename(base / 'images' / fn, base / w / fn)
    os.remove(base / 'val_annotations.txt')
    val = data.load('tiny_imagenet', str(tmp_path), 'val')
    assert len(val) == 6 and set(val.labels.tolist()) == {0, 1, 2}


@pytest.mark.parametrize('gz', [True, False])
def test_fashion_mnist_reads_idx_files_gz_or_raw(tmp_path, gz):
    written = fakedata.write_mnist_like(str(tmp_path / 'FashionMNIST' / 'raw'), gz=gz)
    d = data.load('fashionmnist', str(tmp_path), 'train')
    assert d.images.shape == (40, 32, 32, 3)
    assert (d.images[..., 0] == d.images[..., 2]).all()  # grey replicated to 3 channels
    np.testing.assert_array_equal(d.labels, written['train'][1])
    resized = torch.nn.functional.interpolate(torch.from_numpy(written['train'][0][:1]).float()[None], size=(32, 32),
                                              mode='bilinear', align_corners=False).round()
    np.testing.assert_array_equal(d.images[0, ..., 0], resized[0, 0].numpy().astype(np.uint8))


def test_fashion_mnist_system_package_is_found(tmp_path):
    if not os.path.isfile(os.path.join(readers.FASHION_MNIST_SYSTEM_DIR, 't10k-labels-idx1-ubyte.gz')):
        pytest.skip('Debian package dataset-fashion-mnist is not installed')
    d = data.load('fashionmnist', str(tmp_path / 'empty'), 'test')
    assert d.images.shape == (10000, 32, 32, 3) and np.bincount(d.labels).tolist() == [1000] * 10


def test_imagenet_image_folder(tmp_path):
    fakedata.write_image_folder(str(tmp_path / 'train'))
    ds = readers.image_folder('imagenet', str(tmp_path), 'train')
    assert len(ds) == 6 and ds.classes == ['n01', 'n02']


@pytest.mark.parametrize('name,needle', [('cifar10', 'cifar-10-batches-py'), ('cifar100', 'cifar-100-python'),
                                         ('stl10', 'stl10_binary'), ('tiny_imagenet', 'val_annotations.txt')])
def test_missing_data_set_names_path_and_layout(tmp_path, name, needle):
    with pytest.raises(readers.DatasetNotFound) as e:
        data.load(name, str(tmp_path / 'nowhere'), 'train')
    assert str(tmp_path / 'nowhere') in str(e.value) and needle in str(e.value) and '--download' in str(e.value)


def test_missing_imagenet_names_path(tmp_path):
    with pytest.raises(readers.DatasetNotFound, match='ImageFolder layout'):
        readers.image_folder('imagenet', str(tmp_path), 'train')


def test_unknown_data_set_is_a_clear_error(tmp_path):
    with pytest.raises(MixBTError, match='unknown data set'):
        data.load('mnist10', str(tmp_path), 'train')


@pytest.mark.parametrize('name,needle', [('cifar10', 'cifar-10-batches-py'), ('stl10', 'stl10_binary'),
                                         ('tiny_imagenet', 'tiny-imagenet-200'), ('fashionmnist', 'FashionMNIST')])
def test_download_without_network_is_a_clear_error(tmp_path, monkeypatch, name, needle):
    import urllib.error
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')
    for module in (tv_utils, torchvision.datasets.cifar, torchvision.datasets.stl10, torchvision.datasets.mnist):
        for fn in ('download_and_extract_archive', 'download_url'):
            if hasattr(module, fn):
                monkeypatch.setattr(module, fn, offline)
    monkeypatch.setattr(readers, 'FASHION_MNIST_SYSTEM_DIR', str(tmp_path / 'no-debian-package'))
    with pytest.raises(readers.DatasetNotFound) as e:
        data.load(name, str(tmp_path), 'train', download=True)
    message = str(e.value)
    assert '--download failed (' in message and needle in message and str(tmp_path) in message
