"""Readers of the transfer data sets' official on-disk formats (docs/protocol.md section 5), and
load_transfer, which picks one by name.

Each reader parses the data set's own index files (torchvision only downloads), checks that
every listed image exists, and returns a lazy Dataset yielding (RGB PIL image, int label) with
`.classes` and `.labels`. Training uses train+val where the data set has a validation split;
Flowers-102 and the GTSDB traffic signs use the original's seeded 80/20 split by default.
What each set is and where to get it (TRANSFER), and the errors a reader raises, are
transfer_data.py's.
"""
import csv
import glob
import os

import numpy as np
import torch
import torchvision
from PIL import Image

from mixbt import formats, readers
from mixbt.transfer_data import CUB_URL, FLOWERS_SPLITS, TRANSFER, TransferDataError, bad_index, not_found


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


def _check_files(name, root, paths, listed=None):
    """Every path exists (index files can outlive images): fail now, naming the first missing
    one and where it is listed (`listed[i]`), not in the middle of an epoch."""
    if not paths:
        raise not_found(name, root, 'the split lists no image')
    for i, p in enumerate(paths):
        if not os.path.isfile(p):
            raise not_found(name, root, f'missing image {p}' + (f' (listed in {listed[i]})' if listed else ''))


def _require(name, root, *paths):
    for p in paths:
        if not os.path.exists(p):
            raise not_found(name, root, f'no {p}')


def _download(name, root, fetch):
    """Run a torchvision downloader; a failure (no network, a moved URL, a bad checksum) is not_found."""
    try:
        fetch()
    except Exception as e:
        first = (str(e).splitlines() or [''])[0]
        raise not_found(name, root, f'--download failed ({type(e).__name__}: {first})') from None


def _lines(path):
    """(line number, stripped line) of the non-blank lines of a text index file."""
    with open(path) as f:
        return [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]


def _read_table(name, path):
    """{key: (line number, value)} of a '<key> <value>' index file (the value may hold spaces)."""
    table = {}
    for n, line in _lines(path):
        key, _, value = line.partition(' ')
        if not value.strip():
            raise bad_index(name, path, n, f'expected "<image id> <value>", got {line!r}')
        if key in table:
            raise bad_index(name, path, n, f'image {key} is listed again (first on line {table[key][0]})')
        table[key] = (n, value.strip())
    return table


def _lookup(name, table, table_path, key, source, line):
    """table[key]'s value, or an error naming the file that lacks it and the line that asked."""
    if key not in table:
        raise bad_index(name, table_path, None, f'no line for image {key}, which {source} lists on line {line}')
    return table[key][1]


def seeded_split(groups, train):
    """The original's per-class 80/20 split: for each (label, items) of `groups` in turn, one
    np.random.RandomState(42) shuffles np.arange(len(items)); the first int(0.8 * n) shuffled
    items are train, the rest test. Returns (items, labels) of the requested half."""
    rs = np.random.RandomState(42)
    items, labels = [], []
    for label, members in groups:
        order = np.arange(len(members))
        rs.shuffle(order)
        cut = int(0.8 * len(members))
        chosen = order[:cut] if train else order[cut:]
        items += [members[k] for k in chosen]
        labels += [label] * len(chosen)
    return items, labels


# ---------------------------------------------------------------- DTD
def load_dtd(root, train, download=False):
    if download:
        _download('dtd', root, lambda: torchvision.datasets.DTD(root, download=True))
    base = os.path.join(root, 'dtd', 'dtd')
    images = os.path.join(base, 'images')
    split_files = [os.path.join(base, 'labels', f'{s}1.txt') for s in (('train', 'val') if train else ('test',))]
    _require('dtd', root, images, *split_files)
    # Index all 47 folders, not the classes a split file happens to list: train and test agree.
    classes = sorted(d for d in os.listdir(images) if os.path.isdir(os.path.join(images, d)))
    index = {c: i for i, c in enumerate(classes)}
    paths, labels, listed = [], [], []
    for split_file in split_files:
        for n, rel in _lines(split_file):
            if '/' not in rel:
                raise bad_index('dtd', split_file, n, f'expected "<class>/<file>.jpg", got {rel!r}')
            folder = rel.split('/')[0]
            if folder not in index:
                raise not_found('dtd', root, f'no folder {os.path.join(images, folder)} ({split_file} line {n})')
            paths.append(os.path.join(images, rel))
            labels.append(index[folder])
            listed.append(f'{split_file} line {n}')
    _check_files('dtd', root, paths, listed)
    return ImageFiles(paths, labels, classes)


# ---------------------------------------------------------------- MNIST / Fashion-MNIST
def _mnist_like(name, folders, root, train, classes):
    # torchvision's MNIST wants its processed/ layout and unzipped files; read the idx files directly.
    prefix = 'train' if train else 't10k'
    for kind in ('images-idx3', 'labels-idx1'):
        if formats.find_idx(folders, f'{prefix}-{kind}-ubyte') is None:
            raise not_found(name, root, f'no {prefix}-{kind}-ubyte[.gz]; searched ' + ', '.join(folders))
    images, labels = readers.load_mnist_like(folders, 'train' if train else 'test', name, root)
    return GreyImages(images, labels, classes)


def load_mnist(root, train, download=False):
    if download:
        _download('mnist', root, lambda: torchvision.datasets.MNIST(root, train=train, download=True))
    folders = [os.path.join(root, 'MNIST', 'raw'), os.path.join(root, 'mnist')]
    return _mnist_like('mnist', folders, root, train, torchvision.datasets.MNIST.classes)


def load_fashionmnist(root, train, download=False):
    if download:
        _download('fashionmnist', root, lambda: torchvision.datasets.FashionMNIST(root, train=train, download=True))
    return _mnist_like('fashionmnist', readers.fashion_mnist_folders(root), root, train, readers.FASHION_CLASSES)


# ---------------------------------------------------------------- CUB-200-2011
def load_cu_birds(root, train, download=False):
    if download and not any(os.path.isdir(os.path.join(root, p, 'CUB_200_2011')) for p in ('', 'cu_birds')):
        _download('cu_birds', root, lambda: torchvision.datasets.utils.download_and_extract_archive(CUB_URL, root))
    candidates = [os.path.join(root, 'CUB_200_2011'), os.path.join(root, 'cu_birds', 'CUB_200_2011')]
    base = next((c for c in candidates if os.path.isdir(c)), None)
    names = ('images.txt', 'image_class_labels.txt', 'train_test_split.txt', 'classes.txt')
    if base is None or not all(os.path.isfile(os.path.join(base, t)) for t in names):
        raise not_found('cu_birds', root, 'searched ' + ', '.join(candidates))
    images_txt, labels_txt, split_txt, classes_txt = (os.path.join(base, t) for t in names)
    files, labels, is_train, classes = (_read_table('cu_birds', p) for p in (images_txt, labels_txt, split_txt,
                                                                             classes_txt))
    class_names = [classes[k][1] for k in sorted(classes, key=int)]
    paths, targets, listed = [], [], []
    for image_id, (n, rel) in sorted(files.items(), key=lambda item: int(item[0])):
        flag = _lookup('cu_birds', is_train, split_txt, image_id, 'images.txt', n)
        label = _lookup('cu_birds', labels, labels_txt, image_id, 'images.txt', n)
        if flag not in ('0', '1'):
            raise bad_index('cu_birds', split_txt, is_train[image_id][0], f'expected 0 or 1, got {flag!r}')
        if not (label.isdigit() and 1 <= int(label) <= len(class_names)):
            raise bad_index('cu_birds', labels_txt, labels[image_id][0],
                            f'class {label!r} is not one of the {len(class_names)} of classes.txt')
        if flag == ('1' if train else '0'):
            paths.append(os.path.join(base, 'images', rel))
            targets.append(int(label) - 1)  # class ids are 1-based
            listed.append(f'{images_txt} line {n}')
    _check_files('cu_birds', root, paths, listed)
    return ImageFiles(paths, targets, class_names)


# ---------------------------------------------------------------- Flowers-102
def _load_mat_rows(name, path, keys):
    """The 1 x N integer arrays `keys` of MATLAB file `path`, as 1-D int64 arrays."""
    from scipy.io import loadmat
    try:
        mat = loadmat(path)
    except Exception as e:  # a cut file fails anywhere in scipy: IndexError, OSError, ValueError, zlib.error...
        raise bad_index(name, path, None, f'unreadable MATLAB file ({type(e).__name__})') from e
    rows = []
    for key in keys:
        value = np.asarray(mat.get(key, []))
        if (value.dtype.kind not in 'iuf' or value.ndim != 2 or value.shape[0] != 1 or value.size == 0
                or not np.all(value == np.round(value))):
            raise bad_index(name, path, None, f'expected a 1 x N integer array {key!r}')
        rows.append(value[0].astype(np.int64))
    return rows


def load_vgg_flower(root, train, download=False, split='reference'):
    """split='reference' (default): the original's seeded 80/20 split of all images of each
    class, classes in the order of their first image in imagelabels.mat and each class's images
    in id order before the shuffle. split='official': setid.mat's train+val / test."""
    if download:
        _download('vgg_flower', root, lambda: torchvision.datasets.Flowers102(root, download=True))
    base = os.path.join(root, 'flowers-102')
    labels_mat, setid_mat = os.path.join(base, 'imagelabels.mat'), os.path.join(base, 'setid.mat')
    _require('vgg_flower', root, os.path.join(base, 'jpg'), labels_mat, *([setid_mat] if split == 'official' else []))
    (labels,) = _load_mat_rows('vgg_flower', labels_mat, ['labels'])
    if labels.min() < 1 or labels.max() > 102:
        raise bad_index('vgg_flower', labels_mat, None, 'labels must lie in 1..102')
    if split == 'reference':
        by_class = {}
        for image_id, label in enumerate(labels.tolist(), 1):
            by_class.setdefault(label, []).append(image_id)
        ids, targets = seeded_split(by_class.items(), train)
    else:
        trnid, valid, tstid = _load_mat_rows('vgg_flower', setid_mat, ['trnid', 'valid', 'tstid'])
        ids = np.concatenate([trnid, valid]).tolist() if train else tstid.tolist()
        if min(ids) < 1 or max(ids) > len(labels):
            raise bad_index('vgg_flower', setid_mat, None, f'image ids must lie in 1..{len(labels)} (imagelabels.mat)')
        targets = [int(labels[i - 1]) for i in ids]
    paths = [os.path.join(base, 'jpg', f'image_{i:05d}.jpg') for i in ids]
    _check_files('vgg_flower', root, paths, [f'{labels_mat} as image {i}' for i in ids])
    return ImageFiles(paths, [t - 1 for t in targets], torchvision.datasets.Flowers102.classes)


# ---------------------------------------------------------------- traffic signs: GTSDB (default) and GTSRB
def load_traffic_sign(root, train, download=False):
    """GTSDB's FullIJCNN2013 class folders 00..42 of .ppm sign crops, with the original's seeded
    80/20 split per class. The original takes each folder's files in glob order, which depends on
    the file system; we sort the file names first, so the split is the same everywhere."""
    base = os.path.join(root, 'FullIJCNN2013')
    folders = [os.path.join(base, f'{c:02d}') for c in range(43)]
    if not any(os.path.isdir(f) for f in folders):
        raise not_found('traffic_sign', root, f'no class folder {folders[0]} .. {folders[-1]}')
    # A class folder the archive lacks is an empty class, as in the original.
    groups = [(c, sorted(glob.glob(os.path.join(glob.escape(f), '*.ppm')))) for c, f in enumerate(folders)]
    paths, labels = seeded_split(groups, train)
    _check_files('traffic_sign', root, paths)
    return ImageFiles(paths, labels, [f'{c:02d}' for c in range(43)])


def load_gtsrb(root, train, download=False):
    """GTSRB's official split: Training/<ClassId>/*.ppm (sorted) and the Final_Test images
    labelled by GT-final_test.csv."""
    if download:
        _download('gtsrb', root, lambda: torchvision.datasets.GTSRB(root, 'train' if train else 'test', download=True))
    base = os.path.join(root, 'gtsrb')
    if train:
        training = os.path.join(base, 'GTSRB', 'Training')
        _require('gtsrb', root, training)
        paths, labels = [], []
        for folder in sorted(os.listdir(training)):
            full = os.path.join(training, folder)
            if not os.path.isdir(full):
                continue
            if not (folder.isdigit() and int(folder) < 43):
                raise not_found('gtsrb', root, f'{full} is not a class folder 00000..00042')
            files = sorted(f for f in os.listdir(full) if f.lower().endswith('.ppm'))
            paths += [os.path.join(full, f) for f in files]
            labels += [int(folder)] * len(files)
        _check_files('gtsrb', root, paths)
        return ImageFiles(paths, labels, [f'{i:05d}' for i in range(43)])
    images, table = os.path.join(base, 'GTSRB', 'Final_Test', 'Images'), os.path.join(base, 'GT-final_test.csv')
    _require('gtsrb', root, images, table)
    paths, labels, listed = [], [], []
    with open(table, newline='') as f:
        reader = csv.DictReader(f, delimiter=';', skipinitialspace=True)
        if not {'Filename', 'ClassId'} <= set(reader.fieldnames or ()):
            raise bad_index('gtsrb', table, 1, 'the header lacks the columns Filename and ClassId, separated by ";"')
        for row in reader:
            if not (row['Filename'] and (row['ClassId'] or '').isdigit() and int(row['ClassId']) < 43):
                raise bad_index('gtsrb', table, reader.line_num, 'expected a file name and a ClassId in 0..42')
            paths.append(os.path.join(images, row['Filename']))
            labels.append(int(row['ClassId']))
            listed.append(f'{table} line {reader.line_num}')
    _check_files('gtsrb', root, paths, listed)
    return ImageFiles(paths, labels, [f'{i:05d}' for i in range(43)])


# ---------------------------------------------------------------- FGVC-Aircraft
def aircraft_boxes(path, name='aircraft'):
    """{image id: (line number, crop box)} of images_box.txt: '<id> xmin ymin xmax ymax', the
    four values kept as they are, as the original passes them to PIL's crop."""
    boxes = {}
    for n, line in _lines(path):
        fields = line.split()
        if len(fields) != 5 or not all(v.isdigit() for v in fields[1:]):
            raise bad_index(name, path, n, f'expected "<image id> xmin ymin xmax ymax", got {line!r}')
        x0, y0, x1, y1 = map(int, fields[1:])
        if not (x0 < x1 and y0 < y1):
            raise bad_index(name, path, n, f'empty box {line!r}')
        boxes[fields[0]] = (n, (x0, y0, x1, y1))
    return boxes


def load_aircraft(root, train, download=False):
    """The variant-level split; classes in sorted order of the variant names, as the original's
    sorted(set(variants)) of the split (variants.txt lists them in another order; every split of
    the real data holds all 100)."""
    split = 'trainval' if train else 'test'
    if download:
        _download('aircraft', root, lambda: torchvision.datasets.FGVCAircraft(root, split=split, download=True))
    base = os.path.join(root, 'fgvc-aircraft-2013b', 'data')
    variants_txt, listing_txt, box_txt = (os.path.join(base, f) for f in (
        'variants.txt', f'images_variant_{split}.txt', 'images_box.txt'))
    _require('aircraft', root, variants_txt, listing_txt, box_txt)
    classes = sorted(line for _, line in _lines(variants_txt))
    index = {c: i for i, c in enumerate(classes)}
    boxes = aircraft_boxes(box_txt)
    paths, labels, crops, listed = [], [], [], []
    for image_id, (n, variant) in _read_table('aircraft', listing_txt).items():
        if variant not in index:
            raise bad_index('aircraft', listing_txt, n, f'variant {variant!r} is not in {variants_txt}')
        # Cropping to the box is the original protocol; it also drops the copyright banner.
        crops.append(_lookup('aircraft', boxes, box_txt, image_id, listing_txt, n))
        paths.append(os.path.join(base, 'images', f'{image_id}.jpg'))
        labels.append(index[variant])
        listed.append(f'{listing_txt} line {n}')
    _check_files('aircraft', root, paths, listed)
    return ImageFiles(paths, labels, classes, boxes=crops)


# ---------------------------------------------------------------- entry point
LOADERS = {'dtd': load_dtd, 'mnist': load_mnist, 'fashionmnist': load_fashionmnist, 'cu_birds': load_cu_birds,
           'vgg_flower': load_vgg_flower, 'traffic_sign': load_traffic_sign, 'gtsrb': load_gtsrb,
           'aircraft': load_aircraft}


def load_transfer(name, root='data', train=True, transform=None, download=False, flowers_split='reference'):
    """The training (train=True) or test split of transfer data set `name`: a Dataset of
    (transform(RGB PIL image), int label) with `.classes` and `.labels`. `flowers_split` picks
    vgg_flower's split ('reference': the original's, or 'official': setid.mat's); other data
    sets ignore it."""
    if name not in TRANSFER:
        raise TransferDataError(f'unknown transfer data set {name!r}; choose one of {sorted(TRANSFER)}')
    if flowers_split not in FLOWERS_SPLITS:
        raise TransferDataError(f'unknown flowers split {flowers_split!r}; choose one of {list(FLOWERS_SPLITS)}')
    extra = {'split': flowers_split} if name == 'vgg_flower' else {}
    ds = LOADERS[name](root, train, download, **extra)
    ds.transform = transform
    return ds
