"""The data set registry and the readers of the pretraining data sets (docs/protocol.md section 3).

`spec_of(name or args)` gives the one row every other module asks about a data set: resolution,
stem, normalisation, augmentation recipe, split roles, size class and reader. The static rows
are SPECS; a folder of your own images (--dataset folder) gets its row per run (folder_data.py).
Each small data set is read from its official on-disk format into memory as uint8 (N, H, W, 3)
plus int64 labels; ImageNet stays a lazy ImageFolder. A missing data set raises DatasetNotFound
naming the path and the layout expected.
"""
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
import torchvision

from mixbt import formats
from mixbt.errors import MixBTError
# Re-exported for the readers' callers: data.BadImage, data.CorruptData, data.take_skipped_images, ...
from mixbt.formats import (UNREADABLE, BadImage, CheckedImageFolder, CorruptData, _one_line, decode_images,  # noqa: F401
                     find_idx, take_skipped_images)

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class Recipe:
    """The SSL view of a data set, as torchvision composes it (augment.py on the CPU,
    gpu_augment.py on the device): RandomResizedCrop(size, scale, ratio, kernel), a horizontal
    flip, ColorJitter(*jitter) with probability jitter_p, RandomGrayscale(gray_p); the colour
    ops come before the crop when color_first. blur/solarize: per-view probabilities of the
    ImageNet views (Gaussian blur, solarisation after the colour ops); one view per entry."""
    size: int
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    kernel: str = 'bilinear'       # 'bilinear' | 'bicubic'
    jitter_p: float = 0.8
    gray_p: float = 0.2
    color_first: bool = False
    jitter: tuple = (0.4, 0.4, 0.4, 0.1)
    blur: tuple = (0.0, 0.0)
    solarize: tuple = (0.0, 0.0)


CIFAR_VIEW = Recipe(32)
VIEW_64PX = Recipe(64, scale=(0.2, 1.0), kernel='bicubic', gray_p=0.1, color_first=True)
IMAGENET_VIEWS = Recipe(224, kernel='bicubic', jitter=(0.4, 0.4, 0.2, 0.1), blur=(1.0, 0.1), solarize=(0.0, 0.2))


@dataclass(frozen=True)
class Spec:
    """A data set's row: what it is, how it is read, and which recipe trains and evaluates it.
    Rows are written with keyword arguments; the recipe fields default to the small-data protocol."""
    size: int             # training resolution
    maxpool: bool         # the backbone keeps the ResNet max-pool (64 px inputs) or drops it (32 px)
    size_class: str       # '32px' | '64px' | 'imagenet': which column of a method's recipe applies
    mean: tuple
    std: tuple
    num_classes: int
    recipe: Recipe        # SSL views
    splits: tuple         # (SSL training, kNN memory bank / linear training, test)
    reader: object        # reader(root, split, download, workers, skip_bad) -> ArrayData; None: an image folder
    layout: str           # what --data_root must contain, for error messages
    url: str
    eval_resize: int = 0  # evaluation: Resize(eval_resize, bicubic) + CenterCrop(size); 0: as stored
    labelled: bool = True  # False: a folder of unlabelled images (pretraining only)
    streamed: bool = False  # the reader returns images decoded on access (formats.LazyImages), not an array
    identity: str = ''    # what a resolved row was built from (a folder's files, the image size); '' for static rows
    # ---- the recipe (docs/protocol.md): 'small' is the CIFAR-style code (Model with f.*/g.* heads and
    # --feature_dim, views at `size`, the kNN monitor, the small linear probe, transfer); 'imagenet' the
    # ImageNet code (torchvision ResNet + --projector MLP, crops of --image_size, the ImageNet linear and
    # semi-supervised probes, the backbone exported in torchvision's layout).
    protocol: str = 'small'
    optimizer: str = 'adam'   # the --optimizer default
    lr_shed: str = 'step'     # the --lr_shed default
    projector: str = ''       # the --projector default ('': the small-data projector of --feature_dim)
    ref_world_size: int = 0   # GPUs of the original's released runs, whose per-GPU Barlow Twins loss is the
    #                           family's default here (--bt_loss imagenet_reference); 0: none

    @property
    def in_memory(self):
        """Read into memory by `reader` (ArrayData, or images decoded on access), not an image folder."""
        return self.reader is not None

    @property
    def imagenet_stem(self):
        """The torchvision ResNet stem (7x7 stride-2 convolution, max-pool), not the 3x3 one."""
        return self.size_class == 'imagenet'


# The Debian package dataset-fashion-mnist installs the raw idx.gz files here.
FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'

class DatasetNotFound(MixBTError, FileNotFoundError):
    pass


def not_found(name, root, detail=''):
    spec = SPECS[name]
    msg = (f'{name} not found under {os.path.abspath(root)}{": " + detail if detail else ""}. '
           f'Expected layout: {os.path.join(root, spec.layout)}. '
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
CIFAR_IMAGE_BYTES = 3 * 32 * 32


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
    num_classes, key = SPECS[name].num_classes, 'labels' if name == 'cifar10' else 'fine_labels'
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
def corrupt(name, path, problem, fix='delete it and fetch it again (--download)'):
    """formats.corrupt with the data set's expected layout."""
    return formats.corrupt(name, path, problem, fix, SPECS[name].layout if name in SPECS else '')


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
def image_folder(name, root, split, transform=None, skip_bad=False):
    """The ImageFolder of root/split of the image-folder data set `name` (a row without a reader:
    ImageNet). CheckedImageFolder: an unreadable image is named, or with skip_bad replaced and
    counted, see take_skipped_images."""
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise not_found(name, root, f'no folder {folder}')
    try:
        return CheckedImageFolder(folder, transform, skip_bad, name=name)
    except (FileNotFoundError, RuntimeError) as e:
        raise not_found(name, root, str(e)) from e


# ---------------------------------------------------------------- the registry
# skip_bad: leave out unreadable image files; the array formats have none to leave out (a bad
# file is the whole split), so their readers take it and ignore it.
def _cifar(name):
    return lambda root, split, download=False, workers=0, skip_bad=False: load_cifar(name, root, split, download)


def _stl10(root, split, download=False, workers=0, skip_bad=False):
    return load_stl10(root, split, download)


def _tiny_imagenet(root, split, download=False, workers=0, skip_bad=False):
    if download and not os.path.isdir(os.path.join(root, 'tiny-imagenet-200', 'train')):
        fetch_or_explain('tiny_imagenet', root, lambda: torchvision.datasets.utils.download_and_extract_archive(
            SPECS['tiny_imagenet'].url, root))
    return load_tiny_imagenet(root, split, workers, skip_bad)


def _fashionmnist(root, split, download=False, workers=0, skip_bad=False):
    return load_fashionmnist(root, split, download)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPECS = {
    'cifar10': Spec(
        size=32, maxpool=False, size_class='32px', mean=CIFAR_MEAN, std=CIFAR_STD, num_classes=10,
        recipe=CIFAR_VIEW, splits=('train', 'train', 'test'), reader=_cifar('cifar10'),
        layout='cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (CIFAR-10 python version)',
        url='https://www.cs.toronto.edu/~kriz/cifar.html'),
    'cifar100': Spec(
        size=32, maxpool=False, size_class='32px', mean=CIFAR_MEAN, std=CIFAR_STD,  # CIFAR-10's: a quirk we keep
        num_classes=100, recipe=CIFAR_VIEW, splits=('train', 'train', 'test'), reader=_cifar('cifar100'),
        layout='cifar-100-python/{train, test, meta} (CIFAR-100 python version)',
        url='https://www.cs.toronto.edu/~kriz/cifar.html'),
    'stl10': Spec(
        size=64, maxpool=True, size_class='64px', mean=(0.43, 0.42, 0.39), std=(0.27, 0.26, 0.27), num_classes=10,
        recipe=VIEW_64PX, splits=('train+unlabeled', 'train', 'test'), reader=_stl10, eval_resize=70,
        layout='stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin}',
        url='https://cs.stanford.edu/~acoates/stl10/'),
    'tiny_imagenet': Spec(
        size=64, maxpool=True, size_class='64px', mean=(0.480, 0.448, 0.398), std=(0.277, 0.269, 0.282),
        num_classes=200, recipe=VIEW_64PX, splits=('train', 'train', 'val'), reader=_tiny_imagenet,
        layout='tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, '
               'val/val_annotations.txt} (the official zip, unpacked)',
        url='http://cs231n.stanford.edu/tiny-imagenet-200.zip'),
    'fashionmnist': Spec(
        size=32, maxpool=False, size_class='32px', mean=(0.2860,) * 3, std=(0.3530,) * 3, num_classes=10,
        recipe=CIFAR_VIEW, splits=('train', 'train', 'test'), reader=_fashionmnist,
        layout='FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] '
               '(or apt-get install dataset-fashion-mnist)',
        url='https://github.com/zalandoresearch/fashion-mnist'),
    'imagenet': Spec(
        size=224, maxpool=True, size_class='imagenet', mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=1000,
        recipe=IMAGENET_VIEWS, splits=('train', 'train', 'val'), reader=None, eval_resize=256,
        layout='{train,val}/<wnid>/*.JPEG (ImageFolder layout; --data_root is the ImageNet folder itself)',
        url='https://www.image-net.org',
        protocol='imagenet', optimizer='lars', lr_shed='cosine_exact', projector='8192-8192-8192', ref_world_size=8),
}
IN_MEMORY = tuple(sorted(n for n, s in SPECS.items() if s.in_memory))  # read into memory: the small data sets
# Your own images (folder_data.py): a row resolved per run from --data_root and --image_size.
FOLDER = 'folder'
DATASETS = tuple(sorted([*SPECS, FOLDER]))  # every --dataset choice
_FOLDER_ROW = {}  # the folder row resolved last in this process, by what it was resolved from


def spec_of(dataset, read_folder=True):
    """The registry row of `dataset`: a name, or a command's parsed arguments (a Namespace or an
    args.json dict) naming it in `dataset`. 'folder' has no static row: spec_of(args) resolves it
    (folder_data.resolve_folder) from args.data_root, image_size, folder_labels, max_memory_gb and
    subset, once for the same values, and spec_of('folder') is then that row. read_folder=False:
    the row of what the settings alone decide (stem, views, size class; no classes, no reader),
    for defaults and checks made before the folder is read and for a checkpoint's stem."""
    name = dataset if isinstance(dataset, str) else _arg(dataset, 'dataset')
    if name != FOLDER:
        if name not in SPECS:
            raise MixBTError(f'unknown data set {name!r}; choose one of {list(DATASETS)}')
        return SPECS[name]
    if isinstance(dataset, str):
        if not _FOLDER_ROW:
            raise MixBTError("the folder row is resolved from a command's --data_root and --image_size: call "
                             'data.spec_of(args) first')
        return next(iter(_FOLDER_ROW.values()))
    from mixbt import folder_data
    if not read_folder:
        key = (None, _arg(dataset, 'image_size'))
        make = lambda: folder_data.folder_spec(key[1])
    else:
        key = (os.path.realpath(_arg(dataset, 'data_root')), _arg(dataset, 'image_size'),
               _arg(dataset, 'folder_labels', 'auto'), _arg(dataset, 'max_memory_gb', folder_data.MAX_MEMORY_GB),
               _arg(dataset, 'subset', 0) or 0)
        make = lambda: folder_data.resolve_folder(*key)
    if key not in _FOLDER_ROW:
        row = make()
        _FOLDER_ROW.clear()
        _FOLDER_ROW[key] = row
    return _FOLDER_ROW[key]


def _arg(args, key, default=None):
    value = args.get(key) if isinstance(args, dict) else getattr(args, key, None)
    return default if value is None else value


# ---------------------------------------------------------------- pipelines (--pipeline)
@dataclass(frozen=True)
class Pipeline:
    """The SSL views of a run and the mean/std that its training views and its evaluation inputs
    (kNN monitor, linear evaluation) are normalised with. The evaluation geometry (eval_resize)
    stays the registry row's: the W-MSE code's is the same (STL-10 Resize(70) + CenterCrop(64))."""
    recipe: Recipe
    mean: tuple
    std: tuple


# The W-MSE code's own data sets (htdt/self-supervised datasets/*.py, run unchanged by mix-bt's
# ssl-sota/ for the paper's SimCLR, BYOL and W-MSE numbers; docs/protocol.md section 6): on every
# data set ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 and RandomGrayscale(0.1) come first, then
# RandomResizedCrop(size, scale (0.2, 1), ratio (3/4, 4/3), bicubic) and the flip, 32 px on CIFAR
# too; CIFAR-100 has its own statistics. No Fashion-MNIST, and its ImageNet is ImageNet-100: none here.
WMSE_VIEW_32PX = Recipe(32, scale=(0.2, 1.0), kernel='bicubic', gray_p=0.1, color_first=True)
WMSE_VIEW_64PX = Recipe(64, scale=(0.2, 1.0), kernel='bicubic', gray_p=0.1, color_first=True)
WMSE_PIPELINE = {
    'cifar10': Pipeline(WMSE_VIEW_32PX, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    'cifar100': Pipeline(WMSE_VIEW_32PX, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    'stl10': Pipeline(WMSE_VIEW_64PX, (0.43, 0.42, 0.39), (0.27, 0.26, 0.27)),
    'tiny_imagenet': Pipeline(WMSE_VIEW_64PX, (0.480, 0.448, 0.398), (0.277, 0.269, 0.282)),
}
PIPELINES = ('mixbt', 'wmse')


def select_pipeline(name, pipeline='mixbt'):
    """The views and normalisation of data set `name` under --pipeline: 'mixbt' is the registry
    row's own (section 3), 'wmse' the W-MSE code's (WMSE_PIPELINE)."""
    if pipeline == 'mixbt':
        spec = spec_of(name)
        return Pipeline(spec.recipe, spec.mean, spec.std)
    if pipeline == 'wmse':
        if name not in WMSE_PIPELINE:
            raise MixBTError(f'--pipeline wmse: the W-MSE code has no {name} pipeline; use --pipeline mixbt '
                             f'or one of {sorted(WMSE_PIPELINE)}')
        return WMSE_PIPELINE[name]
    raise MixBTError(f'unknown --pipeline {pipeline!r}; choose one of {list(PIPELINES)}')


def load_splits(name, root, splits, subset=0, **kwargs):
    """ArrayData of each of `splits` (a split named twice is read once), each cut to its first
    `subset` images when given; kwargs go to load()."""
    loaded = {}
    for split in splits:
        if split not in loaded:
            loaded[split] = load(name, root, split, subset=subset, **kwargs)
    return [loaded[split] for split in splits]


def load(name, root='data', split='train', download=False, workers=0, skip_bad=False, subset=0):
    """The `split` of in-memory data set `name` as ArrayData, cut to its first `subset` images when
    given (a folder decodes only those); skip_bad: leave out unreadable image files."""
    spec = spec_of(name)
    if not spec.in_memory:
        raise MixBTError(f'{name} is an image folder, not an in-memory data set; use image_folder()')
    if getattr(spec.reader, 'takes_subset', False):
        return spec.reader(root, split, download, workers, skip_bad=skip_bad, subset=subset)
    d = spec.reader(root, split, download, workers, skip_bad=skip_bad)
    return ArrayData(d.images[:subset], d.labels[:subset], d.classes) if subset else d
