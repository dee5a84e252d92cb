"""Batched SSL views on the training device (the airbench data path, DESIGN.md).

The training set lives on the device as uint8; each step augments a batch with per-sample random
parameters in batched tensor ops, with no host sync. The views follow the torchvision/PIL pipelines
of augment.ssl_views (docs/protocol.md section 3) in distribution, and given the same parameters
they are PIL's pixels: every step lands on the uint8 value PIL stores, up to the rounding of
resampling sums (tests/test_gpu_augment.py).
"""
import functools
import math

import numpy as np
import torch

from mixbt import data as datasets
from mixbt import distributed as D
from mixbt.errors import MixBTError
from mixbt.gpu_colour import color_jitter, random_grayscale
from mixbt.runtime import device_constant

# The SSL view of each in-memory data set: its registry row's recipe (data.Recipe), as augment.py builds it.
RECIPES = {name: spec.recipe for name, spec in datasets.SPECS.items() if spec.in_memory}

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
# Pixels are floats on PIL's uint8 grid (0..255) from the first step to the last.
def to_uint8(x, kernel='bicubic', out=None):
    """PIL's uint8 result of a resampling pass: rounded half up, clipped to [0, 255] (in place, or
    into out). Bilinear weights are convex: their sums never leave [0, 255], and the clip is skipped."""
    x = torch.add(x, 0.5, out=x if out is None else out).floor_()
    return x if kernel == 'bilinear' else x.clamp_(0, 255)


def _filter(x, kernel):
    """PIL's kernel at distances x (consumed)."""
    x = x.abs_()
    if kernel == 'bilinear':
        return torch.rsub(x, 1).clamp_min_(0)
    a = -0.5  # PIL's bicubic (PyTorch's non-antialiased bicubic uses -0.75)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resize_weights(start, length, out_size, in_size, kernel='bilinear', flip=None):
    """(N, out_size, in_size) matrices resampling pixels [start, start + length) of a line of
    in_size pixels to out_size pixels, as PIL's ImagingResample does (precompute_coeffs): the
    kernel's support widens by the scale factor when downscaling (PIL's antialiasing) and the taps
    are limited to the crop and renormalised. Where flip (N,) is set, the output is mirrored."""
    start, length = start.float()[:, None, None], length.float()[:, None, None]
    scale = length / out_size
    position = torch.arange(out_size, device=start.device).view(1, -1, 1).float()
    if flip is not None:  # output pixel s takes the weights of out_size - 1 - s
        position = position + flip.float()[:, None, None] * (out_size - 1 - 2 * position)
    centre = start + (position + 0.5) * scale
    x = torch.arange(in_size, device=start.device).view(1, 1, -1).float()
    distance = x + 0.5 - centre
    if in_size > out_size:  # else no crop is larger than the output: the support never widens
        distance = distance.div_(scale.clamp_min(1.0))
    w = _filter(distance, kernel)
    w = w.mul_((x >= start) & (x < start + length))
    return w.div_(w.sum(-1, keepdim=True).clamp_min_(1e-12))


WEIGHT_TABLE_BYTES = 16 * 2 ** 20


@functools.lru_cache(maxsize=None)
def _weight_table(in_size, out_size, kernel, device):
    """resize_weights of every (start, length, flip) of a line, by key 2 * (start * (in_size + 1) +
    length) + flip; made once per device for small images (CIFAR: 8.6 MB), where a lookup costs
    far less than the dozen passes that compute a batch's weights."""
    start, length, flip = (t.reshape(-1) for t in torch.meshgrid(
        *(torch.arange(k, device=device) for k in (in_size, in_size + 1, 2)), indexing='ij'))
    return resize_weights(start, length, out_size, in_size, kernel, flip)


def crop_weights(crop, size, height, width, kernel='bilinear', flip=None):
    """(wy, wx): resize_weights of the crop boxes (N, 4) on both axes, the horizontal one mirrored
    where flip (N,) is set."""
    n = len(crop)
    if height == width and 2 * height * (height + 1) * size * height * 4 <= WEIGHT_TABLE_BYTES:
        key = (crop[:, :2] * (height + 1) + crop[:, 2:]).mul_(2)
        if flip is not None:
            key[:, 1] += flip.long()
        w = _weight_table(height, size, kernel, crop.device).index_select(0, key.t().reshape(-1))
    elif height == width:  # both axes' weights in one set of passes: rows (i, h) then (j, w)
        mirror = None if flip is None else torch.cat([torch.zeros_like(flip), flip])
        w = resize_weights(crop[:, :2].t().reshape(-1), crop[:, 2:].t().reshape(-1), size, height, kernel, mirror)
    else:
        return (resize_weights(crop[:, 0], crop[:, 2], size, height, kernel),
                resize_weights(crop[:, 1], crop[:, 3], size, width, kernel, flip))
    return w[:n], w[n:]


def crop_resize(x, crop, size, kernel='bilinear', flip=None):
    """Crop boxes (N, 4) = (i, j, h, w) of images x (N, C, H, W) in 0..255, each resized to
    size x size and mirrored where flip (N,) is set, in PIL's two passes (horizontal first), each
    with a uint8 result: two batched matmuls with per-sample weights. Where x's memory is laid out
    (N, H, C, W), as apply_params makes it, neither pass copies its input. The result is contiguous."""
    n, c, height, width = x.shape
    wy, wx = crop_weights(crop, size, height, width, kernel, flip)
    rows = x.permute(0, 2, 1, 3).reshape(n, height * c, width)
    wide = to_uint8(torch.bmm(rows, wx.transpose(1, 2)), kernel)  # (N, H, C, S) memory
    full = torch.bmm(wy, wide.view(n, height, c * size)).view(n, size, c, size).permute(0, 2, 1, 3)
    return to_uint8(full, kernel, out=torch.empty(full.shape, device=x.device))


# ---------------------------------------------------------------------------- pipeline
def apply_params(images, params, recipe, memory_format=torch.contiguous_format):
    """uint8 (N, 3, H, W) -> float views (N, 3, S, S) in [0, 1] in `memory_format`, for given
    parameters. Fastest when the images' memory is (N, H, W, C), as DeviceViews keeps them."""
    slots = params['slots']  # work in hue-position order (color_jitter), return in the input order
    p = {k: v[slots] for k, v in params.items()}
    n, c, height, width = images.shape
    chosen = images.permute(0, 2, 3, 1).index_select(0, slots)  # (N, H, W, C)
    if recipe.color_first:  # STL-10/Tiny-ImageNet: jitter and grayscale on the full image, then crop
        x = chosen.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        x = random_grayscale(color_jitter(x, p['order'], p['factors'], p['jitter']), p['gray'])
        x = crop_resize(x, p['crop'], recipe.size, recipe.kernel, p['flip'])
    else:  # crop_resize reads (N, H, C, W) memory without a copy; the colour ops prefer NCHW
        x = torch.empty(n, height, c, width, device=images.device).copy_(chosen.transpose(2, 3)).transpose(1, 2)
        x = crop_resize(x, p['crop'], recipe.size, recipe.kernel, p['flip'])
        x = random_grayscale(color_jitter(x, p['order'], p['factors'], p['jitter']), p['gray'])
    out = torch.empty(x.shape, device=x.device, memory_format=memory_format)
    return out.index_copy_(0, slots, x).div_(255)  # ToTensor's x / 255


def normalize(x, mean, std, inplace=False):
    mean = device_constant(tuple(mean), x.device).view(1, 3, 1, 1)
    std = device_constant(tuple(std), x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std) if inplace else (x - mean) / std


def augment_batch(images, recipe, mean, std, generator, memory_format=torch.contiguous_format):
    """One SSL view of each uint8 image (N, 3, H, W) by `recipe` (a data.Recipe), normalised with
    (mean, std): float (N, 3, S, S) in `memory_format`. All randomness comes from `generator`
    (on the images' device)."""
    params = sample_params(images.shape[0], recipe, images.shape[2], images.shape[3], generator, images.device)
    return normalize(apply_params(images, params, recipe, memory_format), mean, std, inplace=True)


def stream_seed(*keys):
    """A 63-bit seed from integer keys, well mixed (no collisions between nearby keys)."""
    return int(np.random.SeedSequence([int(k) % 2 ** 32 for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class DeviceViews:
    """Same interface as main.CPUViews: len() = steps per epoch, epoch(e) yields n_views tensors.

    The epoch's permutation depends on (seed, epoch) only, so every rank draws the same one and
    takes its contiguous slice of each global batch; the augmentation stream depends on
    (seed, epoch, rank), so a resumed run repeats an epoch exactly."""

    def __init__(self, args, train, n_views, device):
        spec = datasets.spec_of(args.dataset)  # a folder's row: resolved once main() has read it
        if not spec.in_memory or spec.streamed or any(spec.recipe.blur + spec.recipe.solarize):
            raise MixBTError(f'--aug gpu cannot make the views of {args.dataset!r} (images not held in memory, or '
                             'views with blur or solarisation); use --aug cpu')
        pipeline = datasets.select_pipeline(args.dataset, getattr(args, 'pipeline', 'mixbt'))
        self.recipe, self.mean, self.std = pipeline.recipe, pipeline.mean, pipeline.std
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
            batch = self.images.permute(0, 2, 3, 1).index_select(0, idx).permute(0, 3, 1, 2)  # rows: a memcpy each
            layout = torch.channels_last if self.channels_last else torch.contiguous_format
            yield [augment_batch(batch, self.recipe, self.mean, self.std, gen, layout) for _ in range(self.n_views)]
