"""Each transfer reader reads small files written in the data set's official layout."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import data
import fakedata
import transfer_data
from transfer_data import TRANSFER, load_transfer


def rgb(path):
    with Image.open(path) as img:
        return np.asarray(img.convert('RGB'))


def assert_rgb_images(ds, paths):
    for i, path in enumerate(paths):
        img, label = ds[i]
        assert isinstance(img, Image.Image) and img.mode == 'RGB' and isinstance(label, int)
        np.testing.assert_array_equal(np.asarray(img), rgb(path))


def test_registry_has_the_reference_class_counts_and_statistics():
    assert {name: spec.num_classes for name, spec in TRANSFER.items()} == {
        'dtd': 47, 'mnist': 10, 'fashionmnist': 10, 'cu_birds': 200, 'vgg_flower': 102,
        'traffic_sign': 43, 'aircraft': 100}  # aircraft: 100 variants, not the reference's 102
    assert TRANSFER['dtd'].mean == (0.533, 0.474, 0.426) and TRANSFER['dtd'].std == (0.261, 0.250, 0.259)
    assert TRANSFER['mnist'].mean == (0.170,) * 3 and TRANSFER['fashionmnist'].std == (0.347,) * 3
    assert TRANSFER['aircraft'].mean == (0.486, 0.507, 0.525) and TRANSFER['traffic_sign'].std == (0.267, 0.249, 0.251)
    assert all(len(s.mean) == 3 and len(s.std) == 3 and s.layout and s.url for s in TRANSFER.values())


def test_unknown_name_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match='aircraft.*vgg_flower'):
        load_transfer('cifar100', str(tmp_path))


def test_dtd_trains_on_train_plus_val_of_partition_1(tmp_path):
    written = fakedata.write_dtd(str(tmp_path))
    images = tmp_path / 'dtd' / 'dtd' / 'images'
    train, test = load_transfer('dtd', str(tmp_path), True), load_transfer('dtd', str(tmp_path), False)
    assert train.classes == test.classes == ['banded', 'blotchy', 'braided']
    assert train.labels == [c for _, c in written['train'] + written['val']]
    assert test.labels == [c for _, c in written['test']]
    assert_rgb_images(train, [images / rel for rel, _ in written['train'] + written['val']])
    assert_rgb_images(test, [images / rel for rel, _ in written['test']])


def test_dtd_classes_do_not_depend_on_which_classes_a_split_lists(tmp_path):
    fakedata.write_dtd(str(tmp_path))
    labels = tmp_path / 'dtd' / 'dtd' / 'labels' / 'test1.txt'
    labels.write_text(''.join(l + '\n' for l in labels.read_text().split() if l.startswith('braided')))
    test = load_transfer('dtd', str(tmp_path), False)
    assert test.labels == [2, 2] and len(test.classes) == 3


@pytest.mark.parametrize('gz', [True, False])
def test_mnist_reads_idx_files_as_rgb(tmp_path, gz):
    written = fakedata.write_mnist_like(str(tmp_path / 'MNIST' / 'raw'), n_train=12, n_test=6, gz=gz)
    for train, prefix in ((True, 'train'), (False, 't10k')):
        ds = load_transfer('mnist', str(tmp_path), train)
        images, labels = written[prefix]
        assert len(ds) == len(labels) and ds.labels == labels.tolist() and len(ds.classes) == 10
        img, label = ds[3]
        assert img.mode == 'RGB' and img.size == (28, 28) and label == labels[3]
        np.testing.assert_array_equal(np.asarray(img), np.repeat(images[3][..., None], 3, axis=2))


def test_fashionmnist_reads_its_own_files_not_mnist(tmp_path):
    fakedata.write_mnist_like(str(tmp_path / 'MNIST' / 'raw'), n_train=12, n_test=6, seed=1)
    written = fakedata.write_mnist_like(str(tmp_path / 'FashionMNIST' / 'raw'), n_train=10, n_test=5, seed=2)
    ds = load_transfer('fashionmnist', str(tmp_path), False)
    assert len(ds) == 5 and ds.labels == written['t10k'][1].tolist() and ds.classes == data.FASHION_CLASSES
    np.testing.assert_array_equal(np.asarray(ds[4][0])[..., 1], written['t10k'][0][4])


@pytest.mark.parametrize('folder', ['', 'cu_birds'])
def test_cu_birds_uses_the_official_train_test_split(tmp_path, folder):
    written = fakedata.write_cub(str(tmp_path / folder))
    for train, split in ((True, 'train'), (False, 'test')):
        ds = load_transfer('cu_birds', str(tmp_path), train)
        assert ds.labels == [c for _, c in written[split]]
        assert ds.classes == ['001.Bird_0', '002.Bird_1', '003.Bird_2']
        assert_rgb_images(ds, [p for p, _ in written[split]])  # the first training image is grey on disk
    assert len(load_transfer('cu_birds', str(tmp_path), True)) == 6


def test_vgg_flower_trains_on_train_plus_val(tmp_path):
    written = fakedata.write_flowers102(str(tmp_path))
    jpg = tmp_path / 'flowers-102' / 'jpg'
    train, test = load_transfer('vgg_flower', str(tmp_path), True), load_transfer('vgg_flower', str(tmp_path), False)
    assert train.labels == [c for _, c in written['train'] + written['val']] and 101 in train.labels
    assert test.labels == [c for _, c in written['test']]
    assert len(train.classes) == len(test.classes) == 102
    assert_rgb_images(train, [jpg / f'image_{i:05d}.jpg' for i, _ in written['train'] + written['val']])
    assert_rgb_images(test, [jpg / f'image_{i:05d}.jpg' for i, _ in written['test']])


def test_traffic_sign_labels_are_the_gtsrb_class_ids(tmp_path):
    # Only classes 0, 3 and 42 are written: the label must be the ClassId, not the folder's rank.
    written = fakedata.write_gtsrb(str(tmp_path))
    base = tmp_path / 'gtsrb' / 'GTSRB'
    train = load_transfer('traffic_sign', str(tmp_path), True)
    test = load_transfer('traffic_sign', str(tmp_path), False)
    assert train.labels == [c for _, c in written['train']] == [0, 0, 3, 3, 42, 42]
    assert test.labels == [c for _, c in written['test']] == [42, 0, 3, 3]
    assert len(train.classes) == 43
    assert_rgb_images(train, [base / 'Training' / f'{c:05d}' / fn for fn, c in written['train']])
    assert_rgb_images(test, [base / 'Final_Test' / 'Images' / fn for fn, _ in written['test']])


def test_aircraft_images_are_cropped_to_their_box(tmp_path):
    written = fakedata.write_aircraft(str(tmp_path))
    images = tmp_path / 'fgvc-aircraft-2013b' / 'data' / 'images'
    for train, split in ((True, 'trainval'), (False, 'test')):
        ds = load_transfer('aircraft', str(tmp_path), train)
        assert ds.classes == ['A300B4', 'F/A-18', '707-320', 'Cessna 172']
        assert ds.labels == [c for _, c, _ in written[split]]
        for i, (image_id, _, (x0, y0, x1, y1)) in enumerate(written[split]):
            img = ds[i][0]
            assert img.mode == 'RGB' and img.size == (x1 - x0 + 1, y1 - y0 + 1)  # inclusive, 1-based corners
            np.testing.assert_array_equal(np.asarray(img), rgb(images / f'{image_id}.jpg')[y0 - 1:y1, x0 - 1:x1])


def test_transform_is_applied_and_datasets_pickle_for_workers(tmp_path):
    fakedata.write_gtsrb(str(tmp_path))
    fakedata.write_mnist_like(str(tmp_path / 'MNIST' / 'raw'), n_train=4, n_test=4)
    for name, size in (('traffic_sign', [18, 18]), ('mnist', [28, 28])):
        ds = load_transfer(name, str(tmp_path), True, transform=lambda img: torch.tensor(img.size))
        assert isinstance(ds[0][0], torch.Tensor) and ds[0][0].tolist() == size
        assert len(pickle.loads(pickle.dumps(load_transfer(name, str(tmp_path), True)))) == len(ds)


@pytest.mark.parametrize('name', sorted(TRANSFER))
@pytest.mark.parametrize('train', [True, False])
def test_missing_data_set_says_where_it_looked_and_what_it_wants(tmp_path, monkeypatch, name, train):
    # The Debian package of Fashion-MNIST may be installed here: hide it.
    monkeypatch.setattr(data, 'FASHION_MNIST_SYSTEM_DIR', str(tmp_path / 'no-system-package'))
    root = tmp_path / 'empty'
    with pytest.raises(data.DatasetNotFound) as e:
        load_transfer(name, str(root), train)
    message = str(e.value)
    assert str(root) in message and TRANSFER[name].layout in message and TRANSFER[name].url in message


@pytest.mark.parametrize('name, remove', [
    ('dtd', 'dtd/dtd/images/blotchy'),
    ('dtd', 'dtd/dtd/labels/test1.txt'),
    ('traffic_sign', 'gtsrb/GT-final_test.csv'),
    ('aircraft', 'fgvc-aircraft-2013b/data/images_box.txt'),
    ('aircraft', 'fgvc-aircraft-2013b/data/images_variant_test.txt'),
    ('cu_birds', 'CUB_200_2011/train_test_split.txt'),
    ('vgg_flower', 'flowers-102/setid.mat'),
])
def test_partly_missing_data_set_is_not_found(tmp_path, name, remove):
    {'dtd': fakedata.write_dtd, 'traffic_sign': fakedata.write_gtsrb, 'aircraft': fakedata.write_aircraft,
     'cu_birds': fakedata.write_cub, 'vgg_flower': fakedata.write_flowers102}[name](str(tmp_path))
    path = tmp_path / remove
    if path.is_dir():
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    else:
        path.unlink()
    with pytest.raises(data.DatasetNotFound, match=name):
        load_transfer(name, str(tmp_path), False)


def test_aircraft_box_file_is_one_based_inclusive(tmp_path):
    path = tmp_path / 'images_box.txt'
    path.write_text('1025794 1 1 10 20\n0056978 116 149 914 432\n')
    assert transfer_data.aircraft_boxes(str(path)) == {'1025794': (0, 0, 10, 20), '0056978': (115, 148, 914, 432)}
