"""Writers of tiny data sets in each data set's official on-disk format, for tests.

Images carry a class-dependent colour so that a classifier has something to find."""
import gzip
import os
import pickle
import struct

import numpy as np
from PIL import Image


def class_images(labels, size, seed=0, channels=3):
    rng = np.random.default_rng(seed)
    n = len(labels)
    base = (np.asarray(labels) * 37 % 200 + 30).astype(np.float64)
    img = base[:, None, None, None] + rng.normal(0, 20, (n, size, size, channels))
    img[:, : size // 2] += 25 * (np.asarray(labels) % 2)[:, None, None, None]
    return img.clip(0, 255).astype(np.uint8)


def write_cifar(root, name='cifar10', n_train=50, n_test=20, seed=0):
    classes = 10 if name == 'cifar10' else 100
    folder = os.path.join(root, 'cifar-10-batches-py' if name == 'cifar10' else 'cifar-100-python')
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    label_key = 'labels' if name == 'cifar10' else 'fine_labels'

    def dump(fn, n):
        labels = rng.integers(0, classes, n).tolist()
        data = class_images(labels, 32, seed).transpose(0, 3, 1, 2).reshape(n, 3072)  # rows of R, G, B planes
        entry = {'batch_label': fn, label_key: labels, 'data': data, 'filenames': [f'{i}.png' for i in range(n)]}
        if name == 'cifar100':
            entry['coarse_labels'] = [l // 5 for l in labels]
        with open(os.path.join(folder, fn), 'wb') as f:
            pickle.dump(entry, f, protocol=2)
        return data, labels

    out = {}
    if name == 'cifar10':
        parts = [dump(f'data_batch_{i}', n_train // 5) for i in range(1, 6)]
        out['train'] = (np.concatenate([p[0] for p in parts]), sum((p[1] for p in parts), []))
        out['test'] = dump('test_batch', n_test)
        with open(os.path.join(folder, 'batches.meta'), 'wb') as f:
            pickle.dump({'label_names': [f'class{i}' for i in range(10)], 'num_cases_per_batch': n_train // 5}, f)
    else:
        out['train'] = dump('train', n_train)
        out['test'] = dump('test', n_test)
        with open(os.path.join(folder, 'meta'), 'wb') as f:
            pickle.dump({'fine_label_names': [f'fine{i}' for i in range(100)],
                         'coarse_label_names': [f'coarse{i}' for i in range(20)]}, f)
    return out


def write_stl10(root, n_train=20, n_test=10, n_unlabeled=30, seed=0):
    folder = os.path.join(root, 'stl10_binary')
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (('train', n_train), ('test', n_test), ('unlabeled', n_unlabeled)):
        labels = rng.integers(0, 10, n)
        images = class_images(labels, 96, seed)  # NHWC
        # official binary: each image 3 x 96 x 96, every channel stored column-major
        images.transpose(0, 3, 2, 1).tofile(os.path.join(folder, f'{split}_X.bin'))
        if split != 'unlabeled':
            (labels + 1).astype(np.uint8).tofile(os.path.join(folder, f'{split}_y.bin'))
        out[split] = (images, labels)
    with open(os.path.join(folder, 'class_names.txt'), 'w') as f:
        f.write('\n'.join(['airplane', 'bird', 'car', 'cat', 'deer', 'dog', 'horse', 'monkey', 'ship', 'truck']))
    return out


def write_tiny_imagenet(root, wnids=('n01443537', 'n01629819', 'n01641577'), per_class=4, n_val=6, seed=0):
    base = os.path.join(root, 'tiny-imagenet-200')
    os.makedirs(os.path.join(base, 'val', 'images'), exist_ok=True)
    with open(os.path.join(base, 'wnids.txt'), 'w') as f:
        f.write('\n'.join(reversed(wnids)) + '\n')  # official file is not sorted
    with open(os.path.join(base, 'words.txt'), 'w') as f:
        f.write(''.join(f'{w}\tthing {i}\n' for i, w in enumerate(wnids)))
    for c, w in enumerate(wnids):
        folder = os.path.join(base, 'train', w, 'images')
        os.makedirs(folder, exist_ok=True)
        imgs = class_images([c] * per_class, 64, seed + c)
        for i, im in enumerate(imgs):
            Image.fromarray(im if i else im[..., 0]).save(os.path.join(folder, f'{w}_{i}.JPEG'), quality=95)  # one grey
        with open(os.path.join(base, 'train', w, f'{w}_boxes.txt'), 'w') as f:
            f.write(''.join(f'{w}_{i}.JPEG\t0\t0\t63\t63\n' for i in range(per_class)))
    val_labels = [i % len(wnids) for i in range(n_val)]
    with open(os.path.join(base, 'val', 'val_annotations.txt'), 'w') as f:
        for i, (c, im) in enumerate(zip(val_labels, class_images(val_labels, 64, seed + 99))):
            Image.fromarray(im).save(os.path.join(base, 'val', 'images', f'val_{i}.JPEG'), quality=95)
            f.write(f'val_{i}.JPEG\t{wnids[c]}\t0\t0\t63\t63\n')
    return sorted(wnids), val_labels


def write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack('>HBB', 0, 0x08, array.ndim) + struct.pack('>' + 'I' * array.ndim, *array.shape)
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'wb') as f:
        f.write(header + array.tobytes())


def write_mnist_like(folder, n_train=40, n_test=20, gz=True, seed=0):
    """train/t10k images (idx3) and labels (idx1), as torchvision's MNIST/FashionMNIST raw/ holds."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (('train', n_train), ('t10k', n_test)):
        labels = rng.integers(0, 10, n)
        images = class_images(labels, 28, seed, channels=1)[..., 0]
        ext = '.gz' if gz else ''
        write_idx(os.path.join(folder, f'{prefix}-images-idx3-ubyte{ext}'), images)
        write_idx(os.path.join(folder, f'{prefix}-labels-idx1-ubyte{ext}'), labels)
        out[prefix] = (images, labels)
    return out


def write_image_folder(root, classes=('n01', 'n02'), per_class=3, size=40, seed=0):
    for c, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i, im in enumerate(class_images([c] * per_class, size, seed + c)):
            Image.fromarray(im).save(os.path.join(root, name, f'{name}_{i}.JPEG'))
