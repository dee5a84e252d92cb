"""Where each pretraining data set's files are (SOURCES) and the readers of their official on-disk
formats (docs/protocol.md section 3).

CIFAR-10/100 python pickles, STL-10 binaries, Tiny-ImageNet folders and Fashion-MNIST idx files
are read into memory as uint8 (N, H, W, 3) plus int64 labels (ArrayData); ImageNet stays a lazy
image folder (image_folder). A missing data set raises DatasetNotFound naming the path, the
layout expected (SOURCES) and where to get it; a damaged file raises formats.CorruptData naming
the file. The registry rows of data.py name these readers and sources.
"""
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
import torchvision

from mixbt import formats
from mixbt.errors import MixBTError
from mixbt.formats import CheckedImageFolder, _one_line, decode_images, find_idx


@dataclass(frozen=True)
class Source:
    """Where a data set's files are: what --data_root must contain (layout, for error messages)
    and where to get them (url)."""
    layout: str
    url: str


SOURCES = {
    'cifar10': Source(
        layout='cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (CIFAR-10 python version)',
        url='https://www.cs.toronto.edu/~kriz/cifar.html'),
    'cifar100': Source(
        layout='cifar-100-python/{train, test, meta} (CIFAR-100 python version)',
        url='https://www.cs.toronto.edu/~kriz/cifar.html'),
    'stl10': Source(
        layout='stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin}',
        url='https://cs.stanford.edu/~acoates/stl10/'),
    'tiny_imagenet': Source(
        layout='tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, '
               'val/val_annotations.txt} (the official zip, unpacked)',
        url='http://cs231n.stanford.edu/tiny-imagenet-200.zip'),
    'fashionmnist': Source(
        layout='FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] '
               '(or apt-get install dataset-fashion-mnist)',
        url='https://github.com/zalandoresearch/fashion-mnist'),
    'imagenet': Source(
        layout='{train,val}/<wnid>/*.JPEG (ImageFolder layout; --data_root is the ImageNet folder itself)',
        url='https://www.image-net.org'),
}


# The Debian package dataset-fashion-mnist installs the raw idx.gz files here.
FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'


class DatasetNotFound(MixBTError, FileNotFoundError):
    """A data set's files are not under --data_root (not_found: the path, the layout, where to get it)."""


def not_found(name, root, detail='', source=None):
    """DatasetNotFound naming the layout expected and where to get it (`source`: the data set's
    Source, by default SOURCES[name])."""
    source = source or SOURCES[name]
    msg = (f'{name} not found under {os.path.abspath(root)}{": " + detail if detail else ""}. '
           f'Expected layout: {os.path.join(root, source.layout)}. '
           f'Get it from {source.url}, pass --download where torchvision can fetch it, '
           f'or point --data_root at the folder that holds it.')
    return DatasetNotFound(msg)


def corrupt(name, path, problem, fix='delete it and fetch it again (--download)'):
    """formats.corrupt with the data set's expected layout."""
    return formats.corrupt(name, path, problem, fix, SOURCES[name].layout if name in SOURCES else '')


def fetch_or_explain(name, root, fetch):
    """Run torchvision's downloader `fetch()`; a failure (no network, a moved URL, a bad checksum)
    becomes DatasetNotFound with what to do by hand."""
    try:
        fetch()
    except Exception as e:
        raise not_found(name, root, f'--download failed ({type(e).__name__}: {e})') from None


@dataclass
class ArrayData:
    """An in-memory image data set: uint8 images (N, H, W, 3) and int64 labels (-1: unlabeled)."""
    images: np.ndarray
    labels: np.ndarray
    classes: list

    def __len__(self):
        return len(self.images)


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100
CIFAR_IMAGE_BYTES = 3 * 32 * 32
CIFAR_CLASSES = {'cifar10': 10, 'cifar100': 100}


def _read_pickle(name, path):
    try:
        with open(path, 'rb') as f:
            return pickle.load(f, encoding='latin1')  # the official files are Python 2 pickles
    except Exception as e:  # a cut-off or foreign pickle fails in many ways; all of them mean this file
        raise corrupt(name, path, f'cannot unpickle it ({type(e).__name__}: {_one_line(e)})') from None


def _existence_check(cls):
    """torchvision's parser with a presence check instead of the MD5 of every file (md5=None),
    so that tests can write small files in the official format and large sets start at once."""
    return type(cls.__name__, (cls,), {
        'train_list': [[f, None] for f, _ in cls.train_list],
        'test_list': [[f, None] for f, _ in cls.test_list],
        'meta': {**cls.meta, 'md5': None}})


def load_cifar(name, root, split, download=False):
    cls = _existence_check(torchvision.datasets.CIFAR10 if name == 'cifar10' else torchvision.datasets.CIFAR100)
    if download:
        fetch_or_explain(name, root, lambda: cls(root, train=True, download=True))
    # torchvision's parser (same files, keys and pixel order), with every file checked so that a
    # truncated pickle or a short array names its file instead of failing inside numpy or pickle.
    folder = os.path.join(root, cls.base_folder)
    paths = [os.path.join(folder, f) for f, _ in (cls.train_list if split == 'train' else cls.test_list)]
    meta_path = os.path.join(folder, cls.meta['filename'])
    for path in paths + [meta_path]:
        if not os.path.isfile(path):
            raise not_found(name, root, f'no file {path}')
    num_classes, key = CIFAR_CLASSES[name], 'labels' if name == 'cifar10' else 'fine_labels'
    images, labels = [], []
    for path in paths:
        entry = _read_pickle(name, path)
        if not isinstance(entry, dict) or 'data' not in entry or key not in entry:
            raise corrupt(name, path, f"expected a dict with 'data' and {key!r}, found "
                                      f"{sorted(entry) if isinstance(entry, dict) else type(entry).__name__}")
        x, y = np.asarray(entry['data']), np.asarray(entry[key])
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != CIFAR_IMAGE_BYTES:
            raise corrupt(name, path, f'expected uint8 rows of {CIFAR_IMAGE_BYTES} bytes (3x32x32) per image, '
                                      f'found a {x.dtype} array of shape {x.shape}')
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise corrupt(name, path, f'{len(x)} images but {y.size} labels')
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise corrupt(name, path, f'labels must be 0..{num_classes - 1}, found {y.min()}..{y.max()}')
        images.append(x)
        labels.append(y.astype(np.int64))
    meta = _read_pickle(name, meta_path)
    classes = meta.get(cls.meta['key']) if isinstance(meta, dict) else None
    if classes is None or len(classes) != num_classes:
        raise corrupt(name, meta_path, f"expected {num_classes} class names under {cls.meta['key']!r}, found "
                                       f"{'none' if classes is None else len(classes)}")
    images = np.concatenate(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows of R, G, B planes -> NHWC
    return ArrayData(np.ascontiguousarray(images), np.concatenate(labels), list(classes))


# ---------------------------------------------------------------- STL-10
STL10_IMAGE_BYTES = 3 * 96 * 96
STL10_FILES = {'train': [('train_X.bin', 'train_y.bin')], 'test': [('test_X.bin', 'test_y.bin')],
               'unlabeled': [('unlabeled_X.bin', None)],
               'train+unlabeled': [('train_X.bin', 'train_y.bin'), ('unlabeled_X.bin', None)]}


class _STL10(torchvision.datasets.STL10):
    def _check_integrity(self):
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, f))
                   for pair in STL10_FILES[self.split] for f in pair if f)


def check_stl10_sizes(root, split):
    """The sizes of the binaries, before torchvision reshapes them: each X file a non-empty whole
    number of 3x96x96-byte images, each y file one label byte (1..10) per image."""
    folder = os.path.join(root, 'stl10_binary')
    for x_file, y_file in STL10_FILES.get(split, []):  # an unknown split: torchvision names the choices
        x_path = os.path.join(folder, x_file)
        if not os.path.isfile(x_path):
            continue  # missing: torchvision's check turns it into DatasetNotFound
        size = os.path.getsize(x_path)
        if size == 0 or size % STL10_IMAGE_BYTES:
            raise corrupt('stl10', x_path, f'{size} bytes, expected a non-zero multiple of {STL10_IMAGE_BYTES} '
                                           f'(3x96x96 bytes per image), found {size // STL10_IMAGE_BYTES} images '
                                           f'and {size % STL10_IMAGE_BYTES} bytes over')
        y_path = y_file and os.path.join(folder, y_file)
        if y_path and os.path.isfile(y_path):
            y = np.fromfile(y_path, dtype=np.uint8)
            if len(y) != size // STL10_IMAGE_BYTES:
                raise corrupt('stl10', y_path, f'{len(y)} labels (1 byte each), expected one per image of '
                                               f'{x_path} ({size // STL10_IMAGE_BYTES} images)')
            if len(y) and (y.min() < 1 or y.max() > 10):
                raise corrupt('stl10', y_path, f'labels must be 1..10, found {y.min()}..{y.max()}')


def load_stl10(root, split, download=False):
    if download:
        fetch_or_explain('stl10', root, lambda: torchvision.datasets.STL10(root, split='train', download=True))
    check_stl10_sizes(root, split)
    try:
        ds = _STL10(root, split=split, download=False)
    except RuntimeError as e:
        raise not_found('stl10', root) from e
    classes = list(getattr(ds, 'classes', None) or
                   ['airplane', 'bird', 'car', 'cat', 'deer', 'dog', 'horse', 'monkey', 'ship', 'truck'])
    images = np.ascontiguousarray(ds.data.transpose(0, 2, 3, 1))  # (N, 3, 96, 96) -> NHWC
    return ArrayData(images, np.asarray(ds.labels, dtype=np.int64), classes)


# ---------------------------------------------------------------- Tiny-ImageNet
def tiny_imagenet_files(root, split):
    """(paths, labels, wnids) of the official zip layout, read directly.

    train/<wnid>/images/*.JPEG; val/images/*.JPEG labelled by val/val_annotations.txt.
    A val/ already sorted into class folders (the reference's preprocessing) works too."""
    base = os.path.join(root, 'tiny-imagenet-200')
    if not os.path.isdir(os.path.join(base, 'train')):
        raise not_found('tiny_imagenet', root, f'no folder {os.path.join(base, "train")}')
    wnids_file = os.path.join(base, 'wnids.txt')
    if os.path.isfile(wnids_file):
        with open(wnids_file) as f:
            wnids = sorted(line.strip() for line in f if line.strip())
    else:
        wnids = sorted(d for d in os.listdir(os.path.join(base, 'train')) if not d.startswith('.'))
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    if split == 'train':
        for w in wnids:
            folder = os.path.join(base, 'train', w, 'images')
            if not os.path.isdir(folder):
                folder = os.path.join(base, 'train', w)
            for fn in sorted(os.listdir(folder)):
                if fn.lower().endswith(('.jpeg', '.jpg', '.png')):
                    paths.append(os.path.join(folder, fn))
                    labels.append(index[w])
    elif split == 'val':
        annotations = os.path.join(base, 'val', 'val_annotations.txt')
        if os.path.isfile(annotations):
            with open(annotations) as f:
                for line in f:
                    parts = line.split('\t')
                    if len(parts) >= 2:
                        paths.append(os.path.join(base, 'val', 'images', parts[0]))
                        labels.append(index[parts[1].strip()])
        elif all(os.path.isdir(os.path.join(base, 'val', w)) for w in wnids):
            for w in wnids:
                folder = os.path.join(base, 'val', w)
                folder = os.path.join(folder, 'images') if os.path.isdir(os.path.join(folder, 'images')) else folder
                for fn in sorted(os.listdir(folder)):
                    paths.append(os.path.join(folder, fn))
                    labels.append(index[w])
        else:
            raise not_found('tiny_imagenet', root, f'no {annotations}')
    else:
        raise MixBTError(f'tiny_imagenet has no split {split!r}')
    if not paths:
        raise not_found('tiny_imagenet', root, f'no images in the {split} split')
    missing = [p for p in paths[:1] + paths[-1:] if not os.path.isfile(p)]
    if missing:
        raise not_found('tiny_imagenet', root, f'missing image {missing[0]}')
    return paths, np.asarray(labels, dtype=np.int64), wnids


TINY_IMAGENET_SHAPE = (64, 64, 3)  # every official image, the grey ones once converted to RGB


def load_tiny_imagenet(root, split, workers=0, skip_bad=False):
    paths, labels, wnids = tiny_imagenet_files(root, split)
    images, kept = decode_images(paths, workers, TINY_IMAGENET_SHAPE, skip_bad, f'tiny_imagenet {split}')
    return ArrayData(images, labels[kept], wnids)


# ---------------------------------------------------------------- Fashion-MNIST
def read_idx(path, name='idx'):
    """formats.read_idx, with the fix that fits where the file lives."""
    return formats.read_idx(path, name, _idx_fix(path))


def _idx_fix(path):
    if path.startswith(FASHION_MNIST_SYSTEM_DIR):
        return 'reinstall it (apt-get install --reinstall dataset-fashion-mnist)'
    return 'delete it and fetch it again (--download)'


FASHION_CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                   'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot']


def fashion_mnist_folders(root):
    # Not `root` itself: MNIST uses the very same file names.
    return [os.path.join(root, 'FashionMNIST', 'raw'), os.path.join(root, 'fashion-mnist'), FASHION_MNIST_SYSTEM_DIR]


def load_mnist_like(folders, split, name, root):
    """(images uint8 (N, 28, 28), labels int64) from the first folder holding the idx files."""
    prefix = 'train' if split == 'train' else 't10k'
    img_path = find_idx(folders, f'{prefix}-images-idx3-ubyte')
    lbl_path = find_idx(folders, f'{prefix}-labels-idx1-ubyte')
    if img_path is None or lbl_path is None:
        raise not_found(name, root, 'searched ' + ', '.join(folders))
    images, labels = read_idx(img_path, name), read_idx(lbl_path, name).astype(np.int64)
    if images.ndim != 3:
        raise corrupt(name, img_path, f'{images.ndim} dimensions, expected 3 (N x height x width)', _idx_fix(img_path))
    if labels.ndim != 1 or len(labels) != len(images):
        raise corrupt(name, lbl_path, f'{labels.shape} labels, expected one per image of {img_path} ({len(images)})',
                      _idx_fix(lbl_path))
    return images, labels


def grey_to_rgb(images, size):
    """Grey (N, h, w) uint8 -> (N, size, size, 3) uint8, bilinear resize (docs/protocol.md section 3)."""
    x = torch.from_numpy(np.array(images)).float().unsqueeze(1)
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().numpy()


def load_fashionmnist(root, split, download=False):
    prefix = 'train' if split == 'train' else 't10k'
    if download and find_idx(fashion_mnist_folders(root), f'{prefix}-images-idx3-ubyte') is None:
        fetch_or_explain('fashionmnist', root, lambda: [torchvision.datasets.FashionMNIST(root, train=t, download=True)
                                                       for t in (True, False)])
    images, labels = load_mnist_like(fashion_mnist_folders(root), split, 'fashionmnist', root)
    return ArrayData(grey_to_rgb(images, 32), labels, list(FASHION_CLASSES))


# ---------------------------------------------------------------- ImageNet (an image folder)
def image_folder(name, root, split, transform=None, skip_bad=False, source=None):
    """The ImageFolder of root/split of the image-folder data set `name` (a row without a reader:
    ImageNet; `source`: its Source, by default SOURCES[name]). CheckedImageFolder: an unreadable
    image is named, or with skip_bad replaced and counted, see take_skipped_images."""
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise not_found(name, root, f'no folder {folder}', source)
    try:
        return CheckedImageFolder(folder, transform, skip_bad, name=name)
    except (FileNotFoundError, RuntimeError) as e:
        raise not_found(name, root, str(e), source) from e


# ---------------------------------------------------------------- as the registry rows call them
# reader(root, split, download, workers, skip_bad) -> ArrayData, a row's `reader`. skip_bad: leave
# out unreadable image files; the array formats have none to leave out (a bad file is the whole
# split), so their readers take it and ignore it.
def cifar_reader(name):
    return lambda root, split, download=False, workers=0, skip_bad=False: load_cifar(name, root, split, download)


def stl10_reader(root, split, download=False, workers=0, skip_bad=False):
    return load_stl10(root, split, download)


def tiny_imagenet_reader(root, split, download=False, workers=0, skip_bad=False):
    if download and not os.path.isdir(os.path.join(root, 'tiny-imagenet-200', 'train')):
        fetch_or_explain('tiny_imagenet', root, lambda: torchvision.datasets.utils.download_and_extract_archive(
            SOURCES['tiny_imagenet'].url, root))
    return load_tiny_imagenet(root, split, workers, skip_bad)


def fashionmnist_reader(root, split, download=False, workers=0, skip_bad=False):
    return load_fashionmnist(root, split, download)

