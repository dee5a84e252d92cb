"""The data-set registry: one Spec row per data set, its view recipes and pipelines, and load
(docs/protocol.md section 3).

`spec_of(name or args)` gives the one row every other module asks about a data set: resolution,
stem, normalisation, augmentation recipe, split roles, size class, reader and source. The static
rows are SPECS; a folder of your own images (--dataset folder) gets its row per run
(folder_data.py). The readers of each set's official on-disk format, and where its files are
(readers.SOURCES), are readers.py's; load and load_splits call a row's reader and give ArrayData.
"""
import os
from dataclasses import dataclass

from mixbt import readers
from mixbt.errors import MixBTError

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
    source: readers.Source  # where its files are: the layout --data_root must hold (error messages), the url
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
    def layout(self):
        """What --data_root must contain, for error messages."""
        return self.source.layout

    @property
    def url(self):
        """Where to get the data set."""
        return self.source.url

    @property
    def in_memory(self):
        """Read into memory by `reader` (ArrayData, or images decoded on access), not an image folder."""
        return self.reader is not None

    @property
    def imagenet_stem(self):
        """The torchvision ResNet stem (7x7 stride-2 convolution, max-pool), not the 3x3 one."""
        return self.size_class == 'imagenet'


# ---------------------------------------------------------------- the registry
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPECS = {
    'cifar10': Spec(
        size=32, maxpool=False, size_class='32px', mean=CIFAR_MEAN, std=CIFAR_STD, num_classes=10,
        recipe=CIFAR_VIEW, splits=('train', 'train', 'test'), reader=readers.cifar_reader('cifar10'),
        source=readers.SOURCES['cifar10']),
    'cifar100': Spec(
        size=32, maxpool=False, size_class='32px', mean=CIFAR_MEAN, std=CIFAR_STD,  # CIFAR-10's: a quirk we keep
        num_classes=100, recipe=CIFAR_VIEW, splits=('train', 'train', 'test'),
        reader=readers.cifar_reader('cifar100'), source=readers.SOURCES['cifar100']),
    'stl10': Spec(
        size=64, maxpool=True, size_class='64px', mean=(0.43, 0.42, 0.39), std=(0.27, 0.26, 0.27), num_classes=10,
        recipe=VIEW_64PX, splits=('train+unlabeled', 'train', 'test'), reader=readers.stl10_reader, eval_resize=70,
        source=readers.SOURCES['stl10']),
    'tiny_imagenet': Spec(
        size=64, maxpool=True, size_class='64px', mean=(0.480, 0.448, 0.398), std=(0.277, 0.269, 0.282),
        num_classes=200, recipe=VIEW_64PX, splits=('train', 'train', 'val'), reader=readers.tiny_imagenet_reader,
        source=readers.SOURCES['tiny_imagenet']),
    'fashionmnist': Spec(
        size=32, maxpool=False, size_class='32px', mean=(0.2860,) * 3, std=(0.3530,) * 3, num_classes=10,
        recipe=CIFAR_VIEW, splits=('train', 'train', 'test'), reader=readers.fashionmnist_reader,
        source=readers.SOURCES['fashionmnist']),
    'imagenet': Spec(
        size=224, maxpool=True, size_class='imagenet', mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=1000,
        recipe=IMAGENET_VIEWS, splits=('train', 'train', 'val'), reader=None, eval_resize=256,
        source=readers.SOURCES['imagenet'],
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
    return readers.ArrayData(d.images[:subset], d.labels[:subset], d.classes) if subset else d


def image_folder(name, root, split, transform=None, skip_bad=False):
    """The `split` of image-folder data set `name` (a row without a reader: ImageNet) as a
    CheckedImageFolder; a missing folder names the row's layout and source."""
    spec = spec_of(name)
    if spec.in_memory:
        raise MixBTError(f'{name} is read into memory, not an image folder; use load()')
    return readers.image_folder(name, root, split, transform, skip_bad, source=spec.source)


def check_image_folder(name, root, splits):
    """Before any run folder is made: the `splits` folders of image-folder data set `name` exist
    (its images are listed and read later, by image_folder); nothing for in-memory rows."""
    spec = spec_of(name)
    for split in () if spec.in_memory else splits:
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            raise readers.not_found(name, root, f'no folder {folder}', spec.source)
