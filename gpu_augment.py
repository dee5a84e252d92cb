"""Batched SSL views on the training device (the airbench data path, DESIGN.md).

The training set lives on the device as uint8; each step gathers a batch and augments it
with per-sample random parameters in a few dozen batched tensor ops, with no host sync
(tests run it on the meta device, where reading a value fails). It follows the
torchvision/PIL pipelines of augment.ssl_views (REFERENCE.md section 3) in distribution, and
given the same parameters it matches torchvision's tensor ops to 1e-4 and PIL to its uint8
rounding (tests/test_gpu_augment.py).

Faithful to torchvision, on purpose:
* RandomResizedCrop: the same 10 attempts (area ~ U(scale) * H*W, log-aspect ~ U(log ratio),
  w, h = round(sqrt(..)), the first attempt that fits wins), drawn for all samples at once,
  then torchvision's centre-crop fallback; integer boxes, offsets uniform like torch.randint.
* Resampling: PIL's separable filter exactly (PIL is what torchvision calls on PIL images):
  a triangle (bilinear) or Keys a=-0.5 (bicubic) kernel whose support widens by the scale
  factor when downscaling (= PIL's antialiasing), taps limited to the crop and renormalised,
  bicubic clipped to [0, 1] after each pass like PIL's uint8 intermediate. Two batched matmuls
  with per-sample weight matrices; the flip is folded into them. grid_sample would not
  antialias: on STL-10-like photo crops (96 px source, 70% of the crops shrink) that changes
  pixels by 0.71/255 on average and up to 53/255, and moves the result away from PIL's from
  0.30/255 (rounding) to 0.82/255 on average (antialias_effect(); test_downscaling_antialiases_like_pil).
* ColorJitter(0.4, 0.4, 0.4, 0.1) with p: every sample has its own factors and its own random
  order of brightness/contrast/saturation/hue; blends clamp to [0, 1]; contrast blends with the
  mean of the grey image; hue shifts H in HSV (torchvision's tensor formulas).
* Grayscale: 0.299 R + 0.587 G + 0.114 B (PIL's convert('L')).

Known differences, all small: PIL rounds to uint8 after every operation and its hue shift goes
through 8-bit HSV (so a jittered PIL view carries up to ~16/255 of quantisation noise at single
pixels, 0.9/255 on average; ours is the exact shift). The installed Pillow (13.0) runs the
vertical pass first for some crops (h > S and 2w < h + S), which only moves where a bicubic
overshoot is clipped: one photo pixel in 10^4 differs by more than 1.4/255. On CUDA, matmuls
may use TF32 (~1e-3 relative). The hue position is stratified over the batch (sample_params).
"""
import math
from dataclasses import dataclass

import numpy as np
import torch

import data as datasets
import distributed as D
from utils import device_constant

GRAY = (0.299, 0.587, 0.114)  # PIL's ITU-R 601-2 luma


@dataclass(frozen=True)
class Recipe:
    size: int                      # output side
    scale: tuple                   # RandomResizedCrop area range
    ratio: tuple                   # RandomResizedCrop aspect range
    kernel: str                    # 'bilinear' | 'bicubic'
    jitter_p: float
    gray_p: float
    color_first: bool              # colour ops before the crop (STL-10/Tiny-ImageNet) or after it (CIFAR)
    jitter: tuple = (0.4, 0.4, 0.4, 0.1)  # ColorJitter brightness, contrast, saturation, hue


_CIFAR = Recipe(32, (0.08, 1.0), (3 / 4, 4 / 3), 'bilinear', 0.8, 0.2, False)
_64PX = Recipe(64, (0.2, 1.0), (3 / 4, 4 / 3), 'bicubic', 0.8, 0.1, True)
# augment.ssl_views, one entry per in-memory data set (test_recipes_match_augment_py checks it).
RECIPES = {'cifar10': _CIFAR, 'cifar100': _CIFAR, 'fashionmnist': _CIFAR, 'stl10': _64PX, 'tiny_imagenet': _64PX}

ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params


# ---------------------------------------------------------------------------- parameters
def sample_crops(u_area, u_ratio, u_pos, height, width, scale, ratio):
    """RandomResizedCrop boxes (i, j, h, w) as an (N, 4) int64 tensor, from uniforms
    u_area, u_ratio (N, ATTEMPTS) and u_pos (N, 2): torchvision's get_params for every sample."""
    target = height * width * (scale[0] + (scale[1] - scale[0]) * u_area)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u_ratio)
    w = torch.round(torch.sqrt(target * aspect))  # round half to even, like Python's round()
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(1, keepdim=True)     # the first attempt that fits
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    i = torch.floor(u_pos[:, 0] * (height - h + 1))  # = torch.randint(0, height - h + 1)
    j = torch.floor(u_pos[:, 1] * (width - w + 1))
    # No attempt fits: torchvision's centre crop of the allowed aspect closest to the image's.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    ok = fits.any(1)
    box = [torch.where(ok, v, f) for v, f in ((i, (height - fh) // 2), (j, (width - fw) // 2), (h, fh), (w, fw))]
    return torch.stack(box, 1).long()


def hue_group_bounds(n):
    """Slots [lo, hi) of the batch whose hue shift comes k-th, k = 0..3 (quarters of the batch)."""
    return [(k * n // 4, (k + 1) * n // 4) for k in range(4)]


def sample_params(n, recipe, height, width, generator, device):
    """Per-sample random parameters of one view of n images of (height, width).

    crop (N, 4) int64 (i, j, h, w); flip, jitter, gray (N,) bool; order (N, 4) int64, the
    colour operations in the order applied (0 brightness, 1 contrast, 2 saturation, 3 hue,
    torchvision's numbering); factors (N, 4) float (brightness, contrast, saturation, hue);
    slots (N,) int64, the samples sorted by the position of their hue shift (see color_jitter).

    The order is uniform over the 24 permutations for every sample, as in torchvision. Only
    the hue position is stratified: a random quarter of the batch has it first, another
    second, etc. (exactly uniform when 4 divides N; within 1/N otherwise), so that the costly
    hue shift runs once per sample instead of once per position."""
    u = torch.rand(n, 2 * ATTEMPTS + 13, generator=generator, device=device)
    crop = sample_crops(u[:, :ATTEMPTS], u[:, ATTEMPTS:2 * ATTEMPTS], u[:, 2 * ATTEMPTS:2 * ATTEMPTS + 2],
                        height, width, recipe.scale, recipe.ratio)
    k = 2 * ATTEMPTS + 2
    slots = u[:, k + 3].argsort()                                      # a random permutation
    slot = torch.arange(n, device=device)
    slot_hue_pos = (4 * (slot + 1) + n - 1) // n - 1                  # the quarter each slot is in
    hue_pos = torch.empty_like(slot).scatter_(0, slots, slot_hue_pos)
    blend_rank = u[:, k + 4:k + 7].argsort(1).argsort(1)              # random order of the three blends
    position = torch.cat([blend_rank + (blend_rank >= hue_pos[:, None]).long(), hue_pos[:, None]], 1)
    b, c, s, h = recipe.jitter
    lo = device_constant((max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h), torch.device(device))
    hi = device_constant((1 + b, 1 + c, 1 + s, h), torch.device(device))
    return {'crop': crop,
            'flip': u[:, k] < 0.5,
            'jitter': u[:, k + 1] < recipe.jitter_p,
            'gray': u[:, k + 2] < recipe.gray_p,
            'order': position.argsort(1),
            'factors': lo + (hi - lo) * u[:, k + 7:k + 11],
            'slots': slots}


# ---------------------------------------------------------------------------- resampling
def _filter(x, kernel):
    x = x.abs()
    if kernel == 'bilinear':
        return (1 - x).clamp_min(0)
    a = -0.5  # PIL's bicubic (PyTorch's non-antialiased bicubic uses -0.75)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resize_weights(start, length, out_size, in_size, kernel='bilinear', antialias=True):
    """(N, out_size, in_size) matrices resampling pixels [start, start + length) of a line of
    in_size pixels to out_size pixels, as PIL's ImagingResample does (precompute_coeffs)."""
    start, length = start.float()[:, None, None], length.float()[:, None, None]
    scale = length / out_size
    support_scale = scale.clamp_min(1.0) if antialias else torch.ones_like(scale)
    centre = start + (torch.arange(out_size, device=start.device).view(1, -1, 1) + 0.5) * scale
    x = torch.arange(in_size, device=start.device).view(1, 1, -1).float()
    w = _filter((x + 0.5 - centre) / support_scale, kernel)
    w = w * ((x >= start) & (x < start + length))
    return w / w.sum(-1, keepdim=True).clamp_min(1e-12)


def crop_resize(x, crop, size, kernel='bilinear', flip=None, antialias=True, clamp=True):
    """Crop boxes (N, 4) = (i, j, h, w) of float images x (N, C, H, W), each resized to size x size,
    mirrored where flip (N,) is set. clamp: clip to [0, 1] after each pass (PIL's uint8)."""
    n, c, height, width = x.shape
    wy = resize_weights(crop[:, 0], crop[:, 2], size, height, kernel, antialias)
    wx = resize_weights(crop[:, 1], crop[:, 3], size, width, kernel, antialias)
    if flip is not None:
        wx = torch.where(flip[:, None, None], wx.flip(1), wx)
    clamp = clamp and kernel != 'bilinear'  # convex bilinear weights cannot leave [0, 1]
    out = torch.bmm(x.reshape(n, c * height, width), wx.transpose(1, 2))  # horizontal pass first, as PIL
    if clamp:
        out = out.clamp_(0, 1)
    out = torch.einsum('nsh,nchw->ncsw', wy, out.view(n, c, height, size))
    return out.clamp_(0, 1) if clamp else out


# ---------------------------------------------------------------------------- colour
# (float arithmetic rather than boolean masks on whole images: bool kernels are slow on CPU)
def grayscale(x):
    """(N, 1, H, W) luma of (N, 3, H, W) images."""
    n, _, height, width = x.shape
    return torch.matmul(device_constant(GRAY, x.device).view(1, 1, 3), x.reshape(n, 3, -1)).view(n, 1, height, width)


def adjust_hue(x, shift):
    """Rotate the hue of x (N, 3, H, W) in [0, 1] by shift (N,) turns: torchvision's
    RGB -> HSV -> RGB (_rgb2hsv, _hsv2rgb) in closed form; V and the chroma V - min are kept."""
    r, g, b = x.unbind(1)
    maxc = x.amax(1)
    chroma = maxc - x.amin(1)
    # hue * chroma in sextants; ties between maximal channels give the same hue either way
    hue = torch.where(maxc == r, g - b, torch.where(maxc == g, b - r + 2 * chroma, r - g + 4 * chroma))
    hue = hue / chroma.clamp_min(1e-12) + 6 * shift.view(-1, 1, 1)  # |g - b| <= chroma: bounded
    hue = hue - 6 * torch.floor(hue / 6)
    # channel = V - chroma * clamp(2 - |k - 2|, 0, 1) with k = (hue + 5, 3, 1 for R, G, B) mod 6;
    # for k in [1, 11), |k - 2| mod 6 is ||k - 5| - 3|, so no second modulo is needed.
    k = hue.unsqueeze(1) + device_constant((5.0, 3.0, 1.0), x.device).view(1, 3, 1, 1)
    k = k.sub_(5).abs_().sub_(3).abs_().neg_().add_(2).clamp_(0, 1)
    return k.mul_(chroma.unsqueeze(1)).neg_().add_(maxc.unsqueeze(1))


def color_jitter(x, order, factors, on):
    """ColorJitter with per-sample factors (N, 4) applied in per-sample order (N, 4) where on (N,).

    Brightness, contrast and saturation are blends f * x + (1 - f) * D with D = 0, the mean grey
    level, or the grey image; step k applies each sample's k-th blend (factor 1 for the samples
    whose k-th operation is the hue shift). The batch must be sorted by hue position (the
    `slots` of sample_params): step k shifts the hue of the k-th quarter only."""
    n = x.shape[0]
    view = lambda t: t.float().view(-1, 1, 1, 1)
    blend = torch.where(on[:, None], factors[:, :3], torch.ones_like(factors[:, :3]))
    blend = torch.cat([blend, torch.ones_like(blend[:, :1])], 1)  # the hue "blend" is the identity
    for k, (lo, hi) in enumerate(hue_group_bounds(n)):
        op = order[:, k]
        gray = grayscale(x)
        degenerate = torch.lerp(gray, gray.mean((2, 3), keepdim=True), view(op == 1)).mul_(view(op != 0))
        x = torch.lerp(degenerate, x, view(blend.gather(1, op[:, None]))).clamp_(0, 1)
        if hi > lo:
            part = x[lo:hi]
            x[lo:hi] = torch.lerp(part, adjust_hue(part, factors[lo:hi, 3]), view(on[lo:hi]))
    return x


def random_grayscale(x, gray):
    return torch.lerp(x, grayscale(x).expand_as(x), gray.float().view(-1, 1, 1, 1))


# ---------------------------------------------------------------------------- pipeline
def apply_params(images, params, recipe, antialias=True):
    """uint8 (N, 3, H, W) -> float views (N, 3, S, S) in [0, 1], for given parameters."""
    slots = params['slots']  # work in hue-position order (color_jitter), return in the input order
    p = {k: v[slots] for k, v in params.items()}
    x = images[slots].to(torch.float32, memory_format=torch.contiguous_format).div_(255)
    if recipe.color_first:  # STL-10/Tiny-ImageNet: jitter and grayscale on the full image, then crop
        x = random_grayscale(color_jitter(x, p['order'], p['factors'], p['jitter']), p['gray'])
        x = crop_resize(x, p['crop'], recipe.size, recipe.kernel, p['flip'], antialias)
    else:
        x = crop_resize(x, p['crop'], recipe.size, recipe.kernel, p['flip'], antialias)
        x = random_grayscale(color_jitter(x, p['order'], p['factors'], p['jitter']), p['gray'])
    return torch.empty_like(x).index_copy_(0, slots, x)


def normalize(x, dataset):
    spec = datasets.SPECS[dataset]
    mean = device_constant(tuple(spec.mean), x.device).view(1, 3, 1, 1)
    std = device_constant(tuple(spec.std), x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment_batch(images, dataset, generator):
    """One SSL view of each uint8 image (N, 3, H, W): normalised float (N, 3, S, S).
    All randomness comes from `generator` (on the images' device)."""
    recipe = RECIPES[dataset]
    params = sample_params(images.shape[0], recipe, images.shape[2], images.shape[3], generator, images.device)
    return normalize(apply_params(images, params, recipe), dataset)


def stream_seed(*keys):
    """A 63-bit seed from integer keys, well mixed (no collisions between nearby keys)."""
    return int(np.random.SeedSequence([int(k) % 2 ** 32 for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class DeviceViews:
    """Same interface as main.CPUViews: len() = steps per epoch, epoch(e) yields n_views tensors.

    The epoch's permutation depends on (seed, epoch) only, so every rank draws the same one and
    takes its contiguous slice of each global batch; the augmentation stream depends on
    (seed, epoch, rank), so a resumed run repeats an epoch exactly."""

    def __init__(self, args, train, n_views, device):
        if args.dataset not in RECIPES:
            raise ValueError(f'--aug gpu has no recipe for {args.dataset!r}; use --aug cpu')
        # NHWC memory seen as NCHW: the uint8 set is channels_last without a copy.
        self.images = torch.from_numpy(np.ascontiguousarray(train.images)).to(device).permute(0, 3, 1, 2)
        self.dataset, self.n_views, self.device, self.seed = args.dataset, n_views, device, args.seed
        self.batch_size = args.batch_size
        self.per_rank = args.batch_size // D.world_size()
        self.channels_last = bool(getattr(args, 'channels_last', False))

    def __len__(self):
        return len(self.images) // self.batch_size

    def batch_indices(self, epoch):
        """This rank's image indices of each step: its contiguous slice of each global batch of a
        permutation that depends on (seed, epoch) only; the last partial batch is dropped."""
        shuffle = torch.Generator().manual_seed(stream_seed(1, self.seed, epoch))
        order = torch.randperm(len(self.images), generator=shuffle).to(self.device)  # one transfer per epoch
        first = D.rank() * self.per_rank
        for step in range(len(self)):
            start = step * self.batch_size + first
            yield order[start:start + self.per_rank]

    def epoch(self, epoch):
        gen = torch.Generator(device=self.device).manual_seed(stream_seed(2, self.seed, epoch, D.rank()))
        for idx in self.batch_indices(epoch):
            batch = self.images[idx]
            views = [augment_batch(batch, self.dataset, gen) for _ in range(self.n_views)]
            if self.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            yield views


# ---------------------------------------------------------------------------- measurement
def antialias_effect(images, dataset='stl10', n=512, seed=0):
    """Mean and max |PIL-style antialiased - plain| pixel difference (in 1/255) of the crops,
    i.e. what grid_sample-style resampling would change. images: uint8 (N, 3, H, W)."""
    recipe = RECIPES[dataset]
    gen = torch.Generator(device=images.device).manual_seed(seed)
    batch = images[torch.randint(len(images), (n,), generator=gen, device=images.device)]
    params = sample_params(n, recipe, batch.shape[2], batch.shape[3], gen, images.device)
    params['jitter'] = torch.zeros_like(params['jitter'])
    params['gray'] = torch.zeros_like(params['gray'])
    diff = (apply_params(batch, params, recipe, True) - apply_params(batch, params, recipe, False)).abs() * 255
    return diff.mean().item(), diff.max().item()
