"""The mix-bt repository's ImageNet command line, mapped onto main.py:

    torchrun --nproc_per_node=8 main_imagenet.py /path/to/imagenet --epochs 300 --batch-size 1024 \
        --learning-rate-weights 0.2 --learning-rate-biases 0.0048 --weight-decay 1e-6 --lambd 0.0051 \
        --projector 8192-8192-8192 --is_mixup true --lambda_mixup 1.0 --checkpoint-dir results/imagenet

Same flags and meaning as the original, with its defaults (mixup on, lambda_mixup 1.0, its
10-epoch warm-up of the mixup weight) and its loss (--bt_loss imagenet_reference: the global batch
in --ref_world_size 8 groups, one per GPU of the released runs; docs/protocol.md section 1).
--lambda_mixup 0 keeps the mixed pass with weight 0, as the released Barlow Twins row ran.
Mapping: DATA -> --data_root, --lambda_mixup L -> --mixup_loss_scale 0.5*L, --checkpoint-dir ->
--results_dir, --print-freq -> --log_every. Unlike the original, processes come from torchrun/srun
(one per GPU; any number that divides --ref_world_size). Any main.py flag may be added (e.g.
--run_name, --precision, --image_size, --bt_loss global).
"""
import sys

import main as pretrain


def translate(argv):
    if not argv or argv[0].startswith('-'):
        raise SystemExit('usage: main_imagenet.py DATA [options]  (DATA: the ImageNet folder with train/ and val/)')
    data, rest = argv[0], list(argv[1:])
    defaults = {'--is_mixup': 'true', '--lambda_mixup': '1.0', '--mixup_warmup_epochs': '10', '--epochs': '300',
                '--batch_size': '1024', '--lmbda': '0.0051', '--workers': '8', '--arch': 'resnet50',
                '--results_dir': 'results/imagenet', '--log_every': '1', '--bt_loss': 'imagenet_reference'}
    aliases = {'--batch-size': '--batch_size', '--lambd': '--lmbda', '--checkpoint-dir': '--results_dir',
               '--print-freq': '--log_every'}
    given = {aliases.get(a.split('=')[0], a.split('=')[0]) for a in rest if a.startswith('--')}
    extra = [x for k, v in defaults.items() if k not in given for x in (k, v)]
    return ['--dataset', 'imagenet', '--data_root', data, *extra, *rest]


if __name__ == '__main__':
    pretrain.cli(translate(sys.argv[1:]))
