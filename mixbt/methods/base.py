"""What every SSL method shares: the Method base class (the registry's contract), the training
progress a step sees, and the precision/transfer helpers around the losses (methods.py)."""
from dataclasses import dataclass

import torch
import torch.nn as nn

from mixbt.errors import MixBTError
from mixbt.nets import set_bn_views


@dataclass
class Progress:
    epoch: int            # 0-based epoch of the step being taken
    epochs: int
    step: int             # global step, 0-based
    steps_per_epoch: int

    @property
    def epoch_float(self):
        return self.step / max(self.steps_per_epoch, 1)


def upcast(z):
    """Half precision (autocast's output) raised to float32; float32 and float64 kept as they are."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def full_precision(z):
    """Autocast off, around the loss of every method: the embeddings are upcast (`upcast`), but
    inside the trainer's autocast the loss's matmuls (cross-correlations, covariances,
    whitening) would run in bf16/fp16 again; batch statistics need float32."""
    return torch.autocast(z.device.type, enabled=False)


def to_device(t, device):
    """A host-to-device copy that does not stall the host: a pageable `.to('cuda')` waits for
    all the GPU work queued before it (a per-step sync); pinned memory + non_blocking does not
    (the caching host allocator keeps the pinned buffer alive until the copy is done)."""
    if device.type != 'cuda':
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def flag(*names, **kwargs):
    """A command-line flag a method declares: argparse's add_argument arguments."""
    return names, kwargs


class Method(nn.Module):
    n_views = 2                  # views the data pipeline must deliver
    log_keys = ('loss',)         # per-step terms returned in the logs dict (besides 'loss')
    plot_keys = (('loss',),)
    flags = ()                   # flag(...) entries; a flag declared by several methods is added once
    resume_schedule = ()         # this method's flags that a resumed run may change (announced)
    resume_free = ()             # this method's flags that a resumed run may change silently
    run_tag_key = None           # the flag whose value names the run's files (None: the method's name)
    fixed = {}                   # flag values the registered name implies (a contradicting flag is refused)

    @classmethod
    def flag_names(cls):
        """The dest of every flag this method declares."""
        return tuple(kwargs.get('dest') or names[0].lstrip('-').replace('-', '_') for names, kwargs in cls.flags)

    @classmethod
    def identity_keys(cls):
        """This method's flags that are part of a run's identity."""
        return tuple(k for k in cls.flag_names() if k not in cls.resume_free + cls.resume_schedule)

    @classmethod
    def run_tag(cls, args, name):
        """The method part of the reference's file-name stem <id>_<tag>_<dim>_<batch>_<dataset>."""
        return getattr(args, cls.run_tag_key) if cls.run_tag_key else name

    @classmethod
    def defaults(cls, spec, dataset):
        """Values for the flags left unset (None) on data set `dataset` (its registry row `spec`)."""
        return {}

    @classmethod
    def resolve(cls, args):
        """Derived settings and this method's checks on the resolved flags (MixBTError)."""
        if args.num_views not in (None, 2):
            raise MixBTError(f'--num_views {args.num_views}: --method {args.method} uses two views')

    def __init__(self, model, fuse_views=True):
        super().__init__()
        self.model = model
        self.fuse_views = fuse_views

    def embedding_views(self):
        """How many tensors go through the model per step (may exceed n_views, e.g. mixup)."""
        return self.n_views

    def configure_bn(self):
        set_bn_views(self.model, self.embedding_views() if self.fuse_views else 1)

    def embed(self, views, model=None):
        """Projector outputs of each view; half precision (autocast) is raised to float32 for the
        loss, which then runs outside autocast (`full_precision`)."""
        model = self.model if model is None else model
        if self.fuse_views and len(views) > 1:
            return [upcast(z) for z in model(torch.cat(views))[1].chunk(len(views))]
        return [upcast(model(v)[1]) for v in views]

    @torch.no_grad()
    def after_step(self, progress):
        """Called after each optimiser step (e.g. BYOL's EMA update)."""
