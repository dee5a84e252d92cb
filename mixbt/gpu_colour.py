"""PIL's colour operations on batches of images on the training device (gpu_augment.py's views).

Pixels are float32 on PIL's uint8 grid (0..255). Every operation lands on the uint8 value that
PIL stores: the ImageEnhance blends repeat Image.blend's float32 arithmetic, and the hue shift
goes through PIL's 8-bit HSV (Convert.c's rgb2hsv_row and hsv2rgb), whose float/double mix is
folded into three tables (2 MB) built once per device. Three lookups replace the dozens of float
and double passes per pixel that made the hue shift most of the cost of a view on the CPU; the
tables are checked against PIL itself (tests/test_gpu_augment.py). Per-sample choices are 0/1
weights, never boolean masks over whole images (slow on the CPU).
"""
import functools

import numpy as np
import torch

GRAY = (19595, 38470, 7471)  # PIL's ITU-R 601-2 luma in 16-bit fixed point (Convert.c's L24)
# hsv2rgb's choice among (v, p, q, t) for R, G, B in each sextant of the hue
SEXTANTS = ((0, 3, 1), (2, 0, 1), (1, 0, 3), (1, 2, 0), (3, 1, 0), (0, 1, 2))


# ---------------------------------------------------------------------------- PIL's HSV as tables
SPAN = 511  # channel differences g - b and b - r run over -255..255


def _hue_table():
    """Keyed by (g - b + 255) * 511 + b - r + 255, which fixes a colour up to a common offset: PIL's
    8-bit hue + 256 * chroma. rgb2hsv_row picks its formula by the first maximal channel (red,
    else green, else blue) and computes h = offset + b_ / chroma - a_ / chroma (a_, b_ the
    numerators max - channel of the two channels after the max one, cyclically) with float32
    quotients, in float for red and in double for green and blue, stores it as float, then
    fmod(h / 6.0 + 1.0, 1.0) in double, stored as float, and (int)(h * 255.0)."""
    d1, d2 = (t.ravel() for t in np.meshgrid(np.arange(-255, 256), np.arange(-255, 256), indexing='ij'))
    rgb = np.stack([np.zeros_like(d1), d1 + d2, d2])  # up to an offset
    numerators = rgb.max(0) - rgb
    chroma = numerators.max(0)
    first_max = (numerators == 0).argmax(0)
    a, b = (np.take_along_axis(numerators, ((first_max + k) % 3)[None], 0)[0] for k in (1, 2))
    quotient = lambda n: (n.astype(np.float32) / np.maximum(chroma, 1).astype(np.float32)).astype(np.float64)
    h = ((2.0 * first_max + quotient(b)) - quotient(a)).astype(np.float32).astype(np.float64)
    h = np.fmod(h / 6.0 + 1.0, 1.0).astype(np.float32).astype(np.float64)
    hue = np.where(chroma > 0, np.clip(np.trunc(h * 255.0), 0, 255), 0)
    return np.where(chroma <= 255, hue + 256 * chroma, 0).astype(np.int32)  # larger spans never occur


def _saturation_table():
    """256 x PIL's 8-bit saturation by key 256 * chroma + max: (int)((float)chroma / max * 255.0)."""
    chroma, v = np.meshgrid(np.arange(256), np.arange(256), indexing='ij')
    s = chroma.astype(np.float32) / np.maximum(v, 1).astype(np.float32)
    return 256 * np.clip(np.trunc(s.astype(np.float64) * 255.0), 0, 255).ravel().astype(np.int32)


def _rgb_weights():
    """(3, 65536) float32 by key 256 * s + h: R, G and B are round(v * weight). hsv2rgb takes each
    channel from v (weight 1), p, q or t (v times 1 - fs, 1 - fs * f, 1 - fs * (1 - f)), by the
    sextant of h. These float32 weights give PIL's p, q and t for all 2^24 (h, s, v)
    (tests/test_gpu_augment.py checks every (h, s) with several v)."""
    s, h = (t.ravel() for t in np.meshgrid(np.arange(256, dtype=np.float32), np.arange(256, dtype=np.float32),
                                           indexing='ij'))
    sextant = np.floor(h * np.float32(6) / np.float32(255))
    f = (h * np.float32(6) - np.float32(255) * sextant) / np.float32(255)
    fs = s / np.float32(255)
    one = np.ones_like(fs)
    sources = np.stack([one, one - fs, one - fs * f, one - fs * (one - f)])  # v, p, q, t
    pick = np.asarray(SEXTANTS).T[:, sextant.astype(np.int64) % 6]            # (3, 65536)
    return np.ascontiguousarray(np.take_along_axis(sources, pick, 0))


@functools.lru_cache(maxsize=None)
def hsv_tables(device):
    """The tables on `device`, made once: the per-batch path never waits for a host copy."""
    tables = {'hue': _hue_table(), 'saturation': _saturation_table(), 'rgb': _rgb_weights()}
    return {k: torch.from_numpy(v).to(device) for k, v in tables.items()}


def lookup(table, key, dim=0):
    """table[key] along `dim` for an integer key of any shape (index_select: much faster than
    indexing on the CPU)."""
    out = table.index_select(dim, key.reshape(-1))
    return out.view(*table.shape[:dim], *key.shape, *table.shape[dim + 1:])


# ---------------------------------------------------------------------------- colour spaces
def grayscale(x):
    """PIL's convert('L') of (N, 3, H, W) images: (N, 1, H, W), floor((fixed-point sum + 32768) / 65536).
    In units of 1/65536 every product and partial sum is exact in float32, in any order (a fused
    multiply-add included)."""
    r, g, b = x.unbind(1)
    wr, wg, wb = (w / 65536 for w in GRAY)
    half = torch.full((), 0.5, device=x.device)
    return torch.add(half, r, alpha=wr).add_(g, alpha=wg).add_(b, alpha=wb).floor_().unsqueeze(1)


def hue_key(x):
    """The hue table's key (g - b + 255) * 511 + b - r + 255 of each pixel of x (N, 3, H, W): int32 (N, H, W)."""
    r, g, b = x.unbind(1)
    offset = torch.full((), 255 * SPAN + 255, dtype=x.dtype, device=x.device)
    return torch.add(offset, g, alpha=SPAN).add_(b, alpha=1 - SPAN).sub_(r).to(torch.int32)


def _hsv(x):
    """(hue + 256 * chroma, 256 * saturation, float v) of each pixel: two table lookups."""
    tables = hsv_tables(x.device)
    hue_chroma = lookup(tables['hue'], hue_key(x))
    v = x.amax(1)
    s256 = lookup(tables['saturation'], (hue_chroma & 0xFF00).add_(v.to(torch.int32)))
    return hue_chroma, s256, v


def rgb_to_hsv(x):
    """PIL's 8-bit HSV of (N, 3, H, W) images: h, 256 * s and v, int32 tensors (N, H, W)."""
    hue_chroma, s256, v = _hsv(x)
    return hue_chroma.bitwise_and_(255), s256, v.to(torch.int32)


def hsv_to_rgb(h, s256, v):
    """PIL's 8-bit HSV -> RGB (hsv2rgb) of h, 256 * s and v (N, H, W): float32 (N, 3, H, W)."""
    weights = lookup(hsv_tables(v.device)['rgb'], s256 + h, dim=1)  # (3, N, H, W)
    return weights.mul_(v.to(torch.float32)).add_(0.5).floor_().transpose(0, 1)  # C's round(), as v >= 0


def adjust_hue(x, shift):
    """torchvision's adjust_hue on PIL images, for x (N, 3, H, W) and shift (N,) turns: PIL's 8-bit
    H plus int(shift * 255), wrapping around at 256 like numpy's uint8."""
    hue_chroma, s256, v = _hsv(x)
    step = torch.trunc(shift.double() * 255).to(torch.int32).view(-1, 1, 1)
    return hsv_to_rgb(hue_chroma.add_(step).bitwise_and_(255), s256, v)  # the chroma bits drop out


# ---------------------------------------------------------------------------- ColorJitter, RandomGrayscale
def blend_step(x, op, alpha):
    """Each sample's ImageEnhance blend, in place on x (N, 3, H, W): op (N,) 0 brightness,
    1 contrast, 2 saturation (3, the hue shift: unchanged, given alpha 1); alpha (N,) its factor.
    Image.blend's degenerate + alpha * (x - degenerate) in float32, clipped and truncated, with
    degenerate 0, the grey image's rounded mean or the grey image."""
    pixels = x.shape[2] * x.shape[3]
    view = lambda t: t.to(x.dtype).view(-1, 1, 1, 1)
    gray = grayscale(x)
    # Contrast's int(mean + 0.5); the float32 sum is exact up to 256 x 256 pixels
    mean = gray.sum((2, 3), keepdim=True).add_(pixels / 2).div_(pixels).floor_()
    degenerate = torch.addcmul(mean.mul_(view(op == 1)), gray, view(op == 2))  # exact: the weights are 0 or 1
    return x.sub_(degenerate).mul_(view(alpha)).add_(degenerate).clamp_(0, 255).floor_()


def hue_group_bounds(n):
    """Slots [lo, hi) of the batch whose hue shift comes k-th, k = 0..3 (quarters of the batch)."""
    return [(k * n // 4, (k + 1) * n // 4) for k in range(4)]


def color_jitter(x, order, factors, on):
    """ColorJitter with per-sample factors (N, 4) applied in per-sample order (N, 4) where on (N,),
    in place on x (N, 3, H, W).

    The batch must be sorted by hue position (the `slots` of gpu_augment.sample_params): at step
    k the k-th quarter shifts its hue and the other samples apply their k-th blend (a factor of 1
    where the jitter is off leaves the pixels as they are)."""
    n = x.shape[0]
    alpha = torch.where(on[:, None], factors[:, :3], torch.ones_like(factors[:, :3]))
    alpha = torch.cat([alpha, torch.ones_like(alpha[:, :1])], 1)  # the hue "blend" is the identity
    for k, (lo, hi) in enumerate(hue_group_bounds(n)):
        op = order[:, k]
        step_alpha = alpha.gather(1, op[:, None]).squeeze(1)
        # The blending samples are one slice at either end, else the whole batch (fewer, larger
        # passes: the middle quarter's identity blend costs less than splitting every pass in two).
        a, b = (hi, n) if lo == 0 else (0, lo) if hi == n else (0, n)
        if b > a:
            blend_step(x[a:b], op[a:b], step_alpha[a:b])
        if hi > lo:
            part = x[lo:hi]
            part.lerp_(adjust_hue(part, factors[lo:hi, 3]), on[lo:hi].to(x.dtype).view(-1, 1, 1, 1))  # 0 or 1: exact
    return x


def random_grayscale(x, gray):
    """RandomGrayscale in place on x (N, 3, H, W), where gray (N,) is set."""
    return x.lerp_(grayscale(x).expand_as(x), gray.to(x.dtype).view(-1, 1, 1, 1))  # 0 or 1: exact
