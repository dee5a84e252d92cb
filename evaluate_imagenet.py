"""The official evaluate.py command line, mapped onto linear.py:

    torchrun --nproc_per_node=8 evaluate_imagenet.py /path/to/imagenet /path/to/resnet50.pth --lr-classifier 0.3
    torchrun --nproc_per_node=8 evaluate_imagenet.py /path/to/imagenet /path/to/resnet50.pth --weights finetune \
        --train-perc 1 --epochs 20 --lr-backbone 0.005 --lr-classifier 0.5 --weight-decay 0 --checkpoint-dir DIR

DATA -> --data_root, PRETRAINED -> --model_path; every other official flag keeps its name and
meaning (--train-perc, the README's spelling of --train-percent, included). As in the original,
--checkpoint-dir DIR (default ./checkpoint/lincls/) is the run folder itself: DIR/checkpoint.pth
is written every epoch, and the same command started again (a crash, a requeued SLURM job)
continues from it. A folder that holds another evaluation (another checkpoint, --weights,
--train-percent, ...) is refused rather than continued. Any linear.py flag may be added.
"""
import os
import sys

import linear

DEFAULT_CHECKPOINT_DIR = './checkpoint/lincls/'  # the official default


def translate(argv):
    positional = [a for a in argv[:2] if not a.startswith('-')]
    if len(positional) < 2:
        raise SystemExit('usage: evaluate_imagenet.py DATA PRETRAINED [options]')
    rest, checkpoint_dir, i = [], None, 2
    while i < len(argv):
        flag = argv[i]
        if flag == '--checkpoint-dir' and i + 1 < len(argv):
            checkpoint_dir, i = argv[i + 1], i + 2
            continue
        if flag.startswith('--checkpoint-dir='):
            checkpoint_dir = flag.split('=', 1)[1]
        else:
            rest.append(flag)
        i += 1
    given = {a.split('=')[0] for a in rest if a.startswith('--')}
    if checkpoint_dir is None and given & {'--results_dir', '--run_name', '--resume'}:
        folder = []  # linear.py's own run-folder flags decide
    else:
        run_dir = os.path.normpath(checkpoint_dir or DEFAULT_CHECKPOINT_DIR)
        folder = ['--results_dir', os.path.dirname(run_dir) or '.', '--run_name', os.path.basename(run_dir)]
    return ['--dataset', 'imagenet', '--data_root', argv[0], '--model_path', argv[1], *folder, *rest]


if __name__ == '__main__':
    linear.cli(translate(sys.argv[1:]))
