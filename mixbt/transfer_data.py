"""The transfer data sets' registry (docs/protocol.md section 5): each set's class count,
normalisation statistics, on-disk layout and source (TRANSFER), and the errors that name them.

The readers of each set's official files, and load_transfer, are transfer_readers.py's. A
missing data set or image raises readers.DatasetNotFound (not_found) naming the folder searched,
the layout expected and where to get it; an unreadable or inconsistent index file raises
TransferDataError (bad_index) naming the file and line. Both are MixBTErrors with one-line
messages.
"""
import os
from dataclasses import dataclass

from mixbt.errors import MixBTError
from mixbt.readers import DatasetNotFound


class TransferDataError(MixBTError, ValueError):
    """Bad input to a reader: an unknown name or option, an unreadable or inconsistent index file."""


@dataclass(frozen=True)
class TransferSpec:
    num_classes: int
    mean: tuple
    std: tuple
    layout: str          # what the data root must contain, for error messages
    url: str
    downloadable: bool = True  # whether --download can fetch it


CUB_URL = 'https://data.caltech.edu/records/65de6-vmm83/files/CUB_200_2011.tgz'
TRAFFIC_SIGN_STATS = (0.335, 0.291, 0.295), (0.267, 0.249, 0.251)

# The reference's class-count table says 102 for aircraft: the variant level has 100 classes.
TRANSFER = {
    'dtd': TransferSpec(47, (0.533, 0.474, 0.426), (0.261, 0.250, 0.259),
                        'dtd/dtd/{images/<class>/*.jpg, labels/{train1,val1,test1}.txt} '
                        '(dtd-r1.0.1.tar.gz unpacked in dtd/)',
                        'https://www.robots.ox.ac.uk/~vgg/data/dtd/'),
    'mnist': TransferSpec(10, (0.170,) * 3, (0.320,) * 3,
                          'MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]',
                          'https://yann.lecun.com/exdb/mnist/'),
    'fashionmnist': TransferSpec(10, (0.348,) * 3, (0.347,) * 3,
                                 'FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] '
                                 '(or apt-get install dataset-fashion-mnist)',
                                 'https://github.com/zalandoresearch/fashion-mnist'),
    'cu_birds': TransferSpec(200, (0.483, 0.491, 0.424), (0.228, 0.224, 0.259),
                             '[cu_birds/]CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, '
                             'classes.txt, images/<class>/*.jpg} (CUB_200_2011.tgz unpacked)',
                             'https://www.vision.caltech.edu/datasets/cub_200_2011/ (' + CUB_URL + ')'),
    'vgg_flower': TransferSpec(102, (0.518, 0.410, 0.329), (0.296, 0.249, 0.285),
                               'flowers-102/{jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat (official split only)}',
                               'https://www.robots.ox.ac.uk/~vgg/data/flowers/102/'),
    'traffic_sign': TransferSpec(43, *TRAFFIC_SIGN_STATS,
                                 'FullIJCNN2013/{00..42}/*.ppm (the sign crops of GTSDB\'s FullIJCNN2013.zip, '
                                 'unpacked as it is)',
                                 'https://benchmark.ini.rub.de/gtsdb_dataset.html (FullIJCNN2013.zip)',
                                 downloadable=False),
    # GTSRB has no statistics of its own in the protocol: it borrows those of the GTSDB crops.
    'gtsrb': TransferSpec(43, *TRAFFIC_SIGN_STATS,
                          'gtsrb/{GTSRB/Training/<00000..00042>/*.ppm, GTSRB/Final_Test/Images/*.ppm, '
                          'GT-final_test.csv} (GTSRB-Training_fixed.zip, GTSRB_Final_Test_Images.zip, '
                          'GTSRB_Final_Test_GT.zip unpacked in gtsrb/)',
                          'https://benchmark.ini.rub.de/gtsrb_dataset.html'),
    'aircraft': TransferSpec(100, (0.486, 0.507, 0.525), (0.266, 0.260, 0.276),
                             'fgvc-aircraft-2013b/data/{variants.txt, images_variant_{trainval,test}.txt, '
                             'images_box.txt, images/<id>.jpg}',
                             'https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/'),
}
FLOWERS_SPLITS = ('reference', 'official')


def not_found(name, root, detail=''):
    spec = TRANSFER[name]
    how = 'pass --download, ' if spec.downloadable else '(--download cannot fetch it) '
    return DatasetNotFound(
        f'{name} not found under {os.path.abspath(root)}{": " + detail if detail else ""}. '
        f'Expected layout: {os.path.join(root, spec.layout)}. '
        f'Get it from {spec.url}, {how}or point --data_root at the folder that holds it.')


def bad_index(name, path, line, what):
    """TransferDataError for index file `path` (at `line` when not None)."""
    where = f'{path}, line {line}' if line else path
    return TransferDataError(f'{where}: {what}; the file is cut or altered: unpack it again from the archive '
                             f'at {TRANSFER[name].url}')
