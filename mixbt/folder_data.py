"""--dataset folder: pretraining and evaluation on a folder of your own images (docs/own-images.md).

Layouts, told apart by --folder_labels (auto: labelled when ROOT holds class subfolders and no
image directly):
* labelled: one subfolder per class, ImageFolder style, images at any depth inside it (ROOT/train/
  <class>/ works too). ROOT/val/<class>/ is the test split when present; otherwise HELD_OUT of each
  class is held out with a fixed seed, so every tool (main.py, linear.py, evaluate.py, visualize.py)
  sees the same split.
* unlabelled: images directly in ROOT (found at any depth), or any tree with --folder_labels none.
  Pretraining only: the monitors that need labels are skipped.

A folder has no static registry row: resolve_folder builds one per run from --image_size (stem,
views and size class of the matching static row, FAMILY) and from what the folder holds (classes,
whether its images fit in --max_memory_gb). Images are decoded once to S x S squares (formats.
read_image: upright, centre square of the short side, bicubic) and kept as uint8, or when they do
not fit, streamed: the same decoding in the DataLoader workers, every epoch.
"""
import dataclasses
import hashlib
import os
import zlib
from dataclasses import dataclass

import numpy as np
import torchvision

from mixbt.data import FOLDER, SPECS, Spec
from mixbt.errors import MixBTError
from mixbt.formats import SKIP_HINT, BadImage, LazyImages, decode_images
from mixbt.identity import read_json
from mixbt.readers import ArrayData, DatasetNotFound, Source

LABEL_MODES = ('auto', 'subfolders', 'none')
IMAGE_EXTENSIONS = tuple(torchvision.datasets.folder.IMG_EXTENSIONS)  # what ImageFolder reads
HELD_OUT = 0.1        # of each class, when there is no val/ folder
SPLIT_SEED = 0        # fixed, not --seed: every tool and every run sees the same split
MAX_MEMORY_GB = 4.0   # per process: each DDP rank holds its own copy
MIN_IMAGE_SIZE = 8    # the 32 px stem's layer4 is 1 x 1 there
LAYOUT = ('<class>/**/*.jpg|png|... per class (an optional val/<class>/ is the test split), '
          'or images directly in it (unlabelled)')


def family(image_size):
    """The static row whose stem, views and size class a folder at `image_size` takes: about 32 px
    the CIFAR stem and views, about 64 px the STL-10/Tiny-ImageNet ones, 96 px and up ImageNet's."""
    return 'cifar10' if image_size < 48 else 'tiny_imagenet' if image_size < 96 else 'imagenet'


def _unresolved(*args, **kwargs):
    raise MixBTError('this folder row knows no folder (built by folder_spec alone); resolve it from the '
                     'command line with data.spec_of(args)')


def folder_spec(image_size, num_classes=0, labelled=True, streamed=False, reader=_unresolved, identity=''):
    """The registry row of a folder of images at `image_size` px: the stem, the SSL views (at
    image_size) and the size class of family(image_size); ImageNet's normalisation (photos of
    unknown statistics); evaluation on the stored squares as they are."""
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise MixBTError(f'--image_size {image_size}: a folder of images needs at least {MIN_IMAGE_SIZE} px '
                         '(about 32: CIFAR stem and views, 64: STL-10/Tiny-ImageNet, 96 and up: ImageNet)')
    base, imagenet = SPECS[family(image_size)], SPECS['imagenet']
    splits = ('train', 'train', 'val') if labelled else ('train',) * 3
    return Spec(size=image_size, maxpool=base.maxpool, size_class=base.size_class, mean=imagenet.mean,
                std=imagenet.std, num_classes=num_classes, recipe=dataclasses.replace(base.recipe, size=image_size),
                splits=splits, reader=reader, source=Source(LAYOUT, ''), eval_resize=0, labelled=labelled,
                streamed=streamed, identity=identity)  # the small-data recipe (Spec's defaults), at any size


# ---------------------------------------------------------------- what the folder holds
@dataclass
class FolderIndex:
    root: str             # real path
    labelled: bool
    classes: list
    train: tuple          # (paths, int64 labels), in a seeded order: --subset N takes a sample of every class
    test: tuple           # labelled: ROOT/val/ or the held-out part; unlabelled: empty
    test_from: str        # the val/ folder, or '' for the held-out part
    ignored: list         # files that are not images
    fingerprint: str      # sha256 of every file's split, label, path, size and modification time


def _hidden(name):
    return name.startswith('.')


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _subfolders(folder):
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not _hidden(e.name))


def _direct_images(folder):
    return sorted(e.path for e in os.scandir(folder) if e.is_file() and not _hidden(e.name) and _is_image(e.name))


def _files(folder):
    """(image files, other files) at any depth under `folder`, sorted, hidden ones left out."""
    images, others = [], []
    for path, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for name in sorted(names):
            if not _hidden(name):
                (images if _is_image(name) else others).append(os.path.join(path, name))
    return images, others


def _no_labels_fix():
    return 'or pass --folder_labels none to pretrain on its images without labels'


def _class_files(base, classes, ignored, what):
    paths, labels = [], []
    for label, name in enumerate(classes):
        images, others = _files(os.path.join(base, name))
        ignored += others
        if not images:
            raise MixBTError(f'folder: {what} folder {os.path.join(base, name)} holds no images '
                             f'({", ".join(IMAGE_EXTENSIONS)}): add images to it or remove it')
        paths += images
        labels += [label] * len(images)
    return paths, labels


def _held_out(paths, labels, classes):
    """(train, test) positions: HELD_OUT of each class (at least one of a class of 2 or more), each
    class drawn with a seed of its own name, so that adding a class leaves the others' split alone."""
    labels = np.asarray(labels)
    train, test = [], []
    for label, name in enumerate(classes):
        members = np.flatnonzero(labels == label)
        n = len(members)
        k = 0 if n < 2 else min(n - 1, max(1, int(HELD_OUT * n + 0.5)))
        order = np.random.default_rng([SPLIT_SEED, zlib.crc32(name.encode())]).permutation(n)
        test += members[order[:k]].tolist()
        train += members[order[k:]].tolist()
    return sorted(train), sorted(test)


def _scan_labelled(root, direct):
    if direct:
        raise MixBTError(f'folder: {root} holds {len(direct)} images directly (e.g. {direct[0]}) besides class '
                         f'subfolders: move them into the subfolder of their class, {_no_labels_fix()}')
    base = os.path.join(root, 'train') if os.path.isdir(os.path.join(root, 'train')) else root
    classes = [c for c in _subfolders(base) if base != root or c != 'val']
    if base != root and _direct_images(base):
        raise MixBTError(f'folder: {base} holds images directly (e.g. {_direct_images(base)[0]}): move them into '
                         f'the subfolder of their class, {_no_labels_fix()}')
    if len(classes) < 2:
        raise MixBTError(f'folder: {base} has {len(classes)} class subfolder{"" if len(classes) == 1 else "s"}'
                         f'{" (" + classes[0] + ")" if classes else ""}; a labelled folder needs at least 2 classes: '
                         f'add one subfolder per class, {_no_labels_fix()}')
    ignored = []
    paths, labels = _class_files(base, classes, ignored, 'class')
    val = os.path.join(root, 'val')
    if not os.path.isdir(val):
        train, test = _held_out(paths, labels, classes)
        pick = lambda rows: ([paths[i] for i in rows], [labels[i] for i in rows])
        return classes, pick(train), pick(test), '', ignored
    unknown = [c for c in _subfolders(val) if c not in classes]
    if unknown or _direct_images(val):
        what = f'{os.path.join(val, unknown[0])} is not a class of {base}' if unknown else 'it holds images directly'
        raise MixBTError(f'folder: {val} is the test split and must hold class subfolders named as the training '
                         f'ones ({", ".join(classes[:5])}{" ..." if len(classes) > 5 else ""}); {what}: rename or '
                         f'move it, or remove {val} to hold out {HELD_OUT:.0%} of each class instead')
    val_classes = _subfolders(val)
    test_paths, test_labels = _class_files(val, val_classes, ignored, 'test class')
    index = {c: i for i, c in enumerate(classes)}
    test_labels = [index[val_classes[label]] for label in test_labels]
    return classes, (paths, labels), (test_paths, test_labels), val, ignored


def _fingerprint(parts):
    digest = hashlib.sha256()
    for split, (paths, labels) in parts:
        for path, label in zip(paths, labels):
            st = os.stat(path)
            digest.update(f'{split}\t{label}\t{path}\t{st.st_size}\t{st.st_mtime_ns}\n'.encode('utf-8', 'surrogateescape'))
    return digest.hexdigest()


def _seeded_order(paths, labels):
    order = np.random.default_rng(SPLIT_SEED).permutation(len(paths))
    return [paths[i] for i in order], np.asarray(labels, dtype=np.int64)[order]


def scan_folder(root, labels='auto'):
    """FolderIndex of the images under `root` (see the module's docstring for the layouts)."""
    if labels not in LABEL_MODES:
        raise MixBTError(f'--folder_labels {labels!r}: choose one of {", ".join(LABEL_MODES)}')
    if not os.path.isdir(root):
        raise DatasetNotFound(f'folder: no folder {os.path.abspath(root)}; point --data_root at the folder of your '
                              f'images: {LAYOUT}')
    root = os.path.realpath(root)
    direct = _direct_images(root)
    labelled = labels == 'subfolders' or (labels == 'auto' and not direct and bool(_subfolders(root)))
    if labelled:
        classes, train, test, test_from, ignored = _scan_labelled(root, direct)
    else:
        images, ignored = _files(root)
        classes, train, test, test_from = [], (images, [-1] * len(images)), ([], []), ''
    if not train[0]:
        found = f'; it holds {len(ignored)} other files, e.g. {ignored[0]}' if ignored else ''
        raise DatasetNotFound(f'folder: no images under {root} ({", ".join(IMAGE_EXTENSIONS)}){found}; point '
                              f'--data_root at the folder of your images: {LAYOUT}')
    fingerprint = _fingerprint([('train', train), ('test', test)])
    return FolderIndex(root, labelled, classes, _seeded_order(*train), _seeded_order(*test), test_from, ignored,
                       fingerprint)


# ---------------------------------------------------------------- the row of a run
def resolve_folder(root, image_size, labels='auto', max_memory_gb=MAX_MEMORY_GB, subset=0):
    """The registry row of the folder at `root` for a run at `image_size` px: its classes, and
    streamed when the images it loads (the first `subset` of each split, when given) need more
    than `max_memory_gb` as uint8 S x S x 3."""
    if not max_memory_gb >= 0 or max_memory_gb == float('inf'):
        raise MixBTError(f'--max_memory_gb {max_memory_gb} must be a number >= 0 (0: always stream)')
    folder_spec(image_size)  # the size check, before the folder is read
    index = scan_folder(root, labels)
    used = lambda n: min(n, subset) if subset else n
    nbytes = (used(len(index.train[0])) + used(len(index.test[0]))) * image_size * image_size * 3
    streamed = nbytes > max_memory_gb * 1e9
    identity = hashlib.sha256(f'{index.fingerprint} {image_size} {labels} {HELD_OUT} {SPLIT_SEED}'.encode()).hexdigest()
    reader = FolderReader(index, image_size, streamed, nbytes, max_memory_gb)
    return folder_spec(image_size, len(index.classes), index.labelled, streamed, reader, identity)


def _size(nbytes):
    for unit, scale in (('GB', 1e9), ('MB', 1e6)):
        if nbytes >= scale:
            return f'{nbytes / scale:.1f} {unit}' if unit == 'GB' else f'{nbytes / scale:.0f} {unit}'
    return f'{nbytes / 1e3:.0f} kB'


class FolderReader:
    """The reader of a resolved folder row, as data.SPECS readers are called, plus `subset` (only
    the first N images of the split are decoded). Splits: 'train', and 'val' (the test split) of a
    labelled folder."""
    takes_subset = True

    def __init__(self, index, size, streamed, nbytes, max_memory_gb):
        self.index, self.size, self.streamed = index, size, streamed
        self.nbytes, self.max_memory_gb = nbytes, max_memory_gb

    def __call__(self, root, split='train', download=False, workers=0, skip_bad=False, subset=0):
        if os.path.realpath(root) != self.index.root:
            raise MixBTError(f'folder: this row was resolved for {self.index.root}, not {root}; resolve it again '
                             'with data.spec_of(args)')
        if split not in ('train', 'val') or (split == 'val' and not self.index.labelled):
            raise MixBTError(f'folder: no split {split!r}' + ('' if self.index.labelled else
                                                              f' ({self.index.root} is unlabelled: train only)'))
        paths, labels = self.index.train if split == 'train' else self.index.test
        if subset:
            paths, labels = paths[:subset], labels[:subset]
        if split == 'train' and int(os.environ.get('RANK', '0')) == 0:
            print(self.summary(len(paths), min(subset or len(self.index.test[0]), len(self.index.test[0]))),
                  flush=True)
        name = f'folder {split}'
        # A caller that cuts after loading (no subset here) may ask for more than the row was sized for.
        if not self.streamed and len(paths) * self.size ** 2 * 3 <= self.max_memory_gb * 1e9:
            images, kept = decode_images(paths, workers, skip_bad=skip_bad, name=name, fit=self.size)
            return ArrayData(images, labels[kept], list(self.index.classes))
        paths, labels = self._without_empty_files(paths, labels, skip_bad, name)
        hint = (f'they need {_size(self.nbytes)}: raise --max_memory_gb ({self.max_memory_gb:g}) or pass --subset N; '
                '--aug gpu needs them in memory, use --aug cpu')
        return ArrayData(LazyImages(paths, self.size, skip_bad, name, self.index.root, hint), labels,
                         list(self.index.classes))

    def _without_empty_files(self, paths, labels, skip_bad, name):
        """Streamed: the empty files (found at no cost in the scan) are named before any work; the
        other unreadable files when a worker meets them (BadImage, or replaced and counted)."""
        empty = [i for i, p in enumerate(paths) if os.path.getsize(p) == 0]
        if not empty:
            return paths, labels
        what = f'{name}: {len(empty)} of the {len(paths)} images are empty files (0 bytes), first {paths[empty[0]]}'
        if len(empty) == len(paths):
            raise BadImage(f'{what}; none is left, check the files under {self.index.root}')
        if not skip_bad:
            raise BadImage(f'{what}; replace or delete them, or {SKIP_HINT}')
        print(f'{what}; going on without them (--skip_bad_images)', flush=True)
        keep = np.setdiff1d(np.arange(len(paths)), empty)
        return [paths[i] for i in keep], labels[keep]

    def summary(self, n_train, n_test):
        """The one line a run prints when it loads the folder."""
        index, size = self.index, self.size
        style = {'cifar10': 'CIFAR', 'tiny_imagenet': 'STL-10/Tiny-ImageNet', 'imagenet': 'ImageNet'}[family(size)]
        if index.labelled:
            test = (f'test split {index.test_from} ({n_test:,} images)' if index.test_from else
                    f'test split: {HELD_OUT:.0%} of each class held out ({n_test:,} images, fixed seed: every tool '
                    f'sees the same split; a val/ folder replaces it)')
            what = f'{n_train:,} training images in {len(index.classes)} classes, {test}'
        else:
            what = (f'{n_train:,} unlabelled images (images directly in it, or --folder_labels none): the kNN '
                    'monitor and the visuals need labels and are skipped')
        where = (f'{_size(self.nbytes)} over --max_memory_gb {self.max_memory_gb:g}: streamed, decoded in the '
                 'DataLoader workers every epoch' + (' (the kNN monitor and the visuals need the images in memory '
                                                     'and are skipped)' if index.labelled else '')
                 if self.streamed else f'{_size(self.nbytes)} in memory')
        ignored = (f'; {len(index.ignored)} files that are not images left out, e.g. {index.ignored[0]}'
                   if index.ignored else '')
        return (f'folder: {index.root}: {what}; {size} px squares (centre crop), {style} stem and views; '
                f'{where}{ignored}')


# ---------------------------------------------------------------- the tools' side
def add_folder_args(parser, evaluation=False):
    """--folder_labels and --max_memory_gb (main.py has its own --image_size). evaluation: for
    the tools that evaluate a checkpoint, also --image_size, and all three default to the
    pretraining run's (None until run_settings fills them)."""
    a = parser.add_argument
    if evaluation:
        a('--image_size', default=None, type=int,
          help="--dataset folder: the image size the checkpoint was pretrained at (default: its run's args.json)")
    a('--folder_labels', default=None if evaluation else 'auto', choices=LABEL_MODES,
      help='--dataset folder: subfolders = one subfolder per class; none = unlabelled (pretraining only); auto = '
           'labelled when --data_root holds subfolders and no image directly' + (" (default: the run's)" if
                                                                                 evaluation else ''))
    a('--max_memory_gb', default=None if evaluation else MAX_MEMORY_GB, type=float,
      help='--dataset folder: decode the images into memory (uint8) when they need at most this much per '
           'process, else stream them (decoded in the DataLoader workers every epoch)' + (
               " (default: the run's)" if evaluation else ''))


def require(spec, what, labels=True, in_memory=False):
    """MixBTError (one line, with the way out) when `what` (a tool or a part of one) needs labels
    or images held in memory that the folder row `spec` does not have; nothing for other rows."""
    reader = spec.reader if isinstance(spec.reader, FolderReader) else None
    if reader is None:
        return
    if labels and not spec.labelled:
        raise MixBTError(f'{what} needs labelled images, and {reader.index.root} is unlabelled: put its images in '
                         f'one subfolder per class (docs/own-images.md)')
    if in_memory and spec.streamed:
        raise MixBTError(f'{what} needs the images in memory, and {reader.index.root} is streamed '
                         f'({_size(reader.nbytes)} over --max_memory_gb {reader.max_memory_gb:g}): raise '
                         '--max_memory_gb or pass --subset N')


RUN_SETTINGS = ('image_size', 'folder_labels', 'max_memory_gb')


def run_settings(args, checkpoint):
    """An evaluation of a folder checkpoint takes the settings that define its data (RUN_SETTINGS)
    that it leaves unset (None) from the pretraining run (args.json beside `checkpoint`), else
    the defaults; the image size has no default: it picks the stem the checkpoint was trained with."""
    if args.dataset != FOLDER:
        return args
    saved = read_json(os.path.join(os.path.dirname(os.path.abspath(checkpoint)), 'args.json'), "a run's settings")
    saved = saved if isinstance(saved, dict) and saved.get('dataset') == FOLDER else {}
    for key, default in zip(RUN_SETTINGS, (None, 'auto', MAX_MEMORY_GB)):
        if getattr(args, key, None) is None:
            setattr(args, key, saved.get(key, default))
    if args.image_size is None:
        raise MixBTError(f'--dataset folder: give --image_size, the size {checkpoint} was pretrained at (its run '
                         'folder has no args.json that says it)')
    return args
