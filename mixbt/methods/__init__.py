"""SSL methods: one class per method, registered in METHODS.

A method declares its command-line flags (`flags`), its per-data-set defaults (`defaults`),
the settings a resumed run may change (`resume_schedule`; every other flag of a method is
part of a run's identity), and turns a batch of views into (loss, logged terms). It owns its
extra state (a BYOL target, an RNG). The trainer does not know which method it runs; a method
does not know about files. `Method.embed` runs the model once over the concatenated views
with per-view BatchNorm statistics, which is exactly what separate forward passes compute.
"""
from mixbt.errors import MixBTError
from mixbt.methods.barlow_twins import HSIC, BarlowTwins, MixBT
from mixbt.methods.base import Method, Progress, flag, full_precision, to_device, upcast  # noqa: F401 (the contract)
from mixbt.methods.baseline import Baseline, head_of  # noqa: F401
from mixbt.methods.byol import BYOL
from mixbt.methods.cwrgp import CWRGP
from mixbt.methods.intl import INTL
from mixbt.methods.simclr import SimCLR
from mixbt.methods.wmse import WMSE


def original_method_name(args, explicit=()):
    """--method left out: the original flags decide (--is_mixup, --corr_neg_one, --lambda_mixup).
    --lambda_mixup is the original ImageNet script's flag: s = 0.5 * lambda_mixup
    (docs/protocol.md section 1), with mixup on as there (its --is_mixup defaults to true): the
    released lambda_mixup 0 run had the mixed pass on with weight 0, which updates BatchNorm."""
    if args.lambda_mixup is not None:
        if 'mixup_loss_scale' in explicit and args.mixup_loss_scale != 0.5 * args.lambda_mixup:
            raise MixBTError(f'--lambda_mixup {args.lambda_mixup} sets --mixup_loss_scale to '
                             f'{0.5 * args.lambda_mixup}, which this command contradicts: give one of the two')
        args.mixup_loss_scale = 0.5 * args.lambda_mixup
        if 'is_mixup' not in explicit:
            args.is_mixup = True
    if args.method is None:
        args.method = 'mixbt' if args.is_mixup else ('hsic' if args.corr_neg_one else 'barlowtwins')
    if args.corr_neg_one is None:
        args.corr_neg_one = False
    return args.method


METHODS = {'mixbt': MixBT, 'barlowtwins': BarlowTwins, 'hsic': HSIC, 'simclr': SimCLR, 'byol': BYOL,
           'wmse': WMSE, 'intl': INTL, 'cwrgp': CWRGP}


def add_method_args(parser):
    """Every registered method's flags, each added once, under the title of the methods that have
    it (a flag of the baselines' shared base: under all of them)."""
    owners = {}
    for name, cls in METHODS.items():
        for names, kwargs in cls.flags:
            owners.setdefault(names, (kwargs, []))[1].append(name)
    groups = {}
    for names, (kwargs, methods) in owners.items():
        title = '--method ' + ', '.join(methods)
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        groups[title].add_argument(*names, **kwargs)
    parser.set_defaults(corr_neg_one=None)


def method_flag_names():
    """The dest of every flag any registered method declares."""
    return tuple(dict.fromkeys(k for cls in METHODS.values() for k in cls.flag_names()))


def method_schedule_keys():
    """The method flags that a resumed run may change."""
    return tuple(k for cls in METHODS.values() for k in cls.resume_schedule)
