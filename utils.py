"""Optimisation: the optimiser of a pretraining run (Adam, SGD or LARS), its learning-rate schedules."""
import math

import torch


# ---------------------------------------------------------------- learning-rate schedules
def warmup_cosine_factor(step, steps_per_epoch, epochs, warmup_epochs=10.0, final=0.001, first_epoch=1):
    """The originals' per-step cosine schedule, as a factor of the base learning rate
    (lr x batch/256; LARS: each group's lr x batch/256). `step` is our 0-based global step.

    The originals index step i of epoch e as e*L + i (L = steps per epoch): warm-up
    factor index/W (W = warmup_epochs*L), then q + final*(1-q), q = (1 + cos(pi (index-W) /
    (epochs*L - W))) / 2, not clamped. `first_epoch` is the number of the first epoch there:
    1 in the mix-bt small-data main.py (so the first step is already at L/W of the warm-up,
    1/10 with 10 epochs, the cosine reaches `final` one epoch early and the last epoch passes
    beyond it, rising again, docs/protocol.md section 4); 0 in the official Barlow Twins and
    mix-bt ImageNet scripts (warm-up from 0, the cosine ends at the last step).
    Where the originals would divide by zero (no steps left for the cosine), `final`."""
    index = step + first_epoch * steps_per_epoch
    warmup = int(warmup_epochs * steps_per_epoch)
    if index < warmup:
        return index / warmup
    span = epochs * steps_per_epoch - warmup
    if span <= 0:
        return final
    q = 0.5 * (1 + math.cos(math.pi * (index - warmup) / span))
    return q + final * (1 - q)


def step_factor(epoch, epochs, drops=(50, 25), gamma=0.2, step=0, warmup_steps=0):
    """x gamma at each epoch E - d, as torch's MultiStepLR stepped after each epoch (0-based
    `epoch` here): a milestone 0 fires at once (MultiStepLR's first step, at construction),
    negative ones never. Optional linear warm-up over the first `warmup_steps` steps (the W-MSE
    repository's, which sets the lr itself during the warm-up and so overwrites a milestone 0;
    a milestone >= 1 reached inside the warm-up, possible only for E < 51 epochs, is not modelled)."""
    first = 1 if warmup_steps > 0 else 0
    factor = gamma ** sum(1 for d in drops if first <= epochs - d <= epoch)
    if step < warmup_steps:
        factor *= step / warmup_steps
    return factor


def set_lr(optimizer, factor):
    for group in optimizer.param_groups:
        group['lr'] = group['base_lr'] * factor


# ---------------------------------------------------------------- LARS
def exclude_bias_and_norm(p):
    return p.ndim == 1


class LARS(torch.optim.Optimizer):
    """LARS as in the official Barlow Twins. With the filters on, biases and BatchNorm
    parameters (1-D tensors) get neither weight decay nor the layer-wise adaptation."""

    def __init__(self, params, lr, weight_decay=0, momentum=0.9, eta=0.001,
                 weight_decay_filter=True, lars_adaptation_filter=True):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        weight_decay_filter=weight_decay_filter, lars_adaptation_filter=lars_adaptation_filter)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            for p in g['params']:
                if p.grad is None:
                    continue
                dp = p.grad
                if not g['weight_decay_filter'] or not exclude_bias_and_norm(p):
                    dp = dp.add(p, alpha=g['weight_decay'])
                if not g['lars_adaptation_filter'] or not exclude_bias_and_norm(p):
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.,
                                    torch.where(update_norm > 0, (g['eta'] * param_norm / update_norm), one), one)
                    dp = dp.mul(q)
                state = self.state[p]
                if 'mu' not in state:
                    state['mu'] = torch.zeros_like(p)
                mu = state['mu']
                mu.mul_(g['momentum']).add_(dp)
                p.add_(mu, alpha=-g['lr'])
        return loss


# ---------------------------------------------------------------- the optimiser of a run
def build_optimizer(args, model):
    scale = args.batch_size / 256
    if args.optimizer == 'lars':
        weights = [p for p in model.parameters() if p.ndim != 1]
        biases = [p for p in model.parameters() if p.ndim == 1]
        groups = [{'params': weights, 'base_lr': args.lr_weights * scale},
                  {'params': biases, 'base_lr': args.lr_biases * scale}]
        return LARS(groups, lr=0, weight_decay=args.weight_decay, weight_decay_filter=True,
                    lars_adaptation_filter=True)
    # Reference: base = lr * batch/256 with the cosine schedule; the step schedule uses lr as is.
    base = args.lr * scale if args.lr_shed in ('cosine', 'cosine_exact') else args.lr
    groups = [{'params': [p for p in model.parameters() if p.requires_grad], 'base_lr': base}]
    if args.optimizer == 'sgd':
        return torch.optim.SGD(groups, lr=base, momentum=0.9, weight_decay=args.weight_decay)
    return torch.optim.Adam(groups, lr=base, weight_decay=args.weight_decay)


def lr_factor(args, step, steps_per_epoch):
    """The factor on each group's base lr at 0-based global `step` (docs/protocol.md section 4)."""
    if args.lr_shed in ('cosine', 'cosine_exact') or args.optimizer == 'lars':
        first_epoch = 1 if args.lr_shed == 'cosine' and args.optimizer != 'lars' else 0
        return warmup_cosine_factor(step, steps_per_epoch, args.epochs, args.warmup_epochs, first_epoch=first_epoch)
    # step + 1: the W-MSE repository's warm-up, lr * (k + 1) / warmup_steps at its step k = 0, 1, ...
    return step_factor(step // steps_per_epoch, args.epochs, step=step + 1, warmup_steps=args.warmup_steps)
