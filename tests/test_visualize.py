import json
import os
import struct
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from mixbt import data
import fakedata
import model as M
import visualize as V
from mixbt.errors import MixBTError
from mixbt.runtime import run_command

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
CPU = torch.device('cpu')


def png_size(path):
    """(width, height) from the PNG's own header (signature, then the IHDR chunk), not through PIL."""
    with open(path, 'rb') as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b'IHDR'
    return struct.unpack('>II', head[16:24])


class RowOfClass(torch.nn.Module):
    """Features = one-hot of the bright image row: an image whose row c is bright has label c."""

    def forward(self, x):
        rows = x[:, 0].amax(dim=2)
        return rows - rows.amin(dim=1, keepdim=True)


def row_images(labels, size=32):
    images = np.zeros((len(labels), size, size, 3), np.uint8)
    images[np.arange(len(labels)), np.asarray(labels)] = 255
    images[..., 1] = np.arange(len(labels), dtype=np.uint8)[:, None, None] * 7  # tell images apart
    return images


def known_case():
    """Memory: class 0 x10, class 1 x3, class 2 x9, class 3 absent. Test: classes 0..3."""
    memory_labels = np.array([0] * 10 + [1] * 3 + [2] * 9)
    test_labels = np.array([0, 1, 2, 3] * 3)
    memory = (row_images(memory_labels), memory_labels)
    test = (row_images(test_labels), test_labels)
    expected_green = {0: 8, 1: 3, 2: 8, 3: 0}  # green frames first: same-class similarity 1, others 0
    return memory, test, expected_green


class FakeWandbRun:
    def __init__(self):
        self.logged = []

    def log(self, row):
        self.logged.append(row)


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType('wandb')

    class Image:
        def __init__(self, path, caption=None):
            self.path, self.caption = path, caption
    module.Image = Image
    monkeypatch.setitem(sys.modules, 'wandb', module)
    return module


def test_retrieval_frames_are_green_for_the_query_class_and_red_otherwise(tmp_path):
    memory, test, expected_green = known_case()
    paths = V.write_visuals(RowOfClass(), memory, test, data.SPECS['cifar10'], CPU, str(tmp_path), 'run')
    assert paths == (str(tmp_path / 'run_retrievals.png'), str(tmp_path / 'run_embedding.png'))
    grid = np.asarray(Image.open(paths[0]).convert('RGB'))
    queries = V.pick_queries(test[1], seed=0)
    assert len(queries) == V.QUERIES
    for row, q in enumerate(queries):
        y = V.HEADER + row * V.ROW
        assert tuple(grid[y + 1, 1]) == V.QUERY_FRAME
        frames = [tuple(grid[y + 1, V.GAP + (1 + col) * V.CELL + 1]) for col in range(V.NEIGHBOURS)]
        green = expected_green[int(test[1][q])]
        assert frames == [V.GREEN] * green + [V.RED] * (V.NEIGHBOURS - green), f'row {row}, class {test[1][q]}'
        # the query as stored (uint8, not normalised), each 32 px pixel drawn as 2 x 2
        tile = grid[y + V.FRAME:y + V.FRAME + V.TILE, V.FRAME:V.FRAME + V.TILE]
        np.testing.assert_array_equal(tile[::2, ::2], test[0][q])


def test_pngs_have_the_stated_pixel_sizes_also_with_few_images(tmp_path):
    """Fewer test images than rows and fewer memory images than neighbours: the same size, blank cells."""
    memory = (row_images([0, 1, 2]), np.array([0, 1, 2]))
    test = (row_images([0, 1, 0, 1]), np.array([0, 1, 0, 1]))
    paths = V.write_visuals(RowOfClass(), memory, test, data.SPECS['cifar10'], CPU, str(tmp_path), 'few')
    assert png_size(paths[0]) == V.RETRIEVALS_SIZE == (660, 916)
    assert png_size(paths[1]) == V.EMBEDDING_SIZE == (800, 800)
    grid = np.asarray(Image.open(paths[0]).convert('RGB'))
    assert (grid[V.HEADER + 4 * V.ROW:] == V.BACKGROUND).all()                    # rows 5..10: no query
    assert (grid[V.HEADER:, V.GAP + 4 * V.CELL:] == V.BACKGROUND).all()           # neighbours 4..8: no image, no name


def dark(pixels):
    return (np.asarray(pixels) < 100).all(axis=-1)


def test_retrievals_say_what_the_grid_is_and_name_each_image_class(tmp_path):
    memory, test, _ = known_case()
    classes = ['T-shirt/top', 'Trouser', 'Pullover', 'Ankle boot']
    paths = V.write_visuals(RowOfClass(), memory, test, data.SPECS['cifar10'], CPU, str(tmp_path), 'run', classes=classes)
    queries = V.pick_queries(test[1], seed=0)
    neighbours = V.nearest_neighbours(torch.eye(4)[test[1][queries]], torch.eye(4)[memory[1]]).numpy()
    same = memory[1][neighbours] == test[1][queries][:, None]
    title, names = V.retrieval_texts('run', test[1][queries], memory[1][neighbours], same, classes)
    assert 'run: nearest-neighbour retrievals (10 test queries)' in title[0]
    assert 'test query (grey frame), then its 8 nearest memory images' in title[1]
    assert f'green = same class as the query ({same.mean() * 100:.0f}% of them), red = another class' in title[2]
    assert names[0] == [classes[test[1][queries[0]]]] + [classes[c] for c in memory[1][neighbours[0]]]
    assert names[-1][0] == 'Ankle boot' and 'Ankle boot' not in names[-1][1:]    # class 3 has no memory image

    grid = np.asarray(Image.open(paths[0]).convert('RGB'))
    assert dark(grid[:V.HEADER]).sum() > 500                                      # three lines of title
    for row in range(V.QUERIES):
        band = grid[V.HEADER + row * V.ROW + V.CELL:V.HEADER + (row + 1) * V.ROW]
        assert all(dark(band[:, c * V.CELL + (V.GAP if c else 0):][:, :V.CELL]).sum() > 10 for c in range(9))
    unnamed = np.asarray(Image.fromarray(V.retrieval_grid(test[0][queries], [memory[0][n] for n in neighbours], same)))
    assert not dark(unnamed[:V.HEADER]).any() and not (unnamed[V.HEADER + V.CELL:V.HEADER + V.ROW] != 255).any()
    other = V.retrieval_grid(test[0][queries], [memory[0][n] for n in neighbours], same, title,
                             [[n.upper() for n in row] for row in names])
    assert not np.array_equal(other[V.HEADER + V.CELL:V.HEADER + V.ROW], grid[V.HEADER + V.CELL:V.HEADER + V.ROW])


def test_wandb_run_gets_both_images(tmp_path, fake_wandb):
    memory, test, _ = known_case()
    run = FakeWandbRun()
    paths = V.write_visuals(RowOfClass(), memory, test, data.SPECS['cifar10'], CPU, str(tmp_path), 'run',
                            classes=['zero', 'one', 'two', 'three'], wandb_run=run)
    assert len(run.logged) == 1
    row = run.logged[0]
    assert set(row) == {'visuals/retrievals', 'visuals/embedding'}
    assert isinstance(row['visuals/retrievals'], fake_wandb.Image)
    assert (row['visuals/retrievals'].path, row['visuals/embedding'].path) == paths
    assert 'green = same class' in row['visuals/retrievals'].caption


def test_a_failing_wandb_log_does_not_stop_the_run(tmp_path, fake_wandb, capsys):
    class Broken:
        def log(self, row):
            raise RuntimeError('offline')
    memory, test, _ = known_case()
    paths = V.write_visuals(RowOfClass(), memory, test, data.SPECS['cifar10'], CPU, str(tmp_path), 'run',
                            wandb_run=Broken())
    assert all(open(p, 'rb').read(8) == PNG_SIGNATURE for p in paths)
    assert 'wandb.log failed: offline' in capsys.readouterr().err


def test_queries_are_seeded_and_spread_over_the_classes():
    labels = np.repeat(np.arange(10), 30)
    picked = V.pick_queries(labels, seed=0)
    np.testing.assert_array_equal(labels[picked], np.arange(10))                  # one of each, in class order
    np.testing.assert_array_equal(picked, V.pick_queries(labels, seed=0))
    assert not np.array_equal(picked, V.pick_queries(labels, seed=1))
    many = np.repeat(np.arange(100), 3)
    assert len(set(many[V.pick_queries(many, seed=0)])) == 10                     # 100 classes: 10 different
    few = np.array([0] * 20 + [1] * 20 + [2] * 20)
    assert sorted(np.bincount(few[V.pick_queries(few, seed=0)])) == [3, 3, 4]


def test_subsample_caps_deterministically():
    s = V.subsample(12000, 5000, seed=3)
    assert len(s) == 5000 and len(set(s)) == 5000 and (np.diff(s) > 0).all()
    np.testing.assert_array_equal(s, V.subsample(12000, 5000, seed=3))
    np.testing.assert_array_equal(V.subsample(40, 5000), np.arange(40))


def test_pca_matches_the_svd_statement_up_to_sign():
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[:, 0] *= 5
    x[:, 3] *= 3
    points = V.pca_2d(x)
    centred = (x - x.mean(0)).numpy()
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T
    np.testing.assert_allclose(np.abs(points), np.abs(expected), atol=1e-8)
    np.testing.assert_array_equal(points, V.pca_2d(x))


def test_without_opentsne_the_map_is_pca_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'openTSNE', None)  # import openTSNE -> ImportError
    monkeypatch.setattr(V, '_noticed', [])
    features = torch.nn.functional.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    points, method = V.project_2d(features)
    assert method == 'PCA' and points.shape == (50, 2)
    assert 'openTSNE is not installed' in capsys.readouterr().err
    with pytest.raises(MixBTError, match=r'pip install openTSNE==\S+'):  # asked for by name: no quiet fallback
        V.project_2d(features, method='tsne')
    with pytest.raises(MixBTError, match='choose auto, tsne or pca'):
        V.project_2d(features, method='umap')


def test_tsne_map_is_deterministic_for_a_seed():
    pytest.importorskip('openTSNE')
    features = torch.nn.functional.normalize(torch.randn(60, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    a, method = V.project_2d(features, seed=0)
    b, _ = V.project_2d(features, seed=0)
    assert method == 't-SNE' and a.shape == (60, 2)
    np.testing.assert_array_equal(a, b)


def released_checkpoint(folder, dataset='cifar10'):
    torch.manual_seed(0)
    m = M.Model(32, 'resnet18', data.SPECS[dataset].maxpool)
    path = folder / f'abcd1234_0.0078125_32_256_{dataset}_model.pth'
    torch.save(m.state_dict(), path)
    return path


def test_command_line_writes_both_pngs_next_to_the_checkpoint(tmp_path):
    fakedata.write_cifar(str(tmp_path / 'data'), 'cifar10', n_train=10, n_test=10)
    (tmp_path / 'run').mkdir()
    ckpt = released_checkpoint(tmp_path / 'run')
    paths = V.main([str(ckpt), '--data_root', str(tmp_path / 'data'), '--gpu', '-1', '--workers', '0', '--subset', '8'])
    stem = ckpt.stem  # the data set came from the file name
    assert paths == (str(tmp_path / 'run' / f'{stem}_retrievals.png'), str(tmp_path / 'run' / f'{stem}_embedding.png'))
    assert png_size(paths[0]) == V.RETRIEVALS_SIZE and png_size(paths[1]) == V.EMBEDDING_SIZE


def test_command_line_refuses_a_checkpoint_of_another_data_set_in_one_line(tmp_path, capsys):
    fakedata.write_stl10(str(tmp_path / 'data'))
    ckpt = released_checkpoint(tmp_path)  # a 32 px (cifar10) backbone
    with pytest.raises(SystemExit) as e:
        run_command(lambda: V.main([str(ckpt), '--dataset', 'stl10', '--data_root', str(tmp_path / 'data'),
                                    '--gpu', '-1']))
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ') and 'stl10' in err[0]


@pytest.fixture
def no_embedding(monkeypatch):
    """visualize.main's data loading and embedding (minutes on a real data set) must not start."""
    def refuse(*args, **kwargs):
        raise AssertionError('started loading or embedding images')
    monkeypatch.setattr(V, 'embed_images', refuse)
    monkeypatch.setattr(V, 'load_eval_data', refuse)


def one_error_line(capsys, argv):
    with pytest.raises(SystemExit) as e:
        run_command(lambda: V.main(argv))
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: '), err
    return err[0]


def test_an_output_folder_that_cannot_be_written_is_refused_before_the_embedding(tmp_path, capsys, no_embedding):
    ckpt = released_checkpoint(tmp_path)
    (tmp_path / 'a_file').write_text('not a folder')
    err = one_error_line(capsys, [str(ckpt), '--out_dir', str(tmp_path / 'a_file' / 'pictures'), '--gpu', '-1'])
    assert 'a_file is a file, not a folder; choose another --out_dir' in err
    assert not (tmp_path / 'a_file' / 'pictures').exists()


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes in a read-only folder')
def test_a_read_only_checkpoint_folder_is_refused_before_the_embedding(tmp_path, capsys, no_embedding):
    (tmp_path / 'released').mkdir()
    ckpt = released_checkpoint(tmp_path / 'released')
    (tmp_path / 'released').chmod(0o555)
    try:
        err = one_error_line(capsys, [str(ckpt), '--gpu', '-1'])
    finally:
        (tmp_path / 'released').chmod(0o755)
    assert 'cannot write in' in err and 'choose a writable --out_dir' in err


def test_a_checkpoint_of_another_data_set_with_the_same_stem_is_refused(tmp_path, capsys, no_embedding):
    """A CIFAR-10 backbone loads as a CIFAR-100 one (the same stem): only its name tells them apart."""
    ckpt = released_checkpoint(tmp_path, 'cifar10')
    err = one_error_line(capsys, [str(ckpt), '--dataset', 'cifar100', '--gpu', '-1'])
    assert f'{ckpt} holds a backbone pretrained on cifar10 (its file name says so), not for --dataset cifar100' in err


@pytest.mark.parametrize('damage,named', [
    (lambda s: s['f.0.weight'].view(-1).__setitem__(5, float('nan')), 'f.0.weight holds NaN'),
    (lambda s: s['f.1.running_var'].__setitem__(0, float('inf')), 'f.1.running_var holds inf'),
    (lambda s: s.__setitem__('f.0.weight', s['f.0.weight'].long()), 'f.0.weight is int64, expected a floating-point'),
])
def test_a_checkpoint_that_is_not_finite_floats_is_refused_naming_the_tensor(tmp_path, capsys, no_embedding,
                                                                            damage, named):
    ckpt = released_checkpoint(tmp_path)
    state = torch.load(ckpt)
    damage(state)
    torch.save(state, ckpt)
    err = one_error_line(capsys, [str(ckpt), '--gpu', '-1'])
    assert f'{ckpt}: {named}' in err


def run_folder(tmp_path, **saved):
    folder = tmp_path / 'results' / 'run1'
    folder.mkdir(parents=True)
    (folder / 'args.json').write_text(json.dumps({'lmbda': 0.0078125, 'dataset': 'cifar10', **saved}))
    torch.save({'epoch': 1, 'model': M.Model(32, 'resnet18', False).state_dict()}, folder / 'last.pth')
    return str(folder / 'last.pth')


def test_a_run_checkpoint_is_shown_with_the_runs_own_subset_and_data(tmp_path, capsys):
    root = str(tmp_path / 'data')
    ckpt = run_folder(tmp_path, subset=256, data_root=root)
    args = V.get_args([ckpt])
    assert (args.dataset, args.subset, args.data_root) == ('cifar10', 256, root)
    assert f"--subset 256 --data_root {root}: the run's own settings" in capsys.readouterr().out
    args = V.get_args([ckpt, '--subset', '0', '--data_root', 'elsewhere'])           # said on the command line
    assert (args.subset, args.data_root) == (0, 'elsewhere')
    released = V.get_args([str(released_checkpoint(tmp_path))])                       # no run folder
    assert (released.subset, released.data_root) == (0, 'data')


@pytest.mark.slow
def test_the_command_line_embeds_the_run_subset_with_a_progress_bar(tmp_path, capsys, monkeypatch):
    fakedata.write_cifar(str(tmp_path / 'data'), 'cifar10', n_train=20, n_test=20)
    ckpt = run_folder(tmp_path, subset=6, data_root=str(tmp_path / 'data'))
    sizes = []
    embed = V.embed_images
    monkeypatch.setattr(V, 'embed_images', lambda bb, images, *a, **k: sizes.append((len(images), k['desc']))
                        or embed(bb, images, *a, **k))
    paths = V.main([ckpt, '--gpu', '-1', '--workers', '0', '--projection', 'pca'])
    assert sizes == [(6, 'visualize: memory images'), (6, 'visualize: test images')]
    assert 'visualize: embedding 6 memory and 6 test images on cpu' in capsys.readouterr().out
    assert png_size(paths[0]) == V.RETRIEVALS_SIZE
