"""Each transfer reader reads small files written in the data set's official layout."""
import glob
import os
import pickle
from collections import defaultdict

import numpy as np
import pytest
import torch
from PIL import Image

from mixbt import readers
import fake_transfer
import fakedata
from mixbt import transfer_readers
from mixbt.errors import MixBTError
from mixbt.transfer_data import TRANSFER
from mixbt.transfer_readers import load_transfer


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
        'traffic_sign': 43, 'gtsrb': 43, 'aircraft': 100}  # aircraft: 100 variants, not the reference's 102
    assert TRANSFER['dtd'].mean == (0.533, 0.474, 0.426) and TRANSFER['dtd'].std == (0.261, 0.250, 0.259)
    assert TRANSFER['mnist'].mean == (0.170,) * 3 and TRANSFER['fashionmnist'].std == (0.347,) * 3
    assert TRANSFER['aircraft'].mean == (0.486, 0.507, 0.525) and TRANSFER['traffic_sign'].std == (0.267, 0.249, 0.251)
    assert all(len(s.mean) == 3 and len(s.std) == 3 and s.layout and s.url for s in TRANSFER.values())


def test_unknown_name_or_flowers_split_lists_the_choices(tmp_path):
    with pytest.raises(MixBTError, match='aircraft.*vgg_flower'):
        load_transfer('cifar100', str(tmp_path))
    with pytest.raises(MixBTError, match="'reference', 'official'"):
        load_transfer('vgg_flower', str(tmp_path), flowers_split='setid')


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
    assert len(ds) == 5 and ds.labels == written['t10k'][1].tolist() and ds.classes == readers.FASHION_CLASSES
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


def original_vgg_flower(folder, train):
    """The original's Flowers-102 split (mix-bt transfer_datasets/vgg_flower.py), restated with our jpg/ folder."""
    from scipy.io import loadmat
    rs = np.random.RandomState(42)
    labels = loadmat(os.path.join(folder, 'imagelabels.mat'))['labels'][0]
    by_label = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(os.path.join(folder, 'jpg', 'image_{:05d}.jpg'.format(i + 1)))
    files, targets = [], []
    for label, paths in by_label.items():
        num = len(paths)
        indexer = np.arange(num)
        rs.shuffle(indexer)
        paths = np.array(paths)[indexer].tolist()
        paths = paths[:int(0.8 * num)] if train else paths[int(0.8 * num):]
        files += paths
        targets += [int(label) - 1] * len(paths)
    return files, targets


def test_vgg_flower_default_split_is_the_originals_seeded_split(tmp_path):
    # Classes of 1 to 13 images, first seen in an order that is not sorted, ids interleaved.
    counts = {40: 1, 3: 2, 102: 5, 77: 7, 1: 11, 15: 13}
    labels = [c for c, n in counts.items() for _ in range(n)]
    labels = [labels[i] for i in np.random.default_rng(3).permutation(len(labels))]
    fakedata.write_flowers102(str(tmp_path), labels=tuple(labels))
    first_seen = list(dict.fromkeys(labels))
    assert first_seen != sorted(first_seen)
    folder = str(tmp_path / 'flowers-102')
    for train in (True, False):
        ds = load_transfer('vgg_flower', str(tmp_path), train)
        files, targets = original_vgg_flower(folder, train)
        assert ds.paths == files and ds.labels == targets
        assert list(dict.fromkeys(ds.labels)) == [c - 1 for c in first_seen if counts[c] >= (2 if train else 1)]
        assert_rgb_images(ds, files[:3])
    train, test = (load_transfer('vgg_flower', str(tmp_path), t) for t in (True, False))
    assert sorted(train.paths + test.paths) == sorted(glob.glob(os.path.join(folder, 'jpg', '*.jpg')))
    assert len(train) == sum(int(0.8 * n) for n in counts.values()) and len(train.classes) == 102


def test_vgg_flower_official_split_trains_on_train_plus_val(tmp_path):
    written = fakedata.write_flowers102(str(tmp_path))
    (tmp_path / 'flowers-102' / 'setid.mat').rename(tmp_path / 'setid.mat')
    load_transfer('vgg_flower', str(tmp_path), True)  # the default split needs no setid.mat
    (tmp_path / 'setid.mat').rename(tmp_path / 'flowers-102' / 'setid.mat')
    jpg = tmp_path / 'flowers-102' / 'jpg'
    train, test = (load_transfer('vgg_flower', str(tmp_path), t, flowers_split='official') for t in (True, False))
    assert train.labels == [c for _, c in written['train'] + written['val']] and 101 in train.labels
    assert test.labels == [c for _, c in written['test']]
    assert len(train.classes) == len(test.classes) == 102
    assert_rgb_images(train, [jpg / f'image_{i:05d}.jpg' for i, _ in written['train'] + written['val']])
    assert_rgb_images(test, [jpg / f'image_{i:05d}.jpg' for i, _ in written['test']])
    # other data sets ignore the flowers split, so one flag can serve a loop over all of them
    fakedata.write_dtd(str(tmp_path))
    assert len(load_transfer('dtd', str(tmp_path), False, flowers_split='official')) == 6


def original_traffic_sign(folder, train):
    """The original's GTSDB split (mix-bt transfer_datasets/traffic_sign.py), restated with the
    files of each class sorted instead of in glob order."""
    rs = np.random.RandomState(42)
    files, targets = [], []
    for class_i in range(43):
        paths = np.array(sorted(glob.glob(os.path.join(folder, '{:02d}'.format(class_i), '*.ppm'))))
        num = len(paths)
        indexer = np.arange(num)
        rs.shuffle(indexer)
        paths = paths[indexer].tolist()
        paths = paths[:int(0.8 * num)] if train else paths[int(0.8 * num):]
        files += paths
        targets += [class_i] * len(paths)
    return files, targets


def test_traffic_sign_is_gtsdb_with_the_originals_seeded_split(tmp_path):
    written = fake_transfer.write_gtsdb(str(tmp_path))
    folder = str(tmp_path / 'FullIJCNN2013')
    for train in (True, False):
        ds = load_transfer('traffic_sign', str(tmp_path), train)
        files, targets = original_traffic_sign(folder, train)
        assert ds.paths == files and ds.labels == targets and ds.classes == [f'{c:02d}' for c in range(43)]
        assert_rgb_images(ds, files)
    train, test = (load_transfer('traffic_sign', str(tmp_path), t) for t in (True, False))
    assert sorted(train.paths + test.paths) == sorted(p for paths in written.values() for p in paths)
    assert set(train.labels) == {0, 7, 12, 42} and set(test.labels) == {0, 1, 7, 12, 42}  # 1 image: test only


def test_traffic_sign_split_does_not_depend_on_the_file_systems_listing_order(tmp_path, monkeypatch):
    fake_transfer.write_gtsdb(str(tmp_path))
    expected = load_transfer('traffic_sign', str(tmp_path), True).paths
    listing = glob.glob
    monkeypatch.setattr(glob, 'glob', lambda pattern, **kw: list(reversed(listing(pattern, **kw))))
    assert load_transfer('traffic_sign', str(tmp_path), True).paths == expected


def test_gtsrb_labels_are_the_class_ids(tmp_path):
    # Only classes 0, 3 and 42 are written: the label must be the ClassId, not the folder's rank.
    written = fakedata.write_gtsrb(str(tmp_path))
    base = tmp_path / 'gtsrb' / 'GTSRB'
    train = load_transfer('gtsrb', str(tmp_path), True)
    test = load_transfer('gtsrb', str(tmp_path), False)
    assert train.labels == [c for _, c in written['train']] == [0, 0, 3, 3, 42, 42]
    assert test.labels == [c for _, c in written['test']] == [42, 0, 3, 3]
    assert len(train.classes) == 43
    assert_rgb_images(train, [base / 'Training' / f'{c:05d}' / fn for fn, c in written['train']])
    assert_rgb_images(test, [base / 'Final_Test' / 'Images' / fn for fn, _ in written['test']])


def test_aircraft_images_are_cropped_to_their_box_values_as_they_are(tmp_path):
    written = fakedata.write_aircraft(str(tmp_path))
    images = tmp_path / 'fgvc-aircraft-2013b' / 'data' / 'images'
    for train, split in ((True, 'trainval'), (False, 'test')):
        ds = load_transfer('aircraft', str(tmp_path), train)
        assert ds.classes == ['707-320', 'A300B4', 'Cessna 172', 'F/A-18']  # sorted, as the original's
        order = ['A300B4', 'F/A-18', '707-320', 'Cessna 172']  # variants.txt, fakedata's class index c
        assert ds.labels == [ds.classes.index(order[c]) for _, c, _ in written[split]]
        for i, (image_id, _, (x0, y0, x1, y1)) in enumerate(written[split]):
            img = ds[i][0]
            # the original's image.crop(box), not the official README's 1-based inclusive corners
            assert img.mode == 'RGB' and img.size == (x1 - x0, y1 - y0)
            np.testing.assert_array_equal(np.asarray(img), rgb(images / f'{image_id}.jpg')[y0:y1, x0:x1])


def test_aircraft_labels_are_the_originals_sorted_variants_of_the_split(tmp_path):
    """The original's Aircraft: variants = sorted(set(variants listed in the split)), label = index."""
    fakedata.write_aircraft(str(tmp_path))
    base = tmp_path / 'fgvc-aircraft-2013b' / 'data'
    for train, split in ((True, 'trainval'), (False, 'test')):
        listed = dict(line.split(' ', 1) for line in (base / f'images_variant_{split}.txt').read_text().splitlines())
        variants = sorted(set(listed.values()))
        ds = load_transfer('aircraft', str(tmp_path), train)
        assert ds.classes == variants
        expected = {str(base / 'images' / f'{i}.jpg'): variants.index(v) for i, v in listed.items()}
        assert dict(zip(ds.paths, ds.labels)) == expected


def test_transform_is_applied_and_datasets_pickle_for_workers(tmp_path):
    fake_transfer.write_gtsdb(str(tmp_path))
    fakedata.write_mnist_like(str(tmp_path / 'MNIST' / 'raw'), n_train=4, n_test=4)
    for name, size in (('traffic_sign', [18, 18]), ('mnist', [28, 28])):
        ds = load_transfer(name, str(tmp_path), True, transform=lambda img: torch.tensor(img.size))
        assert isinstance(ds[0][0], torch.Tensor) and ds[0][0].tolist() == size
        assert len(pickle.loads(pickle.dumps(load_transfer(name, str(tmp_path), True)))) == len(ds)


@pytest.mark.parametrize('name', sorted(TRANSFER))
@pytest.mark.parametrize('train', [True, False])
def test_missing_data_set_says_where_it_looked_and_what_it_wants(tmp_path, monkeypatch, name, train):
    # The Debian package of Fashion-MNIST may be installed here: hide it.
    monkeypatch.setattr(readers, 'FASHION_MNIST_SYSTEM_DIR', str(tmp_path / 'no-system-package'))
    root = tmp_path / 'empty'
    with pytest.raises(readers.DatasetNotFound) as e:
        load_transfer(name, str(root), train)
    message = str(e.value)
    assert str(root) in message and TRANSFER[name].layout in message and TRANSFER[name].url in message
    assert isinstance(e.value, MixBTError) and '\n' not in message


@pytest.mark.parametrize('name, remove', [
    ('dtd', 'dtd/dtd/images/blotchy'),
    ('dtd', 'dtd/dtd/labels/test1.txt'),
    ('gtsrb', 'gtsrb/GT-final_test.csv'),
    ('aircraft', 'fgvc-aircraft-2013b/data/images_box.txt'),
    ('aircraft', 'fgvc-aircraft-2013b/data/images_variant_test.txt'),
    ('cu_birds', 'CUB_200_2011/train_test_split.txt'),
    ('vgg_flower', 'flowers-102/imagelabels.mat'),
    ('vgg_flower_official', 'flowers-102/setid.mat'),
])
def test_partly_missing_data_set_is_not_found(tmp_path, name, remove):
    WRITERS[name](str(tmp_path))
    path = tmp_path / remove
    if path.is_dir():
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    else:
        path.unlink()
    with pytest.raises(readers.DatasetNotFound, match=name.split('_official')[0]):
        load(name, tmp_path, False)


WRITERS = {'dtd': fakedata.write_dtd, 'gtsrb': fakedata.write_gtsrb, 'aircraft': fakedata.write_aircraft,
           'cu_birds': fakedata.write_cub, 'vgg_flower': fakedata.write_flowers102,
           'vgg_flower_official': fakedata.write_flowers102, 'traffic_sign': fake_transfer.write_gtsdb}


def load(name, root, train):
    """load_transfer, where 'vgg_flower_official' stands for vgg_flower's official split."""
    if name == 'vgg_flower_official':
        return load_transfer('vgg_flower', str(root), train, flowers_split='official')
    return load_transfer(name, str(root), train)


def test_aircraft_box_file_values_are_kept_as_they_are(tmp_path):
    path = tmp_path / 'images_box.txt'
    path.write_text('1025794 1 1 10 20\n\n0056978 116 149 914 432\n')
    assert transfer_readers.aircraft_boxes(str(path)) == {'1025794': (1, (1, 1, 10, 20)),
                                                       '0056978': (3, (116, 149, 914, 432))}


# Each listed image goes missing in the middle of a split: the error names it and where it is listed.
@pytest.mark.parametrize('name, train, listing', [
    ('dtd', True, 'dtd/dtd/labels/val1.txt'),
    ('dtd', False, 'dtd/dtd/labels/test1.txt'),
    ('cu_birds', True, 'CUB_200_2011/images.txt'),
    ('vgg_flower', True, 'flowers-102/imagelabels.mat'),
    ('vgg_flower_official', False, 'flowers-102/imagelabels.mat'),
    ('gtsrb', False, 'gtsrb/GT-final_test.csv'),
    ('aircraft', True, 'fgvc-aircraft-2013b/data/images_variant_trainval.txt'),
    ('aircraft', False, 'fgvc-aircraft-2013b/data/images_variant_test.txt'),
])
def test_every_listed_image_is_checked_before_the_data_set_is_made(tmp_path, name, train, listing):
    WRITERS[name](str(tmp_path))
    paths = load(name, tmp_path, train).paths
    gone = paths[len(paths) // 2]
    if listing.endswith('val1.txt'):  # the second of the two split files that dtd's training set joins
        gone = paths[-2]
    assert gone not in (paths[0], paths[-1])
    os.remove(gone)
    with pytest.raises(readers.DatasetNotFound) as e:
        load(name, tmp_path, train)
    message = str(e.value)
    assert f'missing image {gone} (listed in {tmp_path / listing}' in message and '\n' not in message
    stem = os.path.splitext(os.path.basename(gone))[0]
    if listing.endswith('.mat'):
        assert f'imagelabels.mat as image {int(stem[-5:])})' in message
    else:
        lines = (tmp_path / listing).read_text().splitlines()
        assert f'{listing} line {next(n for n, l in enumerate(lines, 1) if stem in l)})' in message


@pytest.mark.parametrize('keep', [0, 100, 128, 150])
@pytest.mark.parametrize('mat, split', [('imagelabels.mat', 'reference'), ('setid.mat', 'official')])
def test_cut_flowers_mat_file_is_a_clear_error(tmp_path, keep, mat, split):
    # scipy fails in different ways on a cut file: MatReadError, IndexError, a missing variable, OSError.
    fakedata.write_flowers102(str(tmp_path))
    path = tmp_path / 'flowers-102' / mat
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(MixBTError) as e:
        load_transfer('vgg_flower', str(tmp_path), True, flowers_split=split)
    assert str(e.value).startswith(f'{path}: ') and 'unpack it again' in str(e.value) and '\n' not in str(e.value)


def test_gtsrb_test_csv_with_another_delimiter_is_a_clear_error(tmp_path):
    fakedata.write_gtsrb(str(tmp_path))
    table = tmp_path / 'gtsrb' / 'GT-final_test.csv'
    table.write_text(table.read_text().replace(';', ','))
    with pytest.raises(MixBTError, match=f'^{table}, line 1: the header lacks the columns Filename and ClassId'):
        load_transfer('gtsrb', str(tmp_path), False)


def test_aircraft_image_without_a_box_is_a_clear_error(tmp_path):
    written = fakedata.write_aircraft(str(tmp_path))
    base = tmp_path / 'fgvc-aircraft-2013b' / 'data'
    image_id = written['test'][1][0]
    boxes = base / 'images_box.txt'
    boxes.write_text(''.join(l for l in open(boxes) if not l.startswith(image_id)))
    with pytest.raises(MixBTError) as e:
        load_transfer('aircraft', str(tmp_path), False)
    assert str(e.value).startswith(f'{boxes}: no line for image {image_id}, which '
                                   f'{base / "images_variant_test.txt"} lists on line 2;')


def test_cu_birds_image_without_a_label_is_a_clear_error(tmp_path):
    fakedata.write_cub(str(tmp_path))
    labels = tmp_path / 'CUB_200_2011' / 'image_class_labels.txt'
    labels.write_text(''.join(l for l in open(labels) if not l.startswith('2 ')))
    with pytest.raises(MixBTError) as e:
        load_transfer('cu_birds', str(tmp_path), True)
    assert str(e.value).startswith(f'{labels}: no line for image 2, which images.txt lists on line 2;')
