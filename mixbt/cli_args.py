"""The command-line flags that several entry scripts share, declared once, and the checks of
their ranges. Each script names the shared flags it takes (`add_common`) and overrides only what
differs for it (a default, the help text); its own flags stay in its own get_args.

    p = cli_args.parser('Linear evaluation')
    cli_args.add_common(p, 'data_root', 'results_dir', 'seed', results_dir=os.path.join('results', 'linear'))
    ...
    cli_args.check_ranges(args, at_least_1=('batch_size', 'epochs'), non_negative=('workers', 'subset'))
"""
import argparse
import math
import os

from mixbt.errors import MixBTError

ARCHS = ['resnet18', 'resnet50']
PRECISIONS = ['auto', 'fp32', 'bf16', 'fp16']

# name -> (option strings, add_argument keywords). Spellings after the first are the original
# scripts' (the official Barlow Twins --checkpoint-dir, --batch-size, --weight-decay).
COMMON = {
    'arch': (['--arch'], dict(default=None, choices=ARCHS, help='default: inferred from the checkpoint')),
    'model_path': (['--model_path'], dict(required=True,
                                          help='pretrained checkpoint (*_model.pth, last.pth, resnet50.pth, ...)')),
    'data_root': (['--data_root'], dict(default='data', help='folder holding the data sets (ImageNet: its folder)')),
    'results_dir': (['--results_dir', '--checkpoint-dir'], dict(default='results', help='run folders are made here')),
    'run_name': (['--run_name'], dict(
        default=None, help='fixed run folder name under --results_dir; a run restarted with the same name continues '
                           'from its checkpoint.pth automatically (default on SLURM: slurm<job id>_<run>, so a '
                           'requeued job continues)')),
    'resume': (['--resume'], dict(default=None, help='probe run folder (or its checkpoint.pth) to continue')),
    'seed': (['--seed'], dict(default=0, type=int, help='seeds the weights, the data order and the augmentations')),
    'workers': (['--workers'], dict(default=min(8, os.cpu_count() or 1), type=int,
                                    help='data-loader worker processes')),
    'gpu': (['--gpu'], dict(default=0, type=int, help='CUDA device of a single-process run (-1: CPU)')),
    'download': (['--download'], dict(action='store_true', help="fetch the data set with torchvision's downloader")),
    'subset': (['--subset'], dict(default=0, type=int, help='use only N images of each split (quick runs)')),
    'precision': (['--precision'], dict(default='auto', choices=PRECISIONS,
                                        help='auto: bf16 on CUDA where supported (else fp16), fp32 on CPU')),
    'probe_bn': (['--probe_bn'], dict(
        default='train', choices=['train', 'eval'],
        help="the frozen backbone's BatchNorm while the classifier trains: train (the original: batch statistics, "
             "running statistics updated; eval mode at test) or eval (ours: never changed; features cached once)")),
    'skip_bad_images': (['--skip_bad_images'], dict(
        action='store_true', help='replace unreadable images (ImageNet) or leave them out (Tiny-ImageNet), with a '
                                  'count; default: stop with an error naming the file')),
}


class DefaultsFormatter(argparse.HelpFormatter):
    """--help shows every default that is a value; defaults that depend on the method or the data set
    (None here) are described in the flag's own help."""

    def _get_help_string(self, action):
        text = action.help or ''
        if (action.option_strings and action.default not in (None, argparse.SUPPRESS)
                and not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
                and 'default' not in text):
            text += ' (default: %(default)s)'
        return text


def parser(description):
    """An entry script's parser: no abbreviations (a flag is spelt out), every default in --help."""
    return argparse.ArgumentParser(description=description, allow_abbrev=False, formatter_class=DefaultsFormatter)


def add_common(p, *names, **overrides):
    """Add the shared flags `names` to parser `p`, in that order. overrides: NAME=DEFAULT for
    another default, or NAME=dict(...) for other add_argument keywords (help, default, ...)."""
    for name in names:
        options, kwargs = COMMON[name]
        if name in overrides:
            change = overrides.pop(name)
            kwargs = {**kwargs, **(change if isinstance(change, dict) else {'default': change})}
        p.add_argument(*options, **kwargs)
    if overrides:
        raise TypeError(f'add_common: {sorted(overrides)} not among the flags added')


def check_ranges(args, at_least_1=(), non_negative=(), positive=()):
    """One line each, before any work: whole counts >= 1, amounts >= 0, finite numbers > 0.
    A flag left at None (its default comes later) is not checked."""
    for key in at_least_1:
        value = getattr(args, key)
        if value is not None and value < 1:
            raise MixBTError(f'--{key} {value} must be at least 1')
    for key in non_negative:
        value = getattr(args, key)
        if value is not None and value < 0:
            raise MixBTError(f'--{key} {value} must be >= 0')
    for key in positive:
        value = getattr(args, key)
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise MixBTError(f'--{key} {value} must be a positive number')
