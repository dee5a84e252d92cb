"""Readers of the seven transfer data sets (REFERENCE.md section 5).

Each reader parses the data set's official on-disk layout (through torchvision's class
where one exists) into a list of files and labels, and returns a lazy Dataset yielding
(RGB PIL image, int label) with `.classes` and `.labels`. Training uses train+val where
the data set has a validation split. A missing data set raises data.DatasetNotFound
naming the folder searched, the layout expected and where to get it.

torchvision's parsed lists (`_image_files`, `_labels`, `_samples`) are read directly: their
names are those of the pinned torchvision (0.29), and tests/test_transfer_data.py covers them.
"""
import os
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from PIL import Image

import data
from data import DatasetNotFound


@dataclass(frozen=True)
class TransferSpec:
    num_classes: int
    mean: tuple
    std: tuple
    layout: str          # what the data root must contain, for error messages
    url: str


CUB_URL = 'https://data.caltech.edu/records/65de6-vmm83/files/CUB_200_2011.tgz'

# The reference's class-count table says 102 for aircraft: the variant level has 100 classes.
TRANSFER = {
    'dtd': TransferSpec(47, (0.533, 0.474, 0.426), (0.261, 0.250, 0.259),
                        'dtd/dtd/{images/<class>/*.jpg, labels/{train1,val1,test1}.txt} '
                        '(dtd-r1.0.1.tar.gz unpacked in dtd/)',
                        'https://www.robots.ox.ac.uk/~vgg/data/dtd/'),
    'mnist': TransferSpec(10, (0.170,) * 3, (0.320,) * 3,
                          'MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]',
                          'https://yann.lecun.com/exdb/mnist/'),
    'fashionmnist': TransferSpec(10, (0.348,) * 3, (0.347,) * 3,
                                 'FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] '
                                 '(or apt-get install dataset-fashion-mnist)',
                                 'https://github.com/zalandoresearch/fashion-mnist'),
    'cu_birds': TransferSpec(200, (0.483, 0.491, 0.424), (0.228, 0.224, 0.259),
                             '[cu_birds/]CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, '
                             'classes.txt, images/<class>/*.jpg} (CUB_200_2011.tgz unpacked)',
                             'https://www.vision.caltech.edu/datasets/cub_200_2011/ (' + CUB_URL + ')'),
    'vgg_flower': TransferSpec(102, (0.518, 0.410, 0.329), (0.296, 0.249, 0.285),
                               'flowers-102/{jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat}',
                               'https://www.robots.ox.ac.uk/~vgg/data/flowers/102/'),
    'traffic_sign': TransferSpec(43, (0.335, 0.291, 0.295), (0.267, 0.249, 0.251),
                                 'gtsrb/{GTSRB/Training/<00000..00042>/*.ppm, GTSRB/Final_Test/Images/*.ppm, '
                                 'GT-final_test.csv} (GTSRB-Training_fixed.zip, GTSRB_Final_Test_Images.zip, '
                                 'GTSRB_Final_Test_GT.zip unpacked in gtsrb/)',
                                 'https://benchmark.ini.rub.de/gtsrb_dataset.html'),
    'aircraft': TransferSpec(100, (0.486, 0.507, 0.525), (0.266, 0.260, 0.276),
                             'fgvc-aircraft-2013b/data/{variants.txt, images_variant_{trainval,test}.txt, '
                             'images_box.txt, images/<id>.jpg}',
                             'https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/'),
}


def not_found(name, root, detail=''):
    spec = TRANSFER[name]
    return DatasetNotFound(
        f'{name} not found under {os.path.abspath(root)}{": " + detail if detail else ""}.\n'
        f'Expected layout: {os.path.join(root, spec.layout)}\n'
        f'Get it from {spec.url}, pass --download where it can be fetched, '
        f'or point --data_root at the folder that holds it.')


class ImageFiles(torch.utils.data.Dataset):
    """Image files with int labels, decoded lazily to RGB (and cropped to a box when given)."""

    def __init__(self, paths, labels, classes, boxes=None, transform=None):
        self.paths, self.labels, self.classes = [str(p) for p in paths], [int(l) for l in labels], list(classes)
        self.boxes, self.transform = boxes, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as img:
            img = img.convert('RGB')
        if self.boxes is not None:
            img = img.crop(self.boxes[i])
        return (self.transform(img) if self.transform else img), self.labels[i]


class GreyImages(torch.utils.data.Dataset):
    """uint8 grey images (N, H, W) in memory, yielded as RGB PIL images (grey copied to 3 channels)."""

    def __init__(self, images, labels, classes, transform=None):
        self.images, self.labels, self.classes = images, [int(l) for l in labels], list(classes)
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(np.ascontiguousarray(self.images[i]), 'L').convert('RGB')
        return (self.transform(img) if self.transform else img), self.labels[i]


def _check_files(name, root, paths):
    """The index files can outlive missing images: fail now, not in the middle of an epoch."""
    if not paths:
        raise not_found(name, root, 'the split lists no image')
    for p in (paths[0], paths[-1]):
        if not os.path.isfile(p):
            raise not_found(name, root, f'missing image {p}')


def _parse(name, root, make, wanted):
    """Run a torchvision parser, turning its 'not found' errors into DatasetNotFound."""
    try:
        return make()
    except RuntimeError as e:  # torchvision's 'Dataset not found', raised when `wanted` is absent
        raise not_found(name, root, f'no {wanted}') from e
    except FileNotFoundError as e:
        raise not_found(name, root, str(e)) from e


# ---------------------------------------------------------------- DTD
def load_dtd(root, train, download=False):
    if download:
        torchvision.datasets.DTD(root, download=True)
    splits = ('train', 'val') if train else ('test',)
    parts = [_parse('dtd', root, lambda s=s: torchvision.datasets.DTD(root, split=s, partition=1),
                    os.path.join(root, 'dtd', 'dtd')) for s in splits]
    paths = [p for ds in parts for p in ds._image_files]
    _check_files('dtd', root, paths)
    # torchvision indexes the classes present in each split file; index all 47 folders instead,
    # so that train and test agree even when a split lacks a class.
    images = os.path.join(root, 'dtd', 'dtd', 'images')
    classes = sorted(d for d in os.listdir(images) if os.path.isdir(os.path.join(images, d)))
    names = [os.path.basename(os.path.dirname(p)) for p in paths]
    missing = sorted(set(names) - set(classes))
    if missing:
        raise not_found('dtd', root, f'no folder {os.path.join(images, missing[0])}')
    index = {c: i for i, c in enumerate(classes)}
    return ImageFiles(paths, [index[n] for n in names], classes)


# ---------------------------------------------------------------- MNIST / Fashion-MNIST
def _mnist_like(name, folders, root, train, classes):
    # torchvision's MNIST wants its processed/ layout and unzipped files; read the idx files directly.
    prefix = 'train' if train else 't10k'
    for kind in ('images-idx3', 'labels-idx1'):
        if data.find_idx(folders, f'{prefix}-{kind}-ubyte') is None:
            raise not_found(name, root, f'no {prefix}-{kind}-ubyte[.gz]; searched ' + ', '.join(folders))
    images, labels = data.load_mnist_like(folders, 'train' if train else 'test', name, root)
    return GreyImages(images, labels, classes)


def load_mnist(root, train, download=False):
    if download:
        torchvision.datasets.MNIST(root, train=train, download=True)
    folders = [os.path.join(root, 'MNIST', 'raw'), os.path.join(root, 'mnist')]
    return _mnist_like('mnist', folders, root, train, torchvision.datasets.MNIST.classes)


def load_fashionmnist(root, train, download=False):
    if download:
        torchvision.datasets.FashionMNIST(root, train=train, download=True)
    return _mnist_like('fashionmnist', data.fashion_mnist_folders(root), root, train, data.FASHION_CLASSES)


# ---------------------------------------------------------------- CUB-200-2011
def _read_table(path):
    """'<image id> <value>' lines as {id: value}."""
    with open(path) as f:
        return dict(line.strip().split(' ', 1) for line in f if line.strip())


def load_cu_birds(root, train, download=False):
    if download and not any(os.path.isdir(os.path.join(root, p, 'CUB_200_2011')) for p in ('', 'cu_birds')):
        torchvision.datasets.utils.download_and_extract_archive(CUB_URL, root)
    candidates = [os.path.join(root, 'CUB_200_2011'), os.path.join(root, 'cu_birds', 'CUB_200_2011')]
    base = next((c for c in candidates if os.path.isdir(c)), None)
    tables = ('images.txt', 'image_class_labels.txt', 'train_test_split.txt', 'classes.txt')
    if base is None or not all(os.path.isfile(os.path.join(base, t)) for t in tables):
        raise not_found('cu_birds', root, 'searched ' + ', '.join(candidates))
    files, labels, is_train, classes = (_read_table(os.path.join(base, t)) for t in tables)
    class_names = [classes[k] for k in sorted(classes, key=int)]
    ids = sorted((i for i in files if is_train[i].strip() == ('1' if train else '0')), key=int)
    paths = [os.path.join(base, 'images', files[i].strip()) for i in ids]
    _check_files('cu_birds', root, paths)
    return ImageFiles(paths, [int(labels[i]) - 1 for i in ids], class_names)  # class ids are 1-based


# ---------------------------------------------------------------- Flowers-102
class _Flowers102(torchvision.datasets.Flowers102):
    """Presence instead of the MD5 of the .mat files (as data._existence_check): small test files pass."""

    def _check_integrity(self):
        return self._images_folder.is_dir() and all(
            (self._base_folder / self._file_dict[k][0]).is_file() for k in ('label', 'setid'))


def load_vgg_flower(root, train, download=False):
    if download:
        torchvision.datasets.Flowers102(root, download=True)
    splits = ('train', 'val') if train else ('test',)
    wanted = os.path.join(root, 'flowers-102', '{jpg/, imagelabels.mat, setid.mat}')
    parts = [_parse('vgg_flower', root, lambda s=s: _Flowers102(root, split=s), wanted) for s in splits]
    paths = [p for ds in parts for p in ds._image_files]
    _check_files('vgg_flower', root, paths)
    return ImageFiles(paths, [l for ds in parts for l in ds._labels], torchvision.datasets.Flowers102.classes)


# ---------------------------------------------------------------- GTSRB
GTSRB_CLASSES = [f'{i:05d}' for i in range(43)]  # the class folder names of the training set


def load_traffic_sign(root, train, download=False):
    split = 'train' if train else 'test'
    if download:
        torchvision.datasets.GTSRB(root, split=split, download=True)
    wanted = os.path.join(root, 'gtsrb', 'GTSRB', 'Training' if train else 'Final_Test/Images')
    ds = _parse('traffic_sign', root, lambda: torchvision.datasets.GTSRB(root, split=split), wanted)
    paths = [p for p, _ in ds._samples]
    if train:
        # torchvision numbers the class folders present; the folder name is the ClassId the test csv uses.
        labels = [int(os.path.basename(os.path.dirname(p))) for p in paths]
    else:
        labels = [l for _, l in ds._samples]
    _check_files('traffic_sign', root, paths)
    return ImageFiles(paths, labels, GTSRB_CLASSES)


# ---------------------------------------------------------------- FGVC-Aircraft
def aircraft_boxes(path):
    """{image id: PIL crop box} from images_box.txt, whose '<id> xmin ymin xmax ymax' are
    1-based inclusive pixel coordinates (the official README: the top-left pixel is (1,1))."""
    boxes = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                image_id, x0, y0, x1, y1 = line.split()
                boxes[image_id] = (int(x0) - 1, int(y0) - 1, int(x1), int(y1))
    return boxes


def load_aircraft(root, train, download=False):
    split = 'trainval' if train else 'test'
    if download:
        torchvision.datasets.FGVCAircraft(root, split=split, download=True)
    ds = _parse('aircraft', root, lambda: torchvision.datasets.FGVCAircraft(root, split, annotation_level='variant'),
                os.path.join(root, 'fgvc-aircraft-2013b'))
    box_file = os.path.join(root, 'fgvc-aircraft-2013b', 'data', 'images_box.txt')
    if not os.path.isfile(box_file):
        raise not_found('aircraft', root, f'no {box_file}')
    # Cropping to the box is the original protocol; it also drops the copyright banner.
    boxes = aircraft_boxes(box_file)
    paths = ds._image_files
    _check_files('aircraft', root, paths)
    return ImageFiles(paths, ds._labels, ds.classes,
                      boxes=[boxes[os.path.splitext(os.path.basename(p))[0]] for p in paths])


# ---------------------------------------------------------------- entry point
LOADERS = {'dtd': load_dtd, 'mnist': load_mnist, 'fashionmnist': load_fashionmnist, 'cu_birds': load_cu_birds,
           'vgg_flower': load_vgg_flower, 'traffic_sign': load_traffic_sign, 'aircraft': load_aircraft}


def load_transfer(name, root='data', train=True, transform=None, download=False):
    """The training (train=True) or test split of transfer data set `name`: a Dataset of
    (transform(RGB PIL image), int label) with `.classes` and `.labels`."""
    if name not in TRANSFER:
        raise ValueError(f'unknown transfer data set {name!r}; choose one of {sorted(TRANSFER)}')
    ds = LOADERS[name](root, train, download)
    ds.transform = transform
    return ds
