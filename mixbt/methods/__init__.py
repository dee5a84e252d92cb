"""SSL methods: one class per method, registered in METHODS.

A method declares its command-line flags (`flags`), its per-data-set defaults (`defaults`),
the settings a resumed run may change (`resume_schedule`; every other flag of a method is
part of a run's identity), and turns a batch of views into (loss, logged terms). It owns its
extra state (a BYOL target, an RNG). The trainer does not know which method it runs; a method
does not know about files. `Method.embed` runs the model once over the concatenated views
with per-view BatchNorm statistics, which is exactly what separate forward passes compute.
"""
from mixbt.methods.barlow_twins import HSIC, BarlowTwins, MixBT
from mixbt.methods.base import Method, Progress, flag, full_precision, to_device, upcast  # noqa: F401 (the contract)
from mixbt.methods.baseline import Baseline, head_of  # noqa: F401
from mixbt.methods.byol import BYOL
from mixbt.methods.cwrgp import CWRGP
from mixbt.methods.intl import INTL
from mixbt.methods.simclr import SimCLR
from mixbt.methods.wmse import WMSE


def original_method_name(args):
    """--method left out: the original flags decide (--is_mixup, --corr_neg_one, --lambda_mixup)."""
    if args.lambda_mixup is not None:  # mix-bt ImageNet flag: s = 0.5 * lambda_mixup (docs/protocol.md section 1)
        args.mixup_loss_scale = 0.5 * args.lambda_mixup
        if args.lambda_mixup == 0:
            args.is_mixup = False
    if args.method is None:
        args.method = 'mixbt' if args.is_mixup else ('hsic' if args.corr_neg_one else 'barlowtwins')
    return args.method


METHODS = {'mixbt': MixBT, 'barlowtwins': BarlowTwins, 'hsic': HSIC, 'simclr': SimCLR, 'byol': BYOL,
           'wmse': WMSE, 'intl': INTL, 'cwrgp': CWRGP}


def add_method_args(parser):
    """Every registered method's flags, each added once, in a group per method."""
    seen = set()
    for name, cls in METHODS.items():
        new = [(names, kwargs) for names, kwargs in cls.flags if names[0] not in seen]
        if new:
            group = parser.add_argument_group(f'--method {name}' + (' (and the methods built on it)' if name in
                                                                     ('barlowtwins', 'wmse') else ''))
            for names, kwargs in new:
                group.add_argument(*names, **kwargs)
                seen.add(names[0])
    parser.set_defaults(corr_neg_one=False)


def method_schedule_keys():
    """The method flags that a resumed run may change."""
    return tuple(k for cls in METHODS.values() for k in cls.resume_schedule)
