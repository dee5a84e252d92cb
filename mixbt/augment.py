"""View transforms on the CPU with torchvision, built from the data set's registry row
(data.spec_of(name).recipe; docs/protocol.md section 3), or under --pipeline wmse from the W-MSE
code's recipe and normalisation (data.select_pipeline; section 6). The batched on-device versions
live in gpu_augment.py and are tested against these.
"""
import dataclasses

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from mixbt.data import select_pipeline, spec_of

INTERPOLATION = {'bilinear': T.InterpolationMode.BILINEAR, 'bicubic': T.InterpolationMode.BICUBIC}


def normalize(name, pipeline='mixbt'):
    """ToTensor's output normalised as data set `name` is under --pipeline (data.select_pipeline)."""
    stats = select_pipeline(name, pipeline)
    return T.Normalize(stats.mean, stats.std)


class GaussianBlur:
    """PIL Gaussian blur with sigma ~ U(0.1, 2.0), applied with probability p (official BT)."""

    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        if torch.rand(()) < self.p:
            sigma = 0.1 + 1.9 * torch.rand(()).item()
            return img.filter(ImageFilter.GaussianBlur(sigma))
        return img


class Solarization:
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img) if torch.rand(()) < self.p else img


def recipe_views(recipe, name, pipeline='mixbt'):
    """One torchvision transform (PIL image -> tensor normalised as `name` under `pipeline`) per view
    of `recipe`."""
    stats = select_pipeline(name, pipeline)
    return build_views(recipe, stats.mean, stats.std)


def build_views(recipe, mean, std):
    """One torchvision transform (PIL image -> tensor normalised with mean/std) per view of `recipe`."""
    crop = [T.RandomResizedCrop(recipe.size, scale=recipe.scale, ratio=recipe.ratio,
                                interpolation=INTERPOLATION[recipe.kernel]), T.RandomHorizontalFlip(0.5)]
    colour = [T.RandomApply([T.ColorJitter(*recipe.jitter)], p=recipe.jitter_p), T.RandomGrayscale(recipe.gray_p)]
    steps = colour + crop if recipe.color_first else crop + colour
    views = []
    asymmetric = any(recipe.blur + recipe.solarize)  # the ImageNet views: both steps in each view
    for blur, solarize in zip(recipe.blur, recipe.solarize):
        extra = [GaussianBlur(blur), Solarization(solarize)] if asymmetric else []
        views.append(T.Compose(steps + extra + [T.ToTensor(), T.Normalize(mean, std)]))
    return views


def ssl_views(name, image_size=224, pipeline='mixbt'):
    """The per-view transforms for SSL training under --pipeline (`image_size`: the ImageNet crop size)."""
    stats = select_pipeline(name, pipeline)
    recipe = stats.recipe
    if spec_of(name).protocol == 'imagenet':  # crops of --image_size
        recipe = dataclasses.replace(recipe, size=image_size)
    return build_views(recipe, stats.mean, stats.std)


def train_view(name, pipeline='mixbt'):
    """Single-view training transform of the linear probe: the data set's SSL view."""
    return ssl_views(name, pipeline=pipeline)[0]


def eval_geometry(name, image_size=224):
    """Deterministic resize/crop part of the evaluation transform (PIL in, PIL out)."""
    spec = spec_of(name)
    if not spec.eval_resize:
        return T.Lambda(lambda img: img)
    if spec.protocol == 'imagenet':  # Resize(256/224 of the crop) + CenterCrop(crop), bilinear
        return T.Compose([T.Resize(image_size * spec.eval_resize // spec.size), T.CenterCrop(image_size)])
    return T.Compose([T.Resize(spec.eval_resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(spec.size)])


def eval_transform(name, image_size=224, pipeline='mixbt'):
    return T.Compose([eval_geometry(name, image_size), T.ToTensor(), normalize(name, pipeline)])


def eval_images(name, data):
    """The deterministic geometric part of the evaluation transform, applied once up front:
    uint8 (N, S, S, 3), bit-identical to what the PIL transform gives before ToTensor."""
    spec = spec_of(name)
    if data.images.shape[1] == spec.size and data.images.shape[2] == spec.size:
        return data.images
    geometry = eval_geometry(name)
    return np.stack([np.asarray(geometry(Image.fromarray(im))) for im in data.images])


def eval_split(name, data):
    """(uint8 images at the evaluation size, labels) of ArrayData `data`: what the kNN monitor and
    the visuals take; None when they cannot take it, an unlabelled folder or a streamed one (its
    load line says that they are skipped)."""
    if not spec_of(name).labelled or not isinstance(data.images, np.ndarray):
        return None
    return eval_images(name, data), data.labels


class MultiView:
    """Apply each transform to the same image: returns a tuple of views."""

    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, img):
        return tuple(t(img) for t in self.transforms)


class ArrayDataset(torch.utils.data.Dataset):
    """Images from an in-memory uint8 array through a PIL transform, with labels."""

    def __init__(self, data, transform):
        self.data, self.transform = data, transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.data.images[i])), int(self.data.labels[i])
