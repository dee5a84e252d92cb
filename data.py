"""Data set registry and loaders for the pretraining data sets (REFERENCE.md section 3).

Each small data set is read from its official on-disk format under --data_root into
memory as uint8 arrays (N, H, W, 3) plus int64 labels; ImageNet stays a lazy ImageFolder.
A missing data set raises DatasetNotFound naming the path and the layout expected.
"""
import gzip
import os
import struct
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from PIL import Image

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class Spec:
    size: int            # training resolution (and the model's variant, see model.py)
    mean: tuple
    std: tuple
    num_classes: int
    layout: str          # what --data_root must contain, for error messages
    url: str


SPECS = {
    'cifar10': Spec(32, CIFAR_MEAN, CIFAR_STD, 10,
                    'cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (CIFAR-10 python version)',
                    'https://www.cs.toronto.edu/~kriz/cifar.html'),
    'cifar100': Spec(32, CIFAR_MEAN, CIFAR_STD, 100,  # CIFAR-10 statistics: a reference quirk we keep
                     'cifar-100-python/{train, test, meta} (CIFAR-100 python version)',
                     'https://www.cs.toronto.edu/~kriz/cifar.html'),
    'stl10': Spec(64, (0.43, 0.42, 0.39), (0.27, 0.26, 0.27), 10,
                  'stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin}',
                  'https://cs.stanford.edu/~acoates/stl10/'),
    'tiny_imagenet': Spec(64, (0.480, 0.448, 0.398), (0.277, 0.269, 0.282), 200,
                          'tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, '
                          'val/images/*.JPEG, val/val_annotations.txt} (the official zip, unpacked)',
                          'http://cs231n.stanford.edu/tiny-imagenet-200.zip'),
    'fashionmnist': Spec(32, (0.2860,) * 3, (0.3530,) * 3, 10,
                         'FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] '
                         '(or apt-get install dataset-fashion-mnist)',
                         'https://github.com/zalandoresearch/fashion-mnist'),
    'imagenet': Spec(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1000,
                     '{train,val}/<wnid>/*.JPEG (ImageFolder layout; --data_root is the ImageNet folder itself)',
                     'https://www.image-net.org'),
}
# The Debian package dataset-fashion-mnist installs the raw idx.gz files here.
FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'

# Which split plays which role: SSL training, kNN memory bank / linear training, test.
SPLITS = {
    'cifar10': ('train', 'train', 'test'),
    'cifar100': ('train', 'train', 'test'),
    'stl10': ('train+unlabeled', 'train', 'test'),
    'tiny_imagenet': ('train', 'train', 'val'),
    'fashionmnist': ('train', 'train', 'test'),
    'imagenet': ('train', 'train', 'val'),
}


class DatasetNotFound(FileNotFoundError):
    pass


def not_found(name, root, detail=''):
    spec = SPECS[name]
    msg = (f'{name} not found under {os.path.abspath(root)}{": " + detail if detail else ""}.\n'
           f'Expected layout: {os.path.join(root, spec.layout)}\n'
           f'Get it from {spec.url}, pass --download where torchvision can fetch it, '
           f'or point --data_root at the folder that holds it.')
    return DatasetNotFound(msg)


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
    try:
        ds = cls(root, train=(split == 'train'), download=False)
    except RuntimeError as e:
        raise not_found(name, root) from e
    return ArrayData(np.ascontiguousarray(ds.data), np.asarray(ds.targets, dtype=np.int64), list(ds.classes))


# ---------------------------------------------------------------- STL-10
class _STL10(torchvision.datasets.STL10):
    def _check_integrity(self):
        needed = {'train': ['train_X.bin', 'train_y.bin'], 'test': ['test_X.bin', 'test_y.bin'],
                  'unlabeled': ['unlabeled_X.bin'],
                  'train+unlabeled': ['train_X.bin', 'train_y.bin', 'unlabeled_X.bin']}[self.split]
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in needed)


def load_stl10(root, split, download=False):
    if download:
        fetch_or_explain('stl10', root, lambda: torchvision.datasets.STL10(root, split='train', download=True))
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
        raise ValueError(f'tiny_imagenet has no split {split!r}')
    if not paths:
        raise not_found('tiny_imagenet', root, f'no images in the {split} split')
    missing = [p for p in paths[:1] + paths[-1:] if not os.path.isfile(p)]
    if missing:
        raise not_found('tiny_imagenet', root, f'missing image {missing[0]}')
    return paths, np.asarray(labels, dtype=np.int64), wnids


class _Decode(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as img:
            return torch.from_numpy(np.asarray(img.convert('RGB')).copy())


def decode_images(paths, workers=0):
    """Decode equally sized image files into one uint8 (N, H, W, 3) array, in parallel."""
    loader = torch.utils.data.DataLoader(_Decode(paths), batch_size=256, num_workers=workers)
    return np.concatenate([b.numpy() for b in loader]) if paths else np.zeros((0, 1, 1, 3), np.uint8)


def load_tiny_imagenet(root, split, workers=0):
    paths, labels, wnids = tiny_imagenet_files(root, split)
    return ArrayData(decode_images(paths, workers), labels, wnids)


# ---------------------------------------------------------------- Fashion-MNIST
def read_idx(path):
    """An idx file (MNIST family), gzip-compressed or not, as a numpy array."""
    with (gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')) as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack('>HBB', data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f'{path} is not an unsigned-byte idx file')
    shape = struct.unpack('>' + 'I' * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_idx(folders, stem):
    for folder in folders:
        for name in (stem, stem + '.gz'):
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    return None


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
    images, labels = read_idx(img_path), read_idx(lbl_path).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f'{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels')
    return images, labels


def grey_to_rgb(images, size):
    """Grey (N, h, w) uint8 -> (N, size, size, 3) uint8, bilinear resize (REFERENCE.md section 3)."""
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
    return ArrayData(grey_to_rgb(images, SPECS['fashionmnist'].size), labels, list(FASHION_CLASSES))


# ---------------------------------------------------------------- ImageNet
def imagenet_folder(root, split, transform=None):
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise not_found('imagenet', root, f'no folder {folder}')
    try:
        return torchvision.datasets.ImageFolder(folder, transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise not_found('imagenet', root, str(e)) from e


# ---------------------------------------------------------------- entry point
def load(name, root='data', split='train', download=False, workers=0):
    """The `split` of small data set `name` as ArrayData."""
    if name not in SPECS:
        raise ValueError(f'unknown data set {name!r}; choose one of {sorted(SPECS)}')
    if name in ('cifar10', 'cifar100'):
        return load_cifar(name, root, split, download)
    if name == 'stl10':
        return load_stl10(root, split, download)
    if name == 'tiny_imagenet':
        if download and not os.path.isdir(os.path.join(root, 'tiny-imagenet-200', 'train')):
            fetch_or_explain(name, root, lambda: torchvision.datasets.utils.download_and_extract_archive(
                SPECS[name].url, root))
        return load_tiny_imagenet(root, split, workers)
    if name == 'fashionmnist':
        return load_fashionmnist(root, split, download)
    raise ValueError(f'{name} is not an in-memory data set; use imagenet_folder()')


def eval_images(name, data):
    """Apply the deterministic geometric part of the evaluation transform once, up front.

    STL-10: Resize(70, bicubic) + CenterCrop(64) (REFERENCE.md section 3); the others are
    evaluated at their stored size. Returns uint8 (N, S, S, 3), bit-identical to what the
    PIL transform produces before ToTensor."""
    spec = SPECS[name]
    if data.images.shape[1] == spec.size and data.images.shape[2] == spec.size:
        return data.images
    from augment import eval_geometry
    geometry = eval_geometry(name)
    return np.stack([np.asarray(geometry(Image.fromarray(im))) for im in data.images])
