"""Decoding the on-disk formats, with errors that name the file: idx arrays, image files (one by
one or in parallel, optionally skipping the unreadable ones with a count) and the corrupt-file
error shared by every reader of data.py and transfer_data.py.
"""
import gzip
import multiprocessing
import os
import struct
import zlib

import numpy as np
import torch
import torchvision
from PIL import Image

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


def _why(e):
    if isinstance(e, Image.UnidentifiedImageError):  # its message repeats the path (or a file object's repr)
        return f'{type(e).__name__}: not a format PIL can read'
    return f'{type(e).__name__}: {_one_line(e)}'


class _Decode(torch.utils.data.Dataset):
    """(uint8 (H, W, 3) tensor, None), or (None, why) for a file that cannot be decoded as `shape`."""

    def __init__(self, paths, shape=None):
        self.paths, self.shape = paths, shape

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            with Image.open(self.paths[i]) as img:
                array = np.asarray(img.convert('RGB'))
        except UNREADABLE as e:
            return None, _why(e)
        if self.shape is not None and array.shape != tuple(self.shape):
            return None, f'{array.shape[1]}x{array.shape[0]} pixels, expected {self.shape[1]}x{self.shape[0]}'
        return torch.from_numpy(array.copy()), None


def _stack_decoded(items):
    """A worker's batch: its decoded images as one tensor (one shared-memory block per batch, not
    one per image) and the positions and reasons of the files that failed."""
    ok = [i for i, (x, _) in enumerate(items) if x is not None]
    failed = [(i, why) for i, (x, why) in enumerate(items) if x is None]
    return ok, torch.stack([items[i][0] for i in ok]) if ok else None, failed


def decode_images(paths, workers=0, shape=None, skip_bad=False, name='images'):
    """Decode image files of one shape (default: the first readable file's) into one uint8
    (N, H, W, 3) array, in parallel. Returns (images, kept): kept indexes the paths decoded.

    A file that cannot be decoded or has another shape raises BadImage naming it and how many
    there are; with skip_bad it is left out and a line reports how many."""
    if shape is None:
        probe = _Decode(paths)
        shape = next((tuple(x.shape) for x, _ in map(probe.__getitem__, range(len(paths))) if x is not None), None)
    batch = 256
    loader = torch.utils.data.DataLoader(_Decode(paths, shape), batch_size=batch, num_workers=workers,
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


class CheckedImageFolder(torchvision.datasets.ImageFolder):
    """An ImageFolder whose unreadable image (junk bytes, a cut-off file) raises BadImage naming
    the file, or, with skip_bad, is replaced by the next readable image and counted.

    The count and the first path skipped live in shared memory that DataLoader workers inherit
    (fork) or receive when they start (spawn), so the main process sees every worker's skips:
    read and reset them with take_skipped_images() at the end of an epoch."""

    def __init__(self, root, transform=None, skip_bad=False, name='imagenet'):
        super().__init__(root, transform)
        self.skip_bad, self.name = skip_bad, name
        # A spawn-context lock also works in forked workers; a fork-context one cannot go to spawned ones.
        shared = multiprocessing.get_context('spawn')
        self.skipped = shared.Value('q', 0)
        self.first_skipped = shared.Array('c', 4096, lock=False)  # written under skipped's lock

    def _read(self, path):
        try:
            return self.loader(path), None
        except UNREADABLE as e:
            return None, _why(e)

    def __getitem__(self, index):
        path, target = self.samples[index]
        sample, why = self._read(path)
        if why is not None:
            if not self.skip_bad:
                raise BadImage(f'{self.name}: cannot read image {path} ({why}); fetch it again or delete it, '
                               f'or {SKIP_HINT} (each replaced by the next readable image and counted)')
            with self.skipped.get_lock():
                if not self.skipped.value:
                    self.first_skipped.value = os.fsencode(path)[:4095]
                self.skipped.value += 1
            for offset in range(1, len(self.samples)):  # the next readable image, wrapping around
                path, target = self.samples[(index + offset) % len(self.samples)]
                sample, why = self._read(path)
                if why is None:
                    break
            else:
                raise BadImage(f'{self.name}: none of the {len(self.samples)} images under {self.root} can be '
                               f'read, e.g. {path} ({why}); fetch the data set again')
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target

    def take_skipped(self):
        with self.skipped.get_lock():
            count, first = self.skipped.value, os.fsdecode(self.first_skipped.value) or None
            self.skipped.value, self.first_skipped.value = 0, b''
        return count, first


def take_skipped_images(dataset):
    """(count, first path) of the unreadable images `dataset` replaced since the last call, and
    resets the count; (0, None) for a data set that never skips (in-memory arrays). Looks through
    torch Subset wrappers. Each process (DDP rank) counts its own loader's skips."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return dataset.take_skipped() if isinstance(dataset, CheckedImageFolder) else (0, None)
