"""What antialiasing changes in the on-device views (gpu_augment), i.e. why they resample with
PIL's kernels rather than torch's interpolate/grid_sample, which do not antialias.

    python3 -m benchmarks.antialias_effect                       # STL-10 recipe, crops of a photo
    python3 -m benchmarks.antialias_effect --data_root data      # the real STL-10 images when present

Geometry only (colour jitter and grayscale off), --n crops with the data set's recipe, each
resampled three ways: gpu_augment.apply_params (PIL's antialiased kernels, uint8 after each pass),
torch without antialiasing (TF.resized_crop(antialias=False), rounded to uint8) and torchvision's
PIL path. Prints one JSON object; pixel differences are in 1/255.
"""
import argparse
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms.functional as TF  # noqa: E402
from PIL import Image  # noqa: E402

from mixbt import data as datasets  # noqa: E402
from mixbt import gpu_augment as G  # noqa: E402
from mixbt import readers  # noqa: E402

INTERP = {'bilinear': TF.InterpolationMode.BILINEAR, 'bicubic': TF.InterpolationMode.BICUBIC}
SOURCE = {'stl10': 96, 'tiny_imagenet': 64, 'cifar10': 32, 'cifar100': 32, 'fashionmnist': 32}


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--dataset', default='stl10', choices=sorted(G.RECIPES))
    p.add_argument('--data_root', default='data')
    p.add_argument('--n', type=int, default=512, help='crops')
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args(argv)


def photo_crops(n, size, seed):
    """uint8 (n, 3, size, size): random windows of a real photo (matplotlib's sample image),
    shrunk by two like an STL-10 picture of a larger scene."""
    import matplotlib
    path = os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'sample_data', 'grace_hopper.jpg')
    photo = Image.open(path).convert('RGB')
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x, y = rng.integers(0, photo.size[0] - 2 * size), rng.integers(0, photo.size[1] - 2 * size)
        out.append(np.asarray(photo.crop((x, y, x + 2 * size, y + 2 * size)).resize((size, size), Image.BICUBIC)))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def source_images(args):
    """((n, 3, H, W) uint8, description): the real training set when present, else photo crops."""
    try:
        real = datasets.load(args.dataset, args.data_root, 'train')
        pick = np.random.default_rng(args.seed).choice(len(real), min(args.n, len(real)), replace=False)
        return torch.from_numpy(real.images[np.sort(pick)]).permute(0, 3, 1, 2).contiguous(), f'{args.dataset} train'
    except (readers.DatasetNotFound, FileNotFoundError, ValueError, RuntimeError):
        return photo_crops(args.n, SOURCE[args.dataset], args.seed), 'crops of matplotlib\'s grace_hopper.jpg'


def measure(images, recipe, seed=0):
    """Pixel differences (in 1/255) between the antialiased, plain and PIL resamplings."""
    n, _, height, width = images.shape
    p = G.sample_params(n, recipe, height, width, torch.Generator().manual_seed(seed), 'cpu')
    p['jitter'], p['gray'] = torch.zeros_like(p['jitter']), torch.zeros_like(p['gray'])
    ours = G.apply_params(images, p, recipe) * 255
    plain, pil = [], []
    for k, (i, j, h, w) in enumerate(p['crop'].tolist()):
        size, mode = [recipe.size] * 2, INTERP[recipe.kernel]
        view = TF.resized_crop(images[k].float(), i, j, h, w, size, mode, antialias=False)
        ref = TF.resized_crop(Image.fromarray(images[k].permute(1, 2, 0).numpy()), i, j, h, w, size, mode)
        ref = torch.from_numpy(np.array(ref)).permute(2, 0, 1).float()
        plain.append(TF.hflip(view) if p['flip'][k] else view)
        pil.append(TF.hflip(ref) if p['flip'][k] else ref)
    plain, pil = torch.stack(plain).clamp(0, 255).round(), torch.stack(pil)

    def summary(diff):
        diff = diff.abs().flatten()
        return {'mean': diff.mean().item(), 'q999': diff.quantile(0.999).item(), 'max': diff.max().item()}
    shrunk = ((p['crop'][:, 2] > recipe.size) | (p['crop'][:, 3] > recipe.size)).float().mean().item()
    return {'downscaled_crops': shrunk, 'antialiased_vs_plain': summary(ours - plain),
            'to_pil': {'antialiased': summary(ours - pil), 'plain': summary(plain - pil)}}


def main(argv=None):
    args = get_args(argv)
    torch.set_num_threads(1)
    images, description = source_images(args)
    out = {'dataset': args.dataset, 'data': description, 'crops': len(images),
           **measure(images, G.RECIPES[args.dataset], args.seed)}
    print(json.dumps(out, indent=1))
    return out


if __name__ == '__main__':
    main()
