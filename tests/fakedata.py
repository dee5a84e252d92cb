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


# ---------------------------------------------------------------- transfer data sets
def _save(path, im):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(im).save(path)
    return path


def write_dtd(root, classes=('banded', 'blotchy', 'braided'), per_split=2, seed=0):
    """dtd/dtd/{images/<class>/<class>_NNNN.jpg, labels/{train,val,test}{1,2}.txt}.

    Partition 2 permutes the splits, so a reader that ignores the partition is caught.
    Returns {split: [(relative path, class index)]} of partition 1."""
    base = os.path.join(root, 'dtd', 'dtd')
    out = {'train': [], 'val': [], 'test': []}
    for c, name in enumerate(sorted(classes)):
        for i, im in enumerate(class_images([c] * 3 * per_split, 20, seed + c)):
            rel = f'{name}/{name}_{i:04d}.jpg'
            _save(os.path.join(base, 'images', rel), im)
            out[('train', 'val', 'test')[i // per_split]].append((rel, c))
    os.makedirs(os.path.join(base, 'labels'), exist_ok=True)
    for partition, order in ((1, ('train', 'val', 'test')), (2, ('test', 'train', 'val'))):
        for split, source in zip(('train', 'val', 'test'), order):
            with open(os.path.join(base, 'labels', f'{split}{partition}.txt'), 'w') as f:
                f.write(''.join(rel + '\n' for rel, _ in out[source]))
    return out


def write_cub(root, n_classes=3, per_class=3, seed=0):
    """CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, classes.txt,
    images/<NNN.Name>/<file>.jpg}; the first image of each class is grey, as a few real ones are.
    Returns {'train'|'test': [(absolute path, class index)]} in image-id order."""
    base = os.path.join(root, 'CUB_200_2011')
    names = [f'{c + 1:03d}.Bird_{c}' for c in range(n_classes)]
    out, lines = {'train': [], 'test': []}, {t: [] for t in ('images', 'labels', 'split')}
    image_id = 0
    for c, name in enumerate(names):
        for i, im in enumerate(class_images([c] * per_class, 24, seed + c)):
            image_id += 1
            rel = f'{name}/Bird_{c}_{i:04d}_{image_id}.jpg'
            path = _save(os.path.join(base, 'images', rel), im[..., 0] if i == 0 else im)
            is_train = int(i != per_class - 1)
            lines['images'].append(f'{image_id} {rel}')
            lines['labels'].append(f'{image_id} {c + 1}')
            lines['split'].append(f'{image_id} {is_train}')
            out['train' if is_train else 'test'].append((path, c))
    for fn, key in (('images.txt', 'images'), ('image_class_labels.txt', 'labels'),
                    ('train_test_split.txt', 'split')):
        with open(os.path.join(base, fn), 'w') as f:
            f.write('\n'.join(lines[key]) + '\n')
    with open(os.path.join(base, 'classes.txt'), 'w') as f:
        f.write(''.join(f'{c + 1} {name}\n' for c, name in enumerate(names)))
    return out


def write_flowers102(root, labels=(1, 1, 5, 5, 102, 102, 5, 1, 102), seed=0):
    """flowers-102/{jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat} (labels 1-based, as official).
    Image ids are dealt to train/val/test in turn. Returns {split: [(image id, class index)]}."""
    from scipy.io import savemat
    base = os.path.join(root, 'flowers-102')
    for i, im in enumerate(class_images(list(labels), 20, seed)):
        _save(os.path.join(base, 'jpg', f'image_{i + 1:05d}.jpg'), im)
    savemat(os.path.join(base, 'imagelabels.mat'), {'labels': np.asarray([labels], dtype=np.uint8)})
    ids = {split: [i + 1 for i in range(len(labels)) if i % 3 == k] for k, split in enumerate(('train', 'val', 'test'))}
    savemat(os.path.join(base, 'setid.mat'), {key: np.asarray([ids[split]], dtype=np.uint16) for key, split in
                                              (('trnid', 'train'), ('valid', 'val'), ('tstid', 'test'))})
    return {split: [(i, labels[i - 1] - 1) for i in ids[split]] for split in ids}


def write_gtsrb(root, classes=(0, 3, 42), per_class=2, test_labels=(42, 0, 3, 3), seed=0):
    """gtsrb/GTSRB/Training/<ClassId:05d>/{NNNNN_NNNNN.ppm, GT-<ClassId>.csv} and
    gtsrb/GTSRB/Final_Test/Images/NNNNN.ppm labelled by gtsrb/GT-final_test.csv (the three
    official zips unpacked in gtsrb/). Returns {'train'|'test': [(file name, ClassId)]}."""
    base = os.path.join(root, 'gtsrb')
    header = 'Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n'
    out = {'train': [], 'test': []}
    for c in classes:
        folder = os.path.join(base, 'GTSRB', 'Training', f'{c:05d}')
        rows = []
        for i, im in enumerate(class_images([c] * per_class, 18, seed + c)):
            fn = f'00000_{i:05d}.ppm'
            _save(os.path.join(folder, fn), im)
            rows.append(f'{fn};18;18;1;1;16;16;{c}\n')
            out['train'].append((fn, c))
        with open(os.path.join(folder, f'GT-{c:05d}.csv'), 'w') as f:
            f.write(header + ''.join(rows))
    rows = []
    for i, (c, im) in enumerate(zip(test_labels, class_images(list(test_labels), 18, seed + 99))):
        fn = f'{i:05d}.ppm'
        _save(os.path.join(base, 'GTSRB', 'Final_Test', 'Images', fn), im)
        rows.append(f'{fn};18;18;1;1;16;16;{c}\n')
        out['test'].append((fn, c))
    with open(os.path.join(base, 'GT-final_test.csv'), 'w') as f:
        f.write(header + ''.join(rows))
    return out


def write_aircraft(root, variants=('A300B4', 'F/A-18', '707-320', 'Cessna 172'), per_split=(2, 1, 2), seed=0):
    """fgvc-aircraft-2013b/data/{variants.txt, images_variant_{train,val,trainval,test}.txt,
    images_box.txt, images/<7-digit id>.jpg}; images are 40 x 30 with a box of 1-based inclusive
    corners. Variant names hold spaces and slashes, as the real ones do; variants.txt is not sorted.
    Returns {'trainval'|'test': [(image id, class index, (xmin, ymin, xmax, ymax))]}."""
    base = os.path.join(root, 'fgvc-aircraft-2013b', 'data')
    rng = np.random.default_rng(seed)
    out, boxes, image_id = {'train': [], 'val': [], 'test': []}, [], 1000000
    for c, _ in enumerate(variants):
        for i, im in enumerate(class_images([c] * sum(per_split), 40, seed + c)):
            image_id += 1
            _save(os.path.join(base, 'images', f'{image_id:07d}.jpg'), im[:30])
            x0, y0 = rng.integers(1, 10, 2)
            box = (int(x0), int(y0), int(x0 + rng.integers(10, 30)), int(y0 + rng.integers(5, 20)))
            boxes.append(f'{image_id:07d} {" ".join(map(str, box))}\n')
            split = 'train' if i < per_split[0] else 'val' if i < per_split[0] + per_split[1] else 'test'
            out[split].append((f'{image_id:07d}', c, box))
    out['trainval'] = out['train'] + out['val']
    with open(os.path.join(base, 'images_box.txt'), 'w') as f:
        f.write(''.join(boxes))
    with open(os.path.join(base, 'variants.txt'), 'w') as f:
        f.write(''.join(v + '\n' for v in variants))
    for split, items in out.items():
        with open(os.path.join(base, f'images_variant_{split}.txt'), 'w') as f:
            f.write(''.join(f'{i} {variants[c]}\n' for i, c, _ in items))
    return {'trainval': out['trainval'], 'test': out['test']}


# ---------------------------------------------------------------- damaged files
def truncate(path, drop):
    """Cut the last `drop` bytes off a file, as an interrupted download or copy leaves it."""
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) - drop)


def write_junk_image(path):
    """A web server's error page saved under an image's name, as a failed download leaves one."""
    with open(path, 'wb') as f:
        f.write(b'<html><body><h1>503 Service Unavailable</h1></body></html>\n')
