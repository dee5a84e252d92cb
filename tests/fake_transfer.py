"""Writers of tiny transfer data sets that tests/fakedata.py lacks, in their official layout."""
import os

import numpy as np
from PIL import Image

from fakedata import class_images

GTSDB_COUNTS = {0: 5, 1: 1, 2: 0, 7: 9, 12: 4, 42: 6}


def write_gtsdb(root, counts=GTSDB_COUNTS, seed=0):
    """FullIJCNN2013.zip unpacked in root: FullIJCNN2013/{NNNNN.ppm full scenes, gt.txt,
    <class:02d>/NNNNN.ppm sign crops}. Only the classes of `counts` get a folder (a count of 0
    gives an empty one); crops are 18 x 18. Returns {class: [crop paths, sorted]}."""
    base = os.path.join(root, 'FullIJCNN2013')
    os.makedirs(base, exist_ok=True)
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(os.path.join(base, '00000.ppm'))
    with open(os.path.join(base, 'gt.txt'), 'w') as f:
        f.write('00000.ppm;1;1;19;19;0\n')
    out = {}
    for c, n in counts.items():
        folder = os.path.join(base, f'{c:02d}')
        os.makedirs(folder, exist_ok=True)
        out[c] = []
        for i, im in enumerate(class_images([c] * n, 18, seed + c)):
            path = os.path.join(folder, f'{i:05d}.ppm')
            Image.fromarray(im).save(path)
            out[c].append(path)
    return out
