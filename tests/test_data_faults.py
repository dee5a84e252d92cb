"""A damaged data file is named in one line (data set, file, expected vs found, the fix), never a
numpy or pickle traceback; unreadable images can be skipped and are counted."""
import os
import pickle

import numpy as np
import pytest
import torch

from mixbt import data
from mixbt import formats
from mixbt import readers
import fakedata
from mixbt.errors import MixBTError


def one_line_error(excinfo, *needles):
    message = str(excinfo.value)
    assert isinstance(excinfo.value, MixBTError) and '\n' not in message, message
    for needle in needles:
        assert needle in message, f'{needle!r} not in: {message}'
    return message


# ---------------------------------------------------------------- CIFAR
@pytest.mark.parametrize('name,folder,file', [('cifar10', 'cifar-10-batches-py', 'data_batch_3'),
                                              ('cifar100', 'cifar-100-python', 'train')])
def test_truncated_cifar_pickle_names_data_set_file_and_fix(tmp_path, name, folder, file):
    fakedata.write_cifar(str(tmp_path), name)
    path = str(tmp_path / folder / file)
    fakedata.truncate(path, 1000)
    with pytest.raises(formats.CorruptData) as e:
        data.load(name, str(tmp_path), 'train')
    one_line_error(e, f'{name}: {path} is truncated or corrupt', '--download', folder)
    data.load(name, str(tmp_path), 'test')  # the other split's files are fine


def rewrite_pickle(path, **changes):
    with open(path, 'rb') as f:
        entry = pickle.load(f, encoding='latin1')
    entry.update(changes)
    with open(path, 'wb') as f:
        pickle.dump(entry, f, protocol=2)
    return entry


def test_cifar_rows_must_be_3072_bytes_per_image(tmp_path):
    fakedata.write_cifar(str(tmp_path), 'cifar10')
    path = str(tmp_path / 'cifar-10-batches-py' / 'test_batch')
    with open(path, 'rb') as f:
        rows = pickle.load(f, encoding='latin1')['data']
    rewrite_pickle(path, data=rows.reshape(-1)[:len(rows) * 3000].reshape(len(rows), 3000))
    with pytest.raises(formats.CorruptData) as e:
        data.load('cifar10', str(tmp_path), 'test')
    one_line_error(e, path, '3072 bytes', '(20, 3000)')


def test_cifar_label_count_must_equal_image_count(tmp_path):
    fakedata.write_cifar(str(tmp_path), 'cifar100')
    path = str(tmp_path / 'cifar-100-python' / 'test')
    entry = rewrite_pickle(path)
    rewrite_pickle(path, fine_labels=entry['fine_labels'][:-1])
    with pytest.raises(formats.CorruptData) as e:
        data.load('cifar100', str(tmp_path), 'test')
    one_line_error(e, path, '20 images but 19 labels')


# ---------------------------------------------------------------- STL-10
def test_short_stl10_binary_gives_sizes_not_a_reshape_error(tmp_path):
    fakedata.write_stl10(str(tmp_path))
    path = str(tmp_path / 'stl10_binary' / 'train_X.bin')
    fakedata.truncate(path, 1000)
    with pytest.raises(formats.CorruptData) as e:
        data.load('stl10', str(tmp_path), 'train')
    one_line_error(e, f'stl10: {path}', f'{20 * 27648 - 1000} bytes', 'multiple of 27648', 'found 19 images and',
                   '--download')


def test_stl10_binary_missing_whole_images_disagrees_with_label_file(tmp_path):
    fakedata.write_stl10(str(tmp_path))
    fakedata.truncate(str(tmp_path / 'stl10_binary' / 'test_X.bin'), 2 * 27648)
    with pytest.raises(formats.CorruptData) as e:
        data.load('stl10', str(tmp_path), 'test')
    one_line_error(e, 'test_y.bin', '10 labels', '(8 images)')


def test_short_unlabeled_binary_is_named_for_the_ssl_split(tmp_path):
    fakedata.write_stl10(str(tmp_path))
    path = str(tmp_path / 'stl10_binary' / 'unlabeled_X.bin')
    fakedata.truncate(path, 5)
    with pytest.raises(formats.CorruptData) as e:
        data.load('stl10', str(tmp_path), 'train+unlabeled')
    one_line_error(e, path)
    assert len(data.load('stl10', str(tmp_path), 'train')) == 20


# ---------------------------------------------------------------- Fashion-MNIST idx
def test_short_idx_file_gives_header_size_against_payload(tmp_path):
    fakedata.write_mnist_like(str(tmp_path / 'FashionMNIST' / 'raw'), gz=False)
    path = str(tmp_path / 'FashionMNIST' / 'raw' / 'train-images-idx3-ubyte')
    fakedata.truncate(path, 1000)
    with pytest.raises(formats.CorruptData) as e:
        data.load('fashionmnist', str(tmp_path), 'train')
    one_line_error(e, f'fashionmnist: {path}', '40x28x28 = 31360 bytes', f'found {31360 - 1000}', '--download')


def test_truncated_gzip_idx_file_is_named(tmp_path):
    fakedata.write_mnist_like(str(tmp_path / 'FashionMNIST' / 'raw'), gz=True)
    path = str(tmp_path / 'FashionMNIST' / 'raw' / 't10k-images-idx3-ubyte.gz')
    fakedata.truncate(path, 200)
    with pytest.raises(formats.CorruptData) as e:
        data.load('fashionmnist', str(tmp_path), 'test')
    one_line_error(e, path, 'cannot decompress it (EOFError')


def test_file_that_is_not_gzip_under_a_gz_name_is_named(tmp_path):
    fakedata.write_mnist_like(str(tmp_path / 'FashionMNIST' / 'raw'), gz=True)
    path = str(tmp_path / 'FashionMNIST' / 'raw' / 'train-labels-idx1-ubyte.gz')
    with open(path, 'wb') as f:
        f.write(b'<html>404</html>')
    with pytest.raises(formats.CorruptData) as e:
        data.load('fashionmnist', str(tmp_path), 'train')
    one_line_error(e, path, 'BadGzipFile')


def test_idx_label_count_must_equal_image_count(tmp_path):
    folder = tmp_path / 'FashionMNIST' / 'raw'
    written = fakedata.write_mnist_like(str(folder), gz=False)
    fakedata.write_idx(str(folder / 't10k-labels-idx1-ubyte'), written['t10k'][1][:-3])
    with pytest.raises(formats.CorruptData) as e:
        data.load('fashionmnist', str(tmp_path), 'test')
    one_line_error(e, 'fashionmnist: ' + str(folder / 't10k-labels-idx1-ubyte'), '(17,) labels', '(20)')


# ---------------------------------------------------------------- Tiny-ImageNet (decoded into memory)
def damage_tiny_imagenet(root):
    """Train images: one junk file, one cut-off JPEG, one of the wrong size (3 of 12)."""
    from PIL import Image
    train = os.path.join(root, 'tiny-imagenet-200', 'train')
    junk = os.path.join(train, 'n01443537', 'images', 'n01443537_1.JPEG')
    cut = os.path.join(train, 'n01629819', 'images', 'n01629819_2.JPEG')
    small = os.path.join(train, 'n01641577', 'images', 'n01641577_3.JPEG')
    fakedata.write_junk_image(junk)
    fakedata.truncate(cut, os.path.getsize(cut) // 2)
    Image.new('RGB', (32, 32)).save(small)
    return junk, cut, small


@pytest.mark.parametrize('workers', [0, 2])
def test_unreadable_tiny_imagenet_image_is_named_with_the_count(tmp_path, workers):
    fakedata.write_tiny_imagenet(str(tmp_path))
    junk, _, _ = damage_tiny_imagenet(str(tmp_path))
    with pytest.raises(formats.BadImage) as e:
        data.load('tiny_imagenet', str(tmp_path), 'train', workers=workers)
    one_line_error(e, 'tiny_imagenet train: 3 of the 12 images', f'first {junk} (UnidentifiedImageError',
                   '--skip_bad_images')


@pytest.mark.parametrize('workers', [0, 2])
def test_skip_bad_leaves_out_tiny_imagenet_images_and_reports_how_many(tmp_path, capsys, workers):
    fakedata.write_tiny_imagenet(str(tmp_path))
    junk, cut, small = damage_tiny_imagenet(str(tmp_path))
    complete = data.load('tiny_imagenet', str(tmp_path), 'val')
    d = data.load('tiny_imagenet', str(tmp_path), 'train', workers=workers, skip_bad=True)
    assert d.images.shape == (9, 64, 64, 3) and d.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert 'tiny_imagenet train: 3 of the 12 images cannot be read' in capsys.readouterr().out
    paths, _, _ = readers.tiny_imagenet_files(str(tmp_path), 'train')
    kept = [p for p in paths if p not in (junk, cut, small)]
    from PIL import Image
    np.testing.assert_array_equal(d.images[4], np.asarray(Image.open(kept[4]).convert('RGB')))
    assert len(complete) == 6


# ---------------------------------------------------------------- ImageNet (ImageFolder, decoded by workers)
def image_folder_with_junk(root):
    fakedata.write_image_folder(os.path.join(root, 'train'), per_class=4, size=24)
    bad = [os.path.join(root, 'train', 'n01', 'n01_1.JPEG'), os.path.join(root, 'train', 'n02', 'n02_3.JPEG')]
    fakedata.write_junk_image(bad[0])
    fakedata.truncate(bad[1], os.path.getsize(bad[1]) // 2)
    return bad


def to_tensor(img):
    return torch.from_numpy(np.asarray(img).copy())


def test_unreadable_imagenet_image_in_a_worker_is_one_line_naming_the_file(tmp_path):
    junk, _ = image_folder_with_junk(str(tmp_path))
    ds = readers.image_folder('imagenet', str(tmp_path), 'train', to_tensor)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, [1]), num_workers=1)
    with pytest.raises(formats.BadImage) as e:
        list(loader)
    one_line_error(e, f'imagenet: cannot read image {junk}', 'UnidentifiedImageError', '--skip_bad_images')


# spawn (macOS's default; forkserver pickles the same way) starts a fresh interpreter per worker: slow.
@pytest.mark.parametrize('context', ['fork', pytest.param('spawn', marks=pytest.mark.slow)])
def test_skip_bad_replaces_imagenet_images_and_counts_them_across_workers(tmp_path, context):
    bad = image_folder_with_junk(str(tmp_path))
    ds = readers.image_folder('imagenet', str(tmp_path), 'train', to_tensor, skip_bad=True)
    for epoch in range(2 if context == 'fork' else 1):
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(len(ds))), batch_size=2,
                                             num_workers=2, multiprocessing_context=context)
        images, labels = zip(*loader)
        # n01_1 -> n01_2; n02_3, the last file, wraps around to n01_0: each substitute keeps its own label
        assert torch.cat(labels).tolist() == [0, 0, 0, 0, 1, 1, 1, 0]
        images = torch.cat(images)
        assert torch.equal(images[1], images[2]) and torch.equal(images[7], images[0])
        count, first = formats.take_skipped_images(loader.dataset)
        assert count == 2 and first in bad
        assert formats.take_skipped_images(loader.dataset) == (0, None)  # read and reset


def test_skip_bad_counts_skips_in_the_main_process_too(tmp_path):
    image_folder_with_junk(str(tmp_path))
    ds = readers.image_folder('imagenet', str(tmp_path), 'train', skip_bad=True)
    assert [ds[i][1] for i in range(len(ds))] == [0, 0, 0, 0, 1, 1, 1, 0]
    assert formats.take_skipped_images(ds)[0] == 2
    assert formats.take_skipped_images(torch.utils.data.TensorDataset(torch.zeros(1))) == (0, None)


def test_imagenet_folder_of_only_unreadable_images_is_an_error(tmp_path):
    fakedata.write_image_folder(str(tmp_path / 'train'), classes=('n01',), per_class=2)
    for fn in os.listdir(tmp_path / 'train' / 'n01'):
        fakedata.write_junk_image(str(tmp_path / 'train' / 'n01' / fn))
    ds = readers.image_folder('imagenet', str(tmp_path), 'train', skip_bad=True)
    with pytest.raises(formats.BadImage) as e:
        ds[0]
    one_line_error(e, 'none of the 2 images')
