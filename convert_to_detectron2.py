"""Write a ResNet-50 backbone in detectron2's format, for the MoCo-style detection transfer
(github.com/facebookresearch/moco/tree/main/detection):

    python3 convert_to_detectron2.py checkpoints/3fb1op86_1.0000_8192_1024_imagenet_resnet50.pth r50_mixbt.pkl

The input is any backbone checkpoints.load_backbone accepts for ImageNet (a torchvision ResNet-50
state dict, e.g. our resnet50.pth export or the official Barlow Twins file, or a full
training checkpoint); it is loaded strictly first, so a wrong file fails with the key list.
"""
import argparse
import pickle
import sys

from mixbt.checkpoints import CheckpointError, load_backbone


def detectron2_key(key):
    """torchvision ResNet name -> detectron2 ResNet name (MoCo's convert-pretrain-to-detectron2)."""
    if 'layer' not in key:
        key = 'stem.' + key
    for t in (1, 2, 3, 4):
        key = key.replace(f'layer{t}', f'res{t + 1}')
    for t in (1, 2, 3):
        key = key.replace(f'bn{t}', f'conv{t}.norm')
    key = key.replace('downsample.0', 'shortcut').replace('downsample.1', 'shortcut.norm')
    return key


def convert(path):
    backbone, _, _ = load_backbone(path, 'imagenet')
    return {detectron2_key(k): v.numpy() for k, v in backbone.state_dict().items()
            if not k.endswith('num_batches_tracked')}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('input')
    p.add_argument('output')
    args = p.parse_args(argv)
    model = convert(args.input)
    with open(args.output, 'wb') as f:
        pickle.dump({'model': model, '__author__': 'Mix-BT', 'matching_heuristics': True}, f)
    print(f'wrote {len(model)} tensors to {args.output}')


if __name__ == '__main__':
    try:
        main()
    except CheckpointError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
