"""The batched on-device views (gpu_augment.py) against torchvision/PIL (augment.py).

Distributions are compared on thousands of samples (fixed seeds: no flakiness); pixels are
compared given identical parameters with torchvision's PIL path, which they reproduce, and the
resampling weights with torchvision's tensor ops (exact up to float error).
"""
import importlib.util
import json
import os
from argparse import Namespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from mixbt import augment
from mixbt import data
from mixbt import distributed as D
from mixbt import gpu_augment as G
from mixbt import readers
from mixbt.gpu_colour import hue_group_bounds


def views_of(images, name, generator, pipeline='mixbt'):
    """One view of each image by data set `name`'s recipe and normalisation under `pipeline`."""
    p = data.select_pipeline(name, pipeline)
    return G.augment_batch(images, p.recipe, p.mean, p.std, generator)

INTERP = {'bilinear': T.InterpolationMode.BILINEAR, 'bicubic': T.InterpolationMode.BICUBIC}
SOURCE = {'cifar10': 32, 'cifar100': 32, 'fashionmnist': 32, 'stl10': 96, 'tiny_imagenet': 64}


pytestmark = pytest.mark.usefixtures('one_thread')  # conftest.one_thread


def ks_statistic(a, b):
    """Two-sample Kolmogorov-Smirnov distance between the empirical CDFs of a and b."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    return np.abs(np.searchsorted(a, grid, 'right') / len(a) - np.searchsorted(b, grid, 'right') / len(b)).max()


def ks_limit(n, m):
    return 1.95 * np.sqrt((n + m) / (n * m))  # 0.1% level


def params(n, dataset='cifar10', seed=0, size=None):
    size = size or SOURCE[dataset]
    return G.sample_params(n, G.RECIPES[dataset], size, size, torch.Generator().manual_seed(seed), 'cpu')


def smooth_images(n, size, seed=0):
    """Colourful, smooth uint8 images (N, 3, size, size), closer to photos than pixel noise."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size), mode='bicubic', align_corners=False)
    x = x + 0.03 * torch.randn(n, 3, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def photo_crops(n, size=96, seed=0):
    """STL-10-like uint8 images: random windows of a real photo (matplotlib's sample image)."""
    import matplotlib
    path = os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'sample_data', 'grace_hopper.jpg')
    photo = Image.open(path).convert('RGB')
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x, y = rng.integers(0, photo.size[0] - 2 * size), rng.integers(0, photo.size[1] - 2 * size)
        out.append(np.asarray(photo.crop((x, y, x + 2 * size, y + 2 * size)).resize((size, size), Image.BICUBIC)))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def dim_image(size=32):
    """One dim, smooth, colourful uint8 image (3, size, size). PIL's truncation costs the same
    whatever the level, while the spread of the views grows with it (brightness factors)."""
    return (smooth_images(1, size, seed=1)[0] * 0.5).round().to(torch.uint8)


def z_scores(a, b):
    """Two-sample z statistic of the difference between the column means of a and b (N, K)."""
    a, b = a.double(), b.double()
    return (a.mean(0) - b.mean(0)) / (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()


# ---------------------------------------------------------------------------- recipes
@pytest.mark.parametrize('name', sorted(G.RECIPES))
def test_recipes_match_augment_py(name):
    """The recipe table says what augment.ssl_views builds with torchvision, in the same order."""
    recipe = G.RECIPES[name]
    steps = augment.ssl_views(name)[0].transforms
    kinds = [type(t).__name__ for t in steps]
    crop = steps[kinds.index('RandomResizedCrop')]
    assert crop.size == (recipe.size, recipe.size)
    assert tuple(crop.scale) == pytest.approx(recipe.scale) and tuple(crop.ratio) == pytest.approx(recipe.ratio)
    assert crop.interpolation == INTERP[recipe.kernel]
    jitter = steps[kinds.index('RandomApply')]
    assert jitter.p == recipe.jitter_p
    (cj,) = jitter.transforms
    b, c, s, h = recipe.jitter
    got = [v for r in (cj.brightness, cj.contrast, cj.saturation, cj.hue) for v in r]
    assert got == pytest.approx([1 - b, 1 + b, 1 - c, 1 + c, 1 - s, 1 + s, -h, h])
    assert steps[kinds.index('RandomGrayscale')].p == recipe.gray_p
    assert steps[kinds.index('RandomHorizontalFlip')].p == 0.5
    assert (kinds.index('RandomApply') < kinds.index('RandomResizedCrop')) == recipe.color_first


# ---------------------------------------------------------------------------- parameter distributions
@pytest.mark.parametrize('size,scale,ratio', [(32, (0.08, 1.0), (3 / 4, 4 / 3)),   # CIFAR
                                              (96, (0.2, 1.0), (3 / 4, 4 / 3)),    # STL-10
                                              (32, (0.5, 1.0), (1 / 4, 4.0))])     # many attempts fail
def test_crop_area_and_aspect_distributions_match_torchvision(size, scale, ratio):
    n = 4000
    torch.manual_seed(0)
    image = torch.empty(3, size, size)
    ref = np.array([T.RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)])
    g = torch.Generator().manual_seed(1)
    u = torch.rand(n, 2 * G.ATTEMPTS + 2, generator=g)
    ours = G.sample_crops(u[:, :10], u[:, 10:20], u[:, 20:], size, size, scale, ratio).numpy()
    assert ours.dtype == np.int64
    i, j, h, w = ours.T
    assert (h >= 1).all() and (w >= 1).all() and (i >= 0).all() and (j >= 0).all()
    assert (i + h <= size).all() and (j + w <= size).all()
    for stat in (lambda b: b[:, 2] * b[:, 3] / size ** 2,       # area fraction
                 lambda b: b[:, 3] / b[:, 2],                   # aspect ratio w / h
                 lambda b: b[:, 0] / (size - b[:, 2] + 1),      # vertical offset, relative to its range
                 lambda b: b[:, 1] / (size - b[:, 3] + 1)):
        assert ks_statistic(stat(ours), stat(ref)) < ks_limit(n, n)
    whole = lambda b: np.mean((b[:, 2] == size) & (b[:, 3] == size))
    assert abs(whole(ours) - whole(ref)) < 0.02


@pytest.mark.parametrize('height,width,ratio', [(32, 32, (3.0, 4.0)), (20, 40, (0.5, 0.6)), (40, 20, (1.5, 2.0))])
def test_crop_fallback_is_torchvisions_centre_crop(height, width, ratio):
    """When no attempt fits, torchvision takes a deterministic centre crop: so must we."""
    scale = (0.95, 1.0)
    expected = T.RandomResizedCrop.get_params(torch.empty(3, height, width), list(scale), list(ratio))
    u = torch.rand(64, 2 * G.ATTEMPTS + 2, generator=torch.Generator().manual_seed(0))
    ours = G.sample_crops(u[:, :10], u[:, 10:20], u[:, 20:], height, width, scale, ratio)
    assert (ours == torch.tensor(expected)).all()


def test_flip_jitter_and_grayscale_rates():
    for name, gray_p in (('cifar10', 0.2), ('stl10', 0.1)):
        p = params(20000, name)
        tol = lambda q: 4 * np.sqrt(q * (1 - q) / 20000)
        assert abs(p['flip'].float().mean().item() - 0.5) < tol(0.5)
        assert abs(p['jitter'].float().mean().item() - 0.8) < tol(0.8)
        assert abs(p['gray'].float().mean().item() - gray_p) < tol(gray_p)


def test_jitter_factor_ranges_match_color_jitter():
    cj = T.ColorJitter(0.4, 0.4, 0.4, 0.1)
    factors = params(20000)['factors'].numpy()
    for column, (lo, hi) in enumerate([cj.brightness, cj.contrast, cj.saturation, cj.hue]):
        f = factors[:, column]
        assert lo <= f.min() < lo + 0.01 and hi - 0.01 < f.max() <= hi
        uniform = lo + (hi - lo) * np.random.default_rng(column).random(20000)
        assert ks_statistic(f, uniform) < ks_limit(20000, 20000)


def test_jitter_order_is_a_uniform_random_permutation_per_sample():
    orders = torch.cat([params(240, seed=s)['order'] for s in range(100)])  # 24000 samples
    assert (orders.sort(1).values == torch.arange(4)).all()
    codes = (orders * torch.tensor([64, 16, 4, 1])).sum(1)
    counts = np.bincount(np.unique(codes.numpy(), return_inverse=True)[1])
    assert len(counts) == 24
    chi2 = ((counts - 1000) ** 2 / 1000).sum()
    assert chi2 < 49.7  # 23 degrees of freedom, 0.1% level
    # Every operation is as often first as last.
    for op in range(4):
        share = (orders == op).float().mean(0)
        assert torch.allclose(share, torch.full((4,), 0.25), atol=0.02)


@pytest.mark.parametrize('n', [1, 2, 3, 5, 8, 255, 256])
def test_hue_position_follows_the_slot_quarters(n):
    p = params(n)
    hue_pos = (p['order'] == 3).long().argmax(1)[p['slots']]  # in slot order
    expected = torch.cat([torch.full((hi - lo,), k) for k, (lo, hi) in enumerate(hue_group_bounds(n))])
    assert torch.equal(hue_pos, expected)
    assert torch.equal(p['slots'].sort().values, torch.arange(n))


# ---------------------------------------------------------------------------- pixels, given parameters
@pytest.mark.parametrize('source,size,kernel', [(32, 32, 'bilinear'), (96, 64, 'bicubic'), (64, 64, 'bicubic'),
                                                (48, 32, 'bilinear')])
def test_resize_weights_match_torchvision_resized_crop(source, size, kernel):
    """PIL's antialiased kernels, without its uint8 rounding: torchvision's tensor resize."""
    x = torch.rand(16, 3, source, source, generator=torch.Generator().manual_seed(0))
    p = params(16, 'stl10' if kernel == 'bicubic' else 'cifar10', size=source)
    wy = G.resize_weights(p['crop'][:, 0], p['crop'][:, 2], size, source, kernel)
    wx = G.resize_weights(p['crop'][:, 1], p['crop'][:, 3], size, source, kernel)
    ours = torch.einsum('nsh,nchw,ntw->ncst', wy, x, wx)
    for n in range(16):
        i, j, h, w = p['crop'][n].tolist()
        ref = TF.resized_crop(x[n], i, j, h, w, [size, size], INTERP[kernel], antialias=True)
        torch.testing.assert_close(ours[n], ref, atol=1e-5, rtol=0)


def test_small_images_take_their_weights_from_a_table_of_every_crop():
    """CIFAR-sized lines look their weights up (gpu_augment._weight_table): the same bits as computing them."""
    p = params(256, seed=4)
    assert 2 * 33 * 32 * 32 * 32 * 4 <= G.WEIGHT_TABLE_BYTES  # CIFAR takes the table
    wy, wx = G.crop_weights(p['crop'], 32, 32, 32, 'bilinear', p['flip'])
    assert torch.equal(wy, G.resize_weights(p['crop'][:, 0], p['crop'][:, 2], 32, 32))
    assert torch.equal(wx, G.resize_weights(p['crop'][:, 1], p['crop'][:, 3], 32, 32, flip=p['flip']))
    assert torch.equal(wx[p['flip']], G.resize_weights(p['crop'][:, 1], p['crop'][:, 3], 32, 32)[p['flip']].flip(1))


def pil_view(image, p, n, recipe):
    """torchvision's PIL path with sample n's parameters."""
    img = Image.fromarray(image.permute(1, 2, 0).numpy())

    def geometry(im):
        i, j, h, w = p['crop'][n].tolist()
        im = TF.resized_crop(im, i, j, h, w, [recipe.size] * 2, INTERP[recipe.kernel])
        return TF.hflip(im) if p['flip'][n] else im

    def colour(im):
        ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
        for op in p['order'][n].tolist() if p['jitter'][n] else []:
            im = ops[op](im, p['factors'][n, op].item())
        return TF.rgb_to_grayscale(im, 3) if p['gray'][n] else im
    return TF.to_tensor(geometry(colour(img)) if recipe.color_first else colour(geometry(img)))


@pytest.mark.parametrize('name', ['cifar10', 'stl10', 'tiny_imagenet'])
def test_views_are_the_pil_pipelines_pixels_given_the_same_parameters(name):
    """The same uint8 pixels but for rare off-by-one roundings of a resampling sum (float
    weights vs PIL's fixed point). Pillow 13 resamples some crops taller than the output
    vertically first, where we (like earlier Pillows) go horizontally first: the intermediate
    is rounded elsewhere, and a few percent of those crops' pixels differ, mostly by one."""
    recipe, n = G.RECIPES[name], 64
    images = smooth_images(n, SOURCE[name])
    p = params(n, name, seed=3)
    ref = torch.stack([pil_view(images[k], p, k, recipe) for k in range(n)])
    diff = ((G.apply_params(images, p, recipe) - ref) * 255).round().abs()
    tall = p['crop'][:, 2] > recipe.size
    assert (diff[~tall] > 0).float().mean() < 1e-3 and diff[~tall].max() <= 1
    if tall.any():
        assert (diff[tall] > 0).float().mean() < 0.1 and diff[tall].flatten().quantile(0.999) <= 1


def test_downscaling_antialiases_like_pil():
    """STL-10: 96 px crops shrink to 64 px; PIL (torchvision on PIL images) antialiases, so do we.
    Resampling without antialiasing (torch's interpolate, grid_sample) would be far from PIL's:
    benchmarks/antialias_effect.py measures by how much."""
    recipe, images = G.RECIPES['stl10'], photo_crops(128)
    p = params(128, 'stl10', seed=5)
    p['jitter'][:], p['gray'][:] = False, False
    assert ((p['crop'][:, 2] > 64) | (p['crop'][:, 3] > 64)).float().mean() > 0.5
    ref = torch.stack([pil_view(images[k], p, k, recipe) for k in range(128)]) * 255
    ours = (G.apply_params(images, p, recipe) * 255 - ref).abs()
    assert ours.mean() < 0.1 and ours.flatten().quantile(0.999) < 1.01
    plain = []  # the photos need antialiasing: resampling them without it is far from PIL
    for k, (i, j, h, w) in enumerate(p['crop'].tolist()):
        view = TF.resized_crop(images[k].float(), i, j, h, w, [64, 64], INTERP['bicubic'], antialias=False)
        plain.append(TF.hflip(view) if p['flip'][k] else view)
    plain = (torch.stack(plain).clamp(0, 255).round() - ref).abs()
    assert plain.mean() > 0.6 and plain.max() > 20


def test_antialias_benchmark_prints_its_numbers(repo_root, capsys):
    path = os.path.join(repo_root, 'benchmarks', 'antialias_effect.py')
    spec = importlib.util.spec_from_file_location('antialias_effect', path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(['--n', '16', '--data_root', os.path.join(repo_root, 'no-data-here')])
    out = json.loads(capsys.readouterr().out)  # the whole of stdout is the one object
    assert out['crops'] == 16 and out['data'].startswith('crops of')
    assert out['to_pil']['antialiased']['mean'] < 0.2 < out['to_pil']['plain']['mean']


# ---------------------------------------------------------------------------- distributions of views
@pytest.mark.slow
def test_view_colour_statistics_match_the_pil_pipeline():
    """10,000 CIFAR views of one image, on the device path and through augment.ssl_views: the
    per-channel mean and standard deviation of the views agree within sampling noise. Colour ops
    computed exactly, without PIL's truncation to uint8, made these views 1.2-1.4/255 brighter
    (z = 5.3 to 6.2 on the channel means)."""
    n, image = 10_000, dim_image()
    torch.manual_seed(0)
    transform, img = augment.ssl_views('cifar10')[0], Image.fromarray(image.permute(1, 2, 0).numpy())
    ref = torch.stack([transform(img) for _ in range(n)])
    g = torch.Generator().manual_seed(0)
    ours = torch.cat([views_of(image.expand(1000, -1, -1, -1), 'cifar10', g) for _ in range(n // 1000)])
    stats = lambda v: torch.cat([v.mean((2, 3)), v.std((2, 3))], 1)  # (n, 6): R, G, B means, then stds
    z = z_scores(stats(ours), stats(ref))
    assert z.abs().max() < 3, z


# ---------------------------------------------------------------------------- outputs
@pytest.mark.parametrize('name', sorted(G.RECIPES))
def test_augment_batch_dtype_shape_and_range(name):
    images = smooth_images(24, SOURCE[name])
    g = torch.Generator().manual_seed(0)
    a, b = views_of(images, name, g), views_of(images, name, g)
    size = G.RECIPES[name].size
    assert a.shape == (24, 3, size, size) and a.dtype == torch.float32 and torch.isfinite(a).all()
    spec = data.SPECS[name]
    raw = a * torch.tensor(spec.std).view(1, 3, 1, 1) + torch.tensor(spec.mean).view(1, 3, 1, 1)
    assert raw.min() > -1e-5 and raw.max() < 1 + 1e-5
    assert not torch.equal(a, b)  # a fresh draw per call


@pytest.mark.parametrize('name,size', [('cifar10', 32), ('stl10', 96)])
def test_per_batch_path_never_reads_device_values(name, size):
    """On the meta device every value read (.item(), .tolist(), .cpu(), boolean indexing) fails,
    so passing here means the per-batch path never waits for the GPU."""
    images = torch.empty(16, 3, size, size, dtype=torch.uint8, device='meta')
    out = views_of(images, name, None)
    assert out.device.type == 'meta' and out.shape == (16, 3, G.RECIPES[name].size, G.RECIPES[name].size)


# ---------------------------------------------------------------------------- DeviceViews
def indexed_set(n, size=32):
    """Image k is filled with the value k: the views of an identity augmentation name their images."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, 3)).copy()
    return readers.ArrayData(images, np.zeros(n, np.int64), ['x'])


def views_args(**kw):
    return Namespace(**{'dataset': 'cifar10', 'batch_size': 8, 'seed': 0, 'channels_last': False, **kw})


def test_device_views_interface_and_channels_last():
    train = readers.ArrayData(smooth_images(44, 32).permute(0, 2, 3, 1).numpy(), np.zeros(44, np.int64), ['x'])
    views = G.DeviceViews(views_args(channels_last=True), train, 2, torch.device('cpu'))
    assert len(views) == 5  # 44 // 8, the last partial batch dropped
    batches = list(views.epoch(0))
    assert len(batches) == 5 and all(len(v) == 2 for v in batches)
    for a, b in batches:
        assert a.shape == b.shape == (8, 3, 32, 32) and a.dtype == torch.float32
        assert a.is_contiguous(memory_format=torch.channels_last)
        assert not torch.equal(a, b)  # two independent views


def test_epoch_is_identical_after_a_resume():
    train = readers.ArrayData(smooth_images(40, 32).permute(0, 2, 3, 1).numpy(), np.zeros(40, np.int64), ['x'])
    straight = G.DeviceViews(views_args(), train, 2, torch.device('cpu'))
    first = [torch.cat(v) for v in straight.epoch(0)]
    second = [torch.cat(v) for v in straight.epoch(1)]
    resumed = G.DeviceViews(views_args(), train, 2, torch.device('cpu'))  # a new process starting at epoch 1
    assert all(torch.equal(a, torch.cat(b)) for a, b in zip(second, resumed.epoch(1)))
    assert all(torch.equal(a, torch.cat(b)) for a, b in zip(first, resumed.epoch(0)))
    assert not torch.equal(first[0], second[0])


def test_each_rank_takes_its_contiguous_slice_of_the_same_global_batch(monkeypatch):
    train = indexed_set(44)
    monkeypatch.setattr(G, 'augment_batch', lambda images, recipe, mean, std, gen, *layout: images.float())
    single = G.DeviceViews(views_args(), train, 1, torch.device('cpu'))
    global_batches = [v[0][:, 0, 0, 0].long() for v in single.epoch(3)]
    assert torch.cat(global_batches).unique().numel() == 40  # a permutation, last partial batch dropped
    monkeypatch.setattr(D, 'world_size', lambda: 2)
    per_rank = []
    for r in range(2):
        monkeypatch.setattr(D, 'rank', lambda r=r: r)
        views = G.DeviceViews(views_args(), train, 1, torch.device('cpu'))
        assert len(views) == 5
        per_rank.append([v[0][:, 0, 0, 0].long() for v in views.epoch(3)])
        assert all(torch.equal(i, v) for i, v in zip(views.batch_indices(3), per_rank[r]))
    for step, whole in enumerate(global_batches):
        assert torch.equal(torch.cat([per_rank[0][step], per_rank[1][step]]), whole)


def test_ranks_draw_different_augmentations(monkeypatch):
    train = readers.ArrayData(np.full((16, 32, 32, 3), 128, np.uint8), np.zeros(16, np.int64), ['x'])  # all equal
    monkeypatch.setattr(D, 'world_size', lambda: 2)
    out = []
    for r in range(2):
        monkeypatch.setattr(D, 'rank', lambda r=r: r)
        out.append(next(G.DeviceViews(views_args(), train, 1, torch.device('cpu')).epoch(0))[0])
    assert not torch.equal(out[0], out[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_device_views_never_synchronise_on_cuda():
    train = readers.ArrayData(smooth_images(64, 32).permute(0, 2, 3, 1).numpy(), np.zeros(64, np.int64), ['x'])
    steps = G.DeviceViews(views_args(channels_last=True), train, 2, torch.device('cuda')).epoch(0)
    next(steps)  # uploads the epoch's permutation and caches the constants: the only waits
    torch.cuda.set_sync_debug_mode('error')
    try:
        for _ in range(3):
            a, b = next(steps)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert a.is_cuda and a.shape == (8, 3, 32, 32)
