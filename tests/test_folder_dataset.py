"""--dataset folder on real images: Fashion-MNIST test images written as PNG files (28 px, read at
32), in the labelled and the unlabelled layouts; the seeded held-out split, the val/ folder, the
in-memory and the streamed paths, and every fault of a folder (one error line each)."""
import os
import shutil
from argparse import Namespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from mixbt import augment, folder_data, formats, readers
from mixbt import data as datasets
from mixbt.errors import MixBTError
from mixbt.formats import BadImage, LazyImages

PER_CLASS = 30
CLASSES = [f'{i}-{name.replace("/", "-")}' for i, name in enumerate(readers.FASHION_CLASSES)]


@pytest.fixture(scope='module')
def fashion():
    """(images (N, 28, 28) uint8, labels): the first PER_CLASS test images of each class."""
    images = readers.read_idx(os.path.join(readers.FASHION_MNIST_SYSTEM_DIR, 't10k-images-idx3-ubyte.gz'))
    labels = readers.read_idx(os.path.join(readers.FASHION_MNIST_SYSTEM_DIR, 't10k-labels-idx1-ubyte.gz'))
    keep = np.concatenate([np.flatnonzero(labels == c)[:PER_CLASS] for c in range(10)])
    return images[keep], labels[keep].astype(np.int64)


def write_pngs(folder, images, stem='img'):
    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(os.path.join(folder, f'{stem}{i:04d}.png'))


@pytest.fixture(scope='module')
def labelled_master(fashion, tmp_path_factory):
    root = tmp_path_factory.mktemp('labelled')
    images, labels = fashion
    for c, name in enumerate(CLASSES):
        write_pngs(str(root / name), images[labels == c])
    return root


@pytest.fixture
def labelled(labelled_master, tmp_path):
    """A fresh copy that a test may damage."""
    return shutil.copytree(labelled_master, tmp_path / 'images')


def resolve(root, image_size=32, **kwargs):
    return datasets.spec_of(Namespace(dataset='folder', data_root=str(root), image_size=image_size, **kwargs))


def grey_square(image, size=32):
    """What the decoder should give for a 28 px grey Fashion-MNIST image."""
    rgb = Image.fromarray(image).convert('RGB')
    return np.asarray(ImageOps.fit(rgb, (size, size), Image.Resampling.BICUBIC))


# ---------------------------------------------------------------- the labelled layout
def test_labelled_folder_holds_out_ten_percent_of_each_class_and_says_so(labelled_master, fashion, capsys):
    spec = resolve(labelled_master)
    assert (spec.num_classes, spec.labelled, spec.streamed, spec.splits) == (10, True, False, ('train', 'train', 'val'))
    train, memory, test = datasets.load_splits('folder', str(labelled_master), spec.splits)
    assert memory is train and train.classes == CLASSES
    assert train.images.shape == (270, 32, 32, 3) and test.images.shape == (30, 32, 32, 3)
    assert np.bincount(test.labels).tolist() == [3] * 10 and np.bincount(train.labels).tolist() == [27] * 10
    line = capsys.readouterr().out
    assert line.count('\n') == 1 and f'folder: {os.path.realpath(labelled_master)}: 270 training images in 10 ' \
        'classes, test split: 10% of each class held out (30 images, fixed seed' in line
    assert '32 px squares (centre crop), CIFAR stem and views; 922 kB in memory' in line
    # every image is one of the written ones, in its own class, and none is in both splits
    images, labels = fashion
    written = {grey_square(im).tobytes(): label for im, label in zip(images, labels)}
    seen = [im.tobytes() for im in np.concatenate([train.images, test.images])]
    assert len(set(seen)) == 300 and [written[s] for s in seen] == np.concatenate([train.labels, test.labels]).tolist()


def test_split_is_the_same_for_every_tool_and_a_new_class_leaves_it_alone(labelled, capsys):
    first = folder_data.scan_folder(str(labelled))
    again = folder_data.scan_folder(str(labelled))
    assert first.test[0] == again.test[0] and first.train[0] == again.train[0]
    write_pngs(str(labelled / '99-new'), np.zeros((5, 28, 28), np.uint8))
    grown = folder_data.scan_folder(str(labelled))
    assert set(first.test[0]) < set(grown.test[0]) and len(grown.test[0]) == 31  # 1 of 5 held out
    assert grown.classes[-1] == '99-new' and grown.fingerprint != first.fingerprint


def test_subset_takes_a_sample_of_every_class(labelled_master, capsys):
    spec = resolve(labelled_master, subset=40)
    train, test = datasets.load_splits('folder', str(labelled_master), ('train', 'val'), 40)
    assert len(train) == 40 and len(test) == 30 and len(set(train.labels.tolist())) >= 8
    assert spec is resolve(labelled_master, subset=40)  # resolved once for the same settings


def test_val_folder_is_the_test_split_with_labels_by_class_name(labelled, fashion, capsys):
    images, labels = fashion
    write_pngs(str(labelled / 'val' / CLASSES[7]), images[labels == 7][:4], 'val')
    write_pngs(str(labelled / 'val' / CLASSES[2]), images[labels == 2][:2], 'val')
    spec = resolve(labelled)
    train, test = datasets.load_splits('folder', str(labelled), spec.splits[1:])
    assert spec.num_classes == 10 and len(train) == 300 and sorted(test.labels.tolist()) == [2, 2, 7, 7, 7, 7]
    assert f'test split {os.path.realpath(labelled / "val")} (6 images)' in capsys.readouterr().out


def test_train_and_val_folders_as_imagenet_lays_them_out(labelled_master, fashion, tmp_path, capsys):
    shutil.copytree(labelled_master, tmp_path / 'train')
    images, labels = fashion
    for c in (0, 1):
        write_pngs(str(tmp_path / 'val' / CLASSES[c]), images[labels == c][:2], 'val')
    index = folder_data.scan_folder(str(tmp_path))
    assert index.classes == CLASSES and len(index.train[0]) == 300 and index.test[1].tolist().count(1) == 2


def test_images_become_upright_centred_squares_at_image_size(tmp_path, capsys):
    """A wide photo keeps its centre; a JPEG whose EXIF says 'rotate 90' is turned upright first."""
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 20:40] = (200, 50, 0)  # the centre third: the square kept
    for c in ('a', 'b'):
        os.makedirs(tmp_path / c)
        Image.fromarray(wide).save(tmp_path / c / 'wide.png')
    tall = np.zeros((60, 20, 3), np.uint8)
    tall[20:40] = (0, 90, 250)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: shown turned 90 degrees clockwise
    Image.fromarray(np.ascontiguousarray(np.rot90(tall, 1))).save(tmp_path / 'b' / 'turned.jpg', exif=exif,
                                                                   quality=95)
    spec = resolve(tmp_path, 16)
    images = np.concatenate([d.images for d in datasets.load_splits('folder', str(tmp_path), spec.splits[1:])])
    assert images.shape == (3, 16, 16, 3)
    inner = images[:, 2:-2, 2:-2].astype(int)  # the resampling reaches a pixel beyond the square at its edges
    assert sum(np.abs(im - (200, 50, 0)).max() <= 2 for im in inner) == 2
    assert sum(np.abs(im - (0, 90, 250)).max() <= 6 for im in inner) == 1, 'the centre of the upright JPEG'


@pytest.mark.parametrize('size, row, maxpool, size_class', [
    (32, 'cifar10', False, '32px'), (40, 'cifar10', False, '32px'), (64, 'tiny_imagenet', True, '64px'),
    (80, 'stl10', True, '64px'), (96, 'imagenet', True, 'imagenet'), (224, 'imagenet', True, 'imagenet')])
def test_image_size_picks_the_stem_and_views_of_the_matching_row(size, row, maxpool, size_class):
    spec, base = folder_data.folder_spec(size, 5), datasets.SPECS[row]
    assert (spec.size, spec.maxpool, spec.size_class, spec.num_classes) == (size, maxpool, size_class, 5)
    assert spec.recipe == base.recipe.__class__(**{**vars(base.recipe), 'size': size})
    assert spec.imagenet_stem == (size_class == 'imagenet') and spec.eval_resize == 0 and spec.in_memory
    assert (spec.mean, spec.std) == (datasets.SPECS['imagenet'].mean, datasets.SPECS['imagenet'].std)
    views = augment.build_views(spec.recipe, spec.mean, spec.std)
    assert views[0](Image.new('RGB', (size + 3, size + 3))).shape == (3, size, size)


def test_image_size_below_the_smallest_stem_is_refused_before_the_folder_is_read(tmp_path):
    with pytest.raises(MixBTError, match='--image_size 4: a folder of images needs at least 8 px'):
        resolve(tmp_path / 'not-there', 4)


# ---------------------------------------------------------------- the unlabelled layout
def test_images_directly_in_the_folder_are_unlabelled_and_the_monitors_skipped(fashion, tmp_path, capsys):
    images, _ = fashion
    write_pngs(str(tmp_path), images[:20])
    write_pngs(str(tmp_path / 'more' / 'deeper'), images[20:25])  # found at any depth
    spec = resolve(tmp_path)
    assert (spec.labelled, spec.num_classes, spec.splits) == (False, 0, ('train',) * 3)
    train, memory, test = datasets.load_splits('folder', str(tmp_path), spec.splits)
    assert len(train) == 25 and train.labels.tolist() == [-1] * 25 and train.classes == []
    assert augment.eval_split('folder', memory) is None and augment.eval_split('folder', test) is None
    assert '25 unlabelled images (images directly in it, or --folder_labels none): the kNN monitor and the ' \
           'visuals need labels and are skipped' in capsys.readouterr().out
    with pytest.raises(MixBTError, match='unlabelled: train only'):
        datasets.load('folder', str(tmp_path), 'val')
    with pytest.raises(MixBTError, match='linear.py needs labelled images.*one subfolder per class'):
        folder_data.require(spec, 'linear.py')


def test_folder_labels_none_pretrains_on_a_class_tree_without_labels(labelled_master):
    spec = resolve(labelled_master, folder_labels='none')
    assert not spec.labelled and len(spec.reader.index.train[0]) == 300
    assert resolve(labelled_master, folder_labels='subfolders').num_classes == 10


def test_the_folder_row_is_that_of_the_last_command(labelled_master, tmp_path):
    spec = resolve(labelled_master)
    assert datasets.spec_of('folder') is spec and datasets.select_pipeline('folder').recipe == spec.recipe
    with pytest.raises(MixBTError, match=f'resolved for {os.path.realpath(labelled_master)}, not'):
        datasets.load('folder', str(tmp_path), 'train')
    with pytest.raises(MixBTError, match='W-MSE code has no folder pipeline'):
        datasets.select_pipeline('folder', 'wmse')


def test_identity_follows_the_files_and_the_image_size(labelled):
    first = resolve(labelled).identity
    assert resolve(labelled, 48).identity != first
    os.remove(next(p for p in (labelled / CLASSES[3]).iterdir()))
    assert folder_data.resolve_folder(str(labelled), 32).identity != first


# ---------------------------------------------------------------- in memory or streamed
def test_images_over_the_memory_budget_are_streamed_and_decode_alike(labelled_master, capsys):
    in_memory, = datasets.load_splits('folder', str(resolve(labelled_master).reader.index.root), ('train',))
    spec = resolve(labelled_master, max_memory_gb=0.0005)  # 300 x 32 x 32 x 3 bytes = 0.92 MB
    train, memory, test = datasets.load_splits('folder', str(labelled_master), spec.splits)
    assert spec.streamed and isinstance(train.images, LazyImages) and train.images.shape == (270, 32, 32, 3)
    assert 'streamed, decoded in the DataLoader workers every epoch' in capsys.readouterr().out
    np.testing.assert_array_equal(train.images[5], in_memory.images[5])
    np.testing.assert_array_equal(train.images[[3, 7]], in_memory.images[[3, 7]])
    np.testing.assert_array_equal(train.images[10:20][2], in_memory.images[12])
    assert augment.eval_split('folder', memory) is None
    loader = torch.utils.data.DataLoader(augment.ArrayDataset(train, augment.eval_transform('folder')),
                                         batch_size=64)
    assert sum(len(x) for x, _ in loader) == 270
    with pytest.raises(MixBTError, match=r'streamed from disk.*raise --max_memory_gb \(0.0005\) or pass --subset N'):
        np.ascontiguousarray(train.images)  # what --aug gpu would do
    with pytest.raises(MixBTError, match='visualize.py needs the images in memory'):
        folder_data.require(spec, 'visualize.py', in_memory=True)
    assert not resolve(labelled_master, max_memory_gb=0.0005, subset=50).streamed  # 100 images fit
    # a caller that loads the whole split of that row and cuts it afterwards still gets it streamed
    assert isinstance(datasets.load('folder', str(labelled_master), 'train').images, LazyImages)
    assert isinstance(datasets.load('folder', str(labelled_master), 'train', subset=50).images, np.ndarray)


# ---------------------------------------------------------------- faults
def one_line(excinfo, *needles):
    message = str(excinfo.value)
    assert isinstance(excinfo.value, MixBTError) and '\n' not in message, message
    for needle in needles:
        assert needle in message, f'{needle!r} not in: {message}'


def test_a_folder_with_one_class_is_an_error_with_the_way_out(fashion, tmp_path):
    write_pngs(str(tmp_path / 'cats'), fashion[0][:5])
    with pytest.raises(MixBTError) as e:
        resolve(tmp_path)
    one_line(e, f'{os.path.realpath(tmp_path)} has 1 class subfolder (cats)', 'at least 2 classes',
             '--folder_labels none')


@pytest.mark.parametrize('content', ['nothing', 'no images', 'empty classes'])
def test_a_folder_without_images_is_an_error_naming_it(content, tmp_path):
    if content == 'no images':
        (tmp_path / 'notes.txt').write_text('x')
    elif content == 'empty classes':
        (tmp_path / 'a').mkdir()
        (tmp_path / 'b').mkdir()
        (tmp_path / 'b' / 'x.png').write_bytes(b'')
    with pytest.raises(MixBTError) as e:
        resolve(tmp_path)
    if content == 'empty classes':
        one_line(e, f'class folder {os.path.realpath(tmp_path / "a")} holds no images', 'add images to it or remove it')
    else:
        one_line(e, f'no images under {os.path.realpath(tmp_path)}', '--data_root')
        assert ('notes.txt' in str(e.value)) == (content == 'no images')


def test_a_missing_folder_is_not_found(tmp_path):
    with pytest.raises(readers.DatasetNotFound) as e:
        resolve(tmp_path / 'nowhere')
    one_line(e, f'no folder {tmp_path / "nowhere"}', 'point --data_root at the folder of your images')


def test_images_beside_class_folders_or_an_unknown_val_class_are_errors(labelled, fashion):
    write_pngs(str(labelled / 'val' / 'zebra'), fashion[0][:1])
    with pytest.raises(MixBTError) as e:
        resolve(labelled)
    one_line(e, f'{os.path.realpath(labelled / "val" / "zebra")} is not a class of', 'hold out 10% of each class')
    shutil.rmtree(labelled / 'val')
    write_pngs(str(labelled), fashion[0][:1], 'loose')
    with pytest.raises(MixBTError) as e:
        resolve(labelled, folder_labels='subfolders')
    one_line(e, 'holds 1 images directly', 'move them into the subfolder of their class', '--folder_labels none')
    assert not resolve(labelled).labelled  # auto: images directly in it = unlabelled


def test_files_that_are_not_images_are_left_out_and_counted(labelled, capsys):
    (labelled / CLASSES[0] / 'readme.txt').write_text('x')
    (labelled / CLASSES[1] / 'photo.heic').write_bytes(b'x')
    (labelled / CLASSES[1] / '.DS_Store').write_bytes(b'x')  # hidden: not even counted
    datasets.load_splits('folder', str(labelled), resolve(labelled).splits[:1])
    assert '; 2 files that are not images left out, e.g. ' in capsys.readouterr().out


def damage(root):
    """A junk file, a cut-off PNG and an empty file, in three classes of the training split."""
    paths, labels = folder_data.scan_folder(str(root)).train
    junk, cut, empty = (paths[list(labels).index(c)] for c in (1, 4, 8))
    import pathlib
    junk, cut, empty = map(pathlib.Path, (junk, cut, empty))
    junk.write_bytes(b'not an image at all' * 10)
    cut.write_bytes(cut.read_bytes()[:60])
    empty.write_bytes(b'')
    return str(junk), str(cut), str(empty)


@pytest.mark.parametrize('workers', [0, pytest.param(2, marks=pytest.mark.slow)])  # 2: worker processes
def test_unreadable_images_are_named_or_left_out_with_a_count(labelled, workers, capsys):
    bad = damage(labelled)
    spec = resolve(labelled)
    with pytest.raises(BadImage) as e:
        datasets.load_splits('folder', str(labelled), spec.splits, workers=workers)
    one_line(e, 'folder train: ', 'images cannot be read, first ', '--skip_bad_images')
    assert any(p in str(e.value) for p in bad)
    train, test = datasets.load_splits('folder', str(labelled), spec.splits[1:], workers=workers, skip_bad=True)
    assert len(train) + len(test) == 297
    out = capsys.readouterr().out
    assert 'cannot be read' in out and '(--skip_bad_images)' in out


def test_an_empty_file_is_named_in_one_line(tmp_path, fashion):
    for c in ('a', 'b'):
        write_pngs(str(tmp_path / c), fashion[0][:3])
    (tmp_path / 'b' / 'img0001.png').write_bytes(b'')
    with pytest.raises(BadImage) as e:
        datasets.load_splits('folder', str(tmp_path), resolve(tmp_path).splits[:1])
    one_line(e, str(tmp_path / 'b' / 'img0001.png'), 'an empty file (0 bytes)')


@pytest.mark.parametrize('workers', [0, pytest.param(2, marks=pytest.mark.slow)])  # 2: counted across processes
def test_streamed_folder_names_empty_files_at_load_and_replaces_unreadable_ones_in_workers(labelled, workers, capsys):
    junk, cut, empty = damage(labelled)
    spec = resolve(labelled, max_memory_gb=0)
    with pytest.raises(BadImage) as e:
        datasets.load('folder', str(labelled), 'train')
    one_line(e, 'folder train: 1 of the 270 images are empty files (0 bytes)', empty, '--skip_bad_images')
    train = datasets.load('folder', str(labelled), 'train', skip_bad=True)
    assert len(train) == 269 and 'going on without them' in capsys.readouterr().out
    strict = LazyImages(train.images.paths, 32, name='folder train')
    with pytest.raises(BadImage) as e:
        strict[train.images.paths.index(junk)]
    one_line(e, f'folder train: cannot read image {junk} (UnidentifiedImageError', 'replace it or delete it')
    dataset = torch.utils.data.Subset(augment.ArrayDataset(train, augment.eval_transform('folder')), range(269))
    loader = torch.utils.data.DataLoader(dataset, batch_size=100, num_workers=workers)
    assert sum(len(x) for x, _ in loader) == 269
    count, first = formats.take_skipped_images(dataset)
    assert count == 2 and first in (junk, cut) and spec.streamed
    assert formats.take_skipped_images(dataset) == (0, None)


# ---------------------------------------------------------------- the tools' side
def test_settings_alone_give_the_stem_without_reading_the_folder(tmp_path):
    """What config and transfer.py need before (or without) the folder: the row of --image_size."""
    spec = datasets.spec_of(Namespace(dataset='folder', image_size=64, data_root=str(tmp_path / 'none')),
                            read_folder=False)
    assert (spec.size, spec.maxpool, spec.size_class, spec.num_classes) == (64, True, '64px', 0)
    assert datasets.spec_of('folder') is spec and spec.in_memory
    with pytest.raises(MixBTError, match='knows no folder'):
        datasets.load('folder', str(tmp_path), 'train')


def test_an_evaluation_takes_the_folder_settings_of_the_pretraining_run(tmp_path):
    (tmp_path / 'args.json').write_text('{"dataset": "folder", "image_size": 48, "folder_labels": "none", '
                                        '"max_memory_gb": 2.5, "lmbda": 0.005}')
    checkpoint = str(tmp_path / 'run_model.pth')
    unset = dict(dataset='folder', image_size=None, folder_labels=None, max_memory_gb=None)
    args = folder_data.run_settings(Namespace(**unset), checkpoint)
    assert (args.image_size, args.folder_labels, args.max_memory_gb) == (48, 'none', 2.5)
    given = folder_data.run_settings(Namespace(**{**unset, 'image_size': 32, 'folder_labels': 'auto'}), checkpoint)
    assert (given.image_size, given.folder_labels, given.max_memory_gb) == (32, 'auto', 2.5)
    with pytest.raises(MixBTError, match='give --image_size, the size .* was pretrained at'):
        folder_data.run_settings(Namespace(**unset), str(tmp_path / 'elsewhere' / 'm.pth'))
    other = Namespace(dataset='cifar10', image_size=None)
    assert folder_data.run_settings(other, checkpoint).image_size is None
