"""Decoding the on-disk formats, with errors that name the file: idx arrays, image files (one by
one or in parallel, optionally skipping the unreadable ones with a count; or decoded on access
in DataLoader workers, LazyImages) and the corrupt-file error shared by every reader of readers.py,
folder_data.py and transfer_data.py.
"""
import gzip
import multiprocessing
import os
import struct
import zlib

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps

from mixbt.errors import MixBTError


class CorruptData(MixBTError):
    """A data file that is there but is not what its format says: truncated, wrong size, foreign."""


def _one_line(e):
    return ' '.join(str(e).split())


def corrupt(name, path, problem, fix='delete it and fetch it again (--download)', layout=''):
    """CorruptData in one line: the data set, the file, what is wrong (expected vs found), the fix
    and, when given, the layout --data_root must hold."""
    layout = f'; check that --data_root holds {layout}' if layout else ''
    return CorruptData(f'{name}: {path} is truncated or corrupt: {problem}; {fix}{layout}')


def read_idx(path, name='idx', fix='delete it and fetch it again (--download)'):
    """An idx file (MNIST family), gzip-compressed or not, as a numpy array. A cut-off gzip
    stream, a foreign file or a payload of another size than the header's dimensions is
    CorruptData naming the file and the sizes (data set `name`)."""
    try:
        with (gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')) as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # cut off, not gzip at all, damaged inside
        raise corrupt(name, path, f'cannot decompress it ({type(e).__name__}: {_one_line(e)})',
                      fix) from None
    if len(data) < 4 or data[:3] != b'\x00\x00\x08' or data[3] == 0:
        raise corrupt(name, path, f'not an unsigned-byte idx file (first bytes 0x{data[:4].hex()}, '
                                  'expected 0x000008 and the number of dimensions)', fix)
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise corrupt(name, path, f'{len(data)} bytes, shorter than its {header}-byte header', fix)
    shape = struct.unpack('>' + 'I' * ndim, data[4:header])
    expected, found = int(np.prod(shape, dtype=np.int64)), len(data) - header
    if found != expected:
        raise corrupt(name, path, f'its header says {"x".join(map(str, shape))} = {expected} bytes of data, found '
                                  f'{found}', fix)
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def find_idx(folders, stem):
    for folder in folders:
        for name in (stem, stem + '.gz'):
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    return None


class BadImage(MixBTError):
    """An image file that cannot be decoded, named in one line.

    A DataLoader worker's exception comes back to the main process as type(e)('Caught BadImage in
    DataLoader worker process 0.\\nOriginal Traceback ...\\ndata.BadImage: <message>'): keep <message>."""

    def __init__(self, message):
        if message.startswith('Caught ') and '\nOriginal Traceback' in message:
            message = message.rstrip().splitlines()[-1].partition(': ')[2] or message
        super().__init__(message)


# What PIL raises for junk bytes, a cut-off file or an absurd header (UnidentifiedImageError is an OSError).
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
SKIP_HINT = 'pass --skip_bad_images to go on without them'


def _why(e, path=None):
    if path is not None and os.path.isfile(path) and os.path.getsize(path) == 0:
        return 'an empty file (0 bytes)'
    if isinstance(e, Image.UnidentifiedImageError):  # its message repeats the path (or a file object's repr)
        return f'{type(e).__name__}: not a format PIL can read'
    return f'{type(e).__name__}: {_one_line(e)}'


def read_image(path, fit=None):
    """An image file as uint8 (H, W, 3) RGB. With fit=S: turned upright by its EXIF orientation,
    then the centred square of its short side resized to S x S (bicubic; PIL antialiases when it
    shrinks). A JPEG is decoded at the smallest DCT scale that keeps both sides >= S (draft): a
    folder of camera photos decodes several times faster, and the square is still resampled from
    more pixels than it keeps."""
    with Image.open(path) as img:
        if fit is None:
            return np.asarray(img.convert('RGB'))
        img.draft('RGB', (fit, fit))
        upright = ImageOps.exif_transpose(img)
        return np.asarray(ImageOps.fit(upright.convert('RGB'), (fit, fit), Image.Resampling.BICUBIC))


class _Decode(torch.utils.data.Dataset):
    """(uint8 (H, W, 3) tensor, None), or (None, why) for a file that cannot be decoded as `shape`
    (fit: read_image's square of that size)."""

    def __init__(self, paths, shape=None, fit=None):
        self.paths, self.shape, self.fit = paths, shape, fit

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            array = read_image(self.paths[i], self.fit)
        except UNREADABLE as e:
            return None, _why(e, self.paths[i])
        if self.shape is not None and array.shape != tuple(self.shape):
            return None, f'{array.shape[1]}x{array.shape[0]} pixels, expected {self.shape[1]}x{self.shape[0]}'
        return torch.from_numpy(array.copy()), None


def _stack_decoded(items):
    """A worker's batch: its decoded images as one tensor (one shared-memory block per batch, not
    one per image) and the positions and reasons of the files that failed."""
    ok = [i for i, (x, _) in enumerate(items) if x is not None]
    failed = [(i, why) for i, (x, why) in enumerate(items) if x is None]
    return ok, torch.stack([items[i][0] for i in ok]) if ok else None, failed


def decode_images(paths, workers=0, shape=None, skip_bad=False, name='images', fit=None):
    """Decode image files of one shape (default: the first readable file's; with fit=S every file
    becomes read_image's S x S square) into one uint8 (N, H, W, 3) array, in parallel. Returns
    (images, kept): kept indexes the paths decoded.

    A file that cannot be decoded or has another shape raises BadImage naming it and how many
    there are; with skip_bad it is left out and a line reports how many."""
    if fit is not None:
        shape = (fit, fit, 3)
    if shape is None:
        probe = _Decode(paths)
        shape = next((tuple(x.shape) for x, _ in map(probe.__getitem__, range(len(paths))) if x is not None), None)
    batch = 256
    loader = torch.utils.data.DataLoader(_Decode(paths, shape, fit), batch_size=batch, num_workers=workers,
                                         collate_fn=_stack_decoded)
    parts, kept, bad = [], [], []
    for b, (ok, images, failed) in enumerate(loader):
        if images is not None:
            parts.append(images.numpy())
            kept.extend(b * batch + i for i in ok)
        bad.extend((paths[b * batch + i], why) for i, why in failed)
    if bad:
        what = f'{name}: {len(bad)} of the {len(paths)} images cannot be read, first {bad[0][0]} ({bad[0][1]})'
        if not kept:
            raise BadImage(f'{what}; none is left, fetch the data set again')
        if not skip_bad:
            raise BadImage(f'{what}; fetch the data set again, delete the bad files, or {SKIP_HINT}')
        print(f'{what}; going on without them (--skip_bad_images)', flush=True)
    images = np.concatenate(parts) if parts else np.zeros((0,) + (shape or (1, 1, 3)), np.uint8)
    return images, np.asarray(kept, dtype=np.int64)


class SkipCounter:
    """How many unreadable images a data set replaced, and the first one's path, in shared memory
    that DataLoader workers inherit (fork) or receive when they start (spawn): the main process
    sees every worker's skips."""

    def __init__(self):
        # A spawn-context lock also works in forked workers; a fork-context one cannot go to spawned ones.
        shared = multiprocessing.get_context('spawn')
        self.count = shared.Value('q', 0)
        self.first = shared.Array('c', 4096, lock=False)  # written under count's lock

    def add(self, path):
        with self.count.get_lock():
            if not self.count.value:
                self.first.value = os.fsencode(path)[:4095]
            self.count.value += 1

    def take(self):
        """(count, first path) since the last call; resets both."""
        with self.count.get_lock():
            count, first = self.count.value, os.fsdecode(self.first.value) or None
            self.count.value, self.first.value = 0, b''
        return count, first


def read_or_next(read, path_of, n, index, skip_bad, counter, name, where, fix='fetch it again or delete it',
                 fix_all='fetch the data set again'):
    """(index, read(path_of(index))) of item `index` of n. An unreadable file raises BadImage naming
    it; with skip_bad it is counted in `counter` and the next readable item (wrapping around) is
    returned with its own index, so that its label goes with it."""
    path = path_of(index)
    try:
        return index, read(path)
    except UNREADABLE as e:
        why = _why(e, path)
    if not skip_bad:
        raise BadImage(f'{name}: cannot read image {path} ({why}); {fix}, '
                       f'or {SKIP_HINT} (each replaced by the next readable image and counted)')
    counter.add(path)
    for offset in range(1, n):
        j = (index + offset) % n
        try:
            return j, read(path_of(j))
        except UNREADABLE as e:
            path, why = path_of(j), _why(e, path_of(j))
    raise BadImage(f'{name}: none of the {n} images under {where} can be read, e.g. {path} ({why}); {fix_all}')


class CheckedImageFolder(torchvision.datasets.ImageFolder):
    """An ImageFolder whose unreadable image (junk bytes, a cut-off file) raises BadImage naming
    the file, or, with skip_bad, is replaced by the next readable image and counted (SkipCounter:
    read and reset with take_skipped_images() at the end of an epoch)."""

    def __init__(self, root, transform=None, skip_bad=False, name='imagenet'):
        super().__init__(root, transform)
        self.skip_bad, self.name = skip_bad, name
        self.skips = SkipCounter()

    def __getitem__(self, index):
        index, sample = read_or_next(self.loader, lambda i: self.samples[i][0], len(self.samples), index,
                                     self.skip_bad, self.skips, self.name, self.root)
        target = self.samples[index][1]
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target

    def take_skipped(self):
        return self.skips.take()


class LazyImages:
    """uint8 images (N, S, S, 3) kept as file paths and decoded on access (read_image's S x S
    square): for image sets too large to hold in memory. One index decodes one image (in the
    DataLoader worker that asks for it: augment.ArrayDataset works unchanged), a slice is another
    LazyImages, an index array a decoded stack. An unreadable file is as in CheckedImageFolder:
    BadImage naming it, or with skip_bad the next readable image, counted (take_skipped). Turning
    the whole set into an array (np.asarray) is refused with `in_memory_hint`: that is what
    streaming avoids."""
    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, paths, size, skip_bad=False, name='images', where='', in_memory_hint='', skips=None):
        self.paths, self.size, self.skip_bad = list(paths), size, skip_bad
        self.name, self.where, self.in_memory_hint = name, where, in_memory_hint
        self.skips = skips or SkipCounter()

    def __len__(self):
        return len(self.paths)

    @property
    def shape(self):
        return (len(self.paths), self.size, self.size, 3)

    def _read(self, path):
        return read_image(path, self.size)

    def _one(self, i):
        return read_or_next(self._read, self.paths.__getitem__, len(self.paths), i, self.skip_bad, self.skips,
                            self.name, self.where, fix='replace it or delete it',
                            fix_all='check the files (PIL must open them)')[1]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return LazyImages(self.paths[index], self.size, self.skip_bad, self.name, self.where,
                              self.in_memory_hint, self.skips)
        if isinstance(index, (int, np.integer)):
            i = int(index) + (len(self.paths) if index < 0 else 0)
            if not 0 <= i < len(self.paths):
                raise IndexError(f'image {index} of {len(self.paths)}')
            return self._one(i)
        idx = np.asarray(index)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64).reshape(-1)
        if not len(idx):
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        return np.stack([self[int(i)] for i in idx])

    def __array__(self, dtype=None, copy=None):
        raise MixBTError(f'{self.name}: {len(self)} images are streamed from disk and cannot become one array in '
                         f'memory here{"; " + self.in_memory_hint if self.in_memory_hint else ""}')

    def take_skipped(self):
        return self.skips.take()


def take_skipped_images(dataset):
    """(count, first path) of the unreadable images `dataset` replaced since the last call, and
    resets the count; (0, None) for a data set that never skips (in-memory arrays). Looks through
    torch Subset wrappers and into an augment.ArrayDataset's LazyImages. Each process (DDP rank)
    counts its own loader's skips."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    images = getattr(getattr(dataset, 'data', None), 'images', None)
    for source in (dataset, images):
        if isinstance(source, (CheckedImageFolder, LazyImages)):
            return source.take_skipped()
    return 0, None
