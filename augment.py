"""View transforms on the CPU with torchvision, exactly as the reference (REFERENCE.md section 3).

The batched on-device versions live in gpu_augment.py and are tested against these.
"""
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from data import SPECS

BICUBIC = T.InterpolationMode.BICUBIC


def normalize(name):
    return T.Normalize(SPECS[name].mean, SPECS[name].std)


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


def ssl_views(name, image_size=224):
    """The list of per-view transforms (PIL image -> normalised tensor) for SSL training
    (`image_size`: ImageNet crop size)."""
    jitter = T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)
    if name in ('cifar10', 'cifar100', 'fashionmnist'):
        view = T.Compose([T.RandomResizedCrop(32), T.RandomHorizontalFlip(0.5), jitter,
                          T.RandomGrayscale(0.2), T.ToTensor(), normalize(name)])
        return [view, view]
    if name in ('stl10', 'tiny_imagenet'):
        view = T.Compose([jitter, T.RandomGrayscale(0.1),
                          T.RandomResizedCrop(64, scale=(0.2, 1.0), ratio=(0.75, 4 / 3), interpolation=BICUBIC),
                          T.RandomHorizontalFlip(0.5), T.ToTensor(), normalize(name)])
        return [view, view]
    if name == 'imagenet':
        def view(blur, solarize):
            return T.Compose([T.RandomResizedCrop(image_size, interpolation=BICUBIC), T.RandomHorizontalFlip(0.5),
                              T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(0.2),
                              GaussianBlur(blur), Solarization(solarize), T.ToTensor(), normalize(name)])
        return [view(1.0, 0.0), view(0.1, 0.2)]
    raise ValueError(f'no SSL transform for {name!r}')


def train_view(name):
    """Single-view training transform of the linear probe: the data set's SSL view."""
    return ssl_views(name)[0]


def eval_geometry(name, image_size=224):
    """Deterministic resize/crop part of the evaluation transform (PIL in, PIL out)."""
    if name == 'stl10':
        return T.Compose([T.Resize(70, interpolation=BICUBIC), T.CenterCrop(64)])
    if name == 'imagenet':
        return T.Compose([T.Resize(image_size * 256 // 224), T.CenterCrop(image_size)])
    return T.Lambda(lambda img: img)


def eval_transform(name, image_size=224):
    return T.Compose([eval_geometry(name, image_size), T.ToTensor(), normalize(name)])


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
