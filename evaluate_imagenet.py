"""The official evaluate.py command line, mapped onto linear.py:

    torchrun --nproc_per_node=8 evaluate_imagenet.py /path/to/imagenet /path/to/resnet50.pth --lr-classifier 0.3
    torchrun --nproc_per_node=8 evaluate_imagenet.py /path/to/imagenet /path/to/resnet50.pth --weights finetune \
        --train-percent 1 --epochs 20 --lr-backbone 0.005 --lr-classifier 0.5 --weight-decay 0 --checkpoint-dir DIR

DATA -> --data_root, PRETRAINED -> --model_path; every other flag keeps its name.
"""
import sys

import linear


def translate(argv):
    positional = [a for a in argv[:2] if not a.startswith('-')]
    if len(positional) < 2:
        raise SystemExit('usage: evaluate_imagenet.py DATA PRETRAINED [options]')
    return ['--dataset', 'imagenet', '--data_root', argv[0], '--model_path', argv[1], *argv[2:]]


if __name__ == '__main__':
    linear.cli(translate(sys.argv[1:]))
