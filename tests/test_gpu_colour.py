"""PIL's colour operations on batches (gpu_colour.py): every table key and every (hue, saturation)
against PIL itself, ColorJitter's blends and hue shift in each sample's order, and the cost of a
view in passes over its pixels (test_gpu_augment.py tests the views as a whole)."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from mixbt import gpu_colour as C
from test_gpu_augment import params, smooth_images, views_of


pytestmark = pytest.mark.usefixtures('one_thread')  # conftest.one_thread


def pil_uint8(img):
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float()


def sorted_by_slots(p):
    return {k: v[p['slots']] for k, v in p.items()}


def colour_grid():
    """uint8 (1, 3, 86 * 86, 86): every colour whose components are multiples of 3. Many of them
    have a hue that falls on PIL's 8-bit grid, where its float/double arithmetic decides."""
    c = torch.arange(0, 256, 3)
    return torch.stack(torch.meshgrid(c, c, c, indexing='ij')).reshape(1, 3, -1, len(c)).to(torch.uint8)


def test_grayscale_and_hue_shift_are_pils_for_every_colour_of_a_grid():
    x = colour_grid()
    img = Image.fromarray(x[0].permute(1, 2, 0).numpy())
    assert torch.equal(C.grayscale(x.float())[0, 0], torch.from_numpy(np.array(img.convert('L'))).float())
    h, s256, v = C.rgb_to_hsv(x.float())
    assert torch.equal(torch.stack([h, s256 // 256, v], 1)[0].float(), pil_uint8(img.convert('HSV')))
    for shift in (0.0, 0.0371, -0.0999, 0.1):  # 0: PIL's 8-bit HSV round trip is lossy all the same
        assert torch.equal(C.adjust_hue(x.float(), torch.tensor([shift]))[0], pil_uint8(TF.adjust_hue(img, shift)))


def pil_hsv(rgb):
    """PIL's convert('HSV') of uint8 colours (K, 3): (K, 3) int64."""
    img = Image.fromarray(rgb.numpy().reshape(1, -1, 3))
    return torch.from_numpy(np.array(img.convert('HSV'))).reshape(-1, 3).long()


def test_rgb_to_hsv_is_pils_for_every_key_of_its_tables():
    """The hue table is keyed by the channel differences (g - b, b - r), the saturation table by
    (chroma, max): every valid key, once with the smallest channel at 0 and once with the largest
    at 255, and every (chroma, max) pair, against PIL's own conversion."""
    d1, d2 = torch.meshgrid(torch.arange(-255, 256), torch.arange(-255, 256), indexing='ij')
    rgb = torch.stack([torch.zeros_like(d1), d1 + d2, d2], -1).reshape(-1, 3)
    rgb = rgb[(rgb.amax(1) - rgb.amin(1)) <= 255]
    chroma, top = torch.meshgrid(torch.arange(256), torch.arange(256), indexing='ij')
    pairs = torch.stack([top, top - chroma, top - chroma // 2], -1).reshape(-1, 3)
    colours = torch.cat([rgb - rgb.amin(1, keepdim=True), rgb + 255 - rgb.amax(1, keepdim=True),
                         pairs[pairs.amin(1) >= 0]]).to(torch.uint8)
    assert len(colours) > 2 * 196_000
    h, s256, v = C.rgb_to_hsv(colours.t().float().view(1, 3, -1, 1))
    ours = torch.stack([h, s256 // 256, v], -1).reshape(-1, 3).long()
    assert torch.equal(ours, pil_hsv(colours))


def test_hsv_to_rgb_is_pils_for_every_hue_and_saturation():
    """PIL's HSV -> RGB for all 65536 (h, s) and values v from 0 to 255 (a handful each, every
    v for some): the float32 weights of the table round as PIL's double arithmetic does."""
    h, s = (t.reshape(-1) for t in torch.meshgrid(torch.arange(256), torch.arange(256), indexing='ij'))
    v = torch.randint(0, 256, (8, 65536), generator=torch.Generator().manual_seed(0))
    v[0], v[1] = 255, h  # the brightest value, and every v for each s
    hsv = torch.stack([h.expand_as(v), s.expand_as(v), v], -1).reshape(-1, 3).to(torch.uint8)
    img = Image.frombytes('HSV', (len(hsv), 1), hsv.numpy().tobytes())
    ref = torch.from_numpy(np.array(img.convert('RGB'))).reshape(-1, 3).float()
    h, s, v = hsv.long().unbind(1)
    ours = C.hsv_to_rgb(h.view(1, -1, 1).int(), (256 * s).view(1, -1, 1).int(), v.view(1, -1, 1).int())
    assert torch.equal(ours.reshape(3, -1).t(), ref)


def test_color_jitter_is_pils_imageenhance_and_hue_shift():
    """Each blend truncated to uint8 as PIL's Image.blend does, in each sample's own order."""
    x = smooth_images(32, 16)
    p = sorted_by_slots(params(32))
    p['jitter'][:4] = False
    ours = C.color_jitter(x.float(), p['order'], p['factors'], p['jitter'])
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for n in range(32):
        ref = Image.fromarray(x[n].permute(1, 2, 0).numpy())
        for op in p['order'][n].tolist() if p['jitter'][n] else []:
            ref = ops[op](ref, p['factors'][n, op].item())
        assert torch.equal(ours[n], pil_uint8(ref))


class PixelPasses(TorchDispatchMode):
    """Counts the operations that compute a pixel-sized tensor (views of one aside), and those in float64."""

    def __init__(self, pixels):
        super().__init__()
        self.pixels, self.passes, self.float64 = pixels, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        big = [t for t in (out if isinstance(out, (tuple, list)) else [out])
               if isinstance(t, torch.Tensor) and t.numel() >= self.pixels // 16]
        if big and not func.is_view:
            self.passes += 1
            self.float64 += any(t.dtype == torch.float64 for t in big)
        return out


@pytest.mark.parametrize('name,size', [('cifar10', 32), ('stl10', 96)])
def test_a_view_takes_few_passes_over_the_pixels_and_none_in_double(name, size):
    """The CPU cost of a view is its passes over the batch. PIL's float/double colour arithmetic
    lives in tables (gpu_colour.py): a view of 256 images takes about 150 passes, none in float64;
    computed pixel by pixel it took 390-410, 64 of them in float64, and 2-3x the CPU time."""
    images = torch.empty(256, size, size, 3, dtype=torch.uint8, device='meta').permute(0, 3, 1, 2)
    with PixelPasses(images[:, 0].numel()) as count:
        views_of(images, name, None)
    assert count.float64 == 0 and count.passes <= 180, (count.passes, count.float64)
