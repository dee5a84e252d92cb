"""Learning-rate schedules, LARS, seeding and RNG state, and small helpers of the entry points."""
import functools
import math
import os
import random
import signal
import subprocess
import sys

import numpy as np
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


# ---------------------------------------------------------------- device constants
@functools.lru_cache(maxsize=None)
def device_constant(values, device):
    """A small constant tensor (values: a tuple), made once per device: torch.tensor(list,
    device='cuda') copies from the host and waits for the GPU, which a per-batch path must never do."""
    return torch.tensor(values, device=device)


# ---------------------------------------------------------------- seeding and RNG state
def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state():
    """Python, NumPy, torch (and CUDA) generator states, in types that torch.load(weights_only=True)
    reads back: NumPy's key array is stored as a tensor."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    state = {'python': random.getstate(), 'numpy': numpy_state, 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state['python'])
    kind, keys, *rest = state['numpy']
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)  # older files: a NumPy array
    np.random.set_state((kind, keys.astype(np.uint32), *rest))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


def autocast_dtype(precision, device):
    """The autocast dtype of --precision: auto = bf16 on CUDA where supported (fp16 with a
    GradScaler otherwise), and no autocast (fp32) on the CPU."""
    if device.type != 'cuda' or precision == 'fp32':
        return None
    if precision == 'auto':
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {'bf16': torch.bfloat16, 'fp16': torch.float16}[precision]


def changed_settings(saved_args, args, keys):
    """'--key saved -> now' for each of `keys` whose value in this command differs from a saved run's."""
    return [f'--{k} {saved_args[k]!r} -> {getattr(args, k, None)!r}' for k in keys
            if k in saved_args and saved_args[k] != getattr(args, k, None)]


def backward_step(loss, optimizer, scaler=None, grad_scale=1.0):
    """zero_grad, backward and step; through the GradScaler when there is one (float16 autocast).

    `grad_scale` multiplies the loss that is differentiated (not `loss` itself, which callers
    log): 1/W reproduces a reference trained on W processes whose cross-correlation was summed
    with a plain all_reduce, which left every gradient at 1/W of the true one after DDP's
    averaging (docs/protocol.md section 4; our collectives give the true gradient)."""
    optimizer.zero_grad(set_to_none=True)
    if grad_scale != 1:
        loss = loss * grad_scale
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def grad_scaler(amp_dtype, device):
    """A GradScaler where the autocast dtype is float16 (its small gradients can underflow), else None."""
    return torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None


def install_requeue_handler(state_path):
    """On SLURM, SIGUSR1 (sent before the time limit) requeues the job; it resumes from last.pth."""
    if 'SLURM_JOB_ID' not in os.environ:
        return

    def handler(signum, frame):
        import distributed
        if distributed.is_main():
            print(f'SIGUSR1: requeueing SLURM job {os.environ["SLURM_JOB_ID"]}; it resumes from {state_path}')
            subprocess.run(['scontrol', 'requeue', os.environ['SLURM_JOB_ID']], check=False)
        sys.exit(0)
    signal.signal(signal.SIGUSR1, handler)
    signal.signal(signal.SIGTERM, lambda *_: None)  # SLURM sends SIGTERM before SIGKILL: let SIGUSR1 act


def run_command(main):
    """A script's command-line entry: the project's own checks (errors.MixBTError: bad input,
    missing data, a non-finite loss) end in one line and exit code 1; any other exception keeps
    its traceback."""
    import distributed
    from errors import MixBTError
    try:
        return main()
    except MixBTError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
    finally:
        distributed.cleanup()


def str2bool(v):
    if isinstance(v, bool):
        return v
    if v.lower() in ('true', '1', 'yes'):
        return True
    if v.lower() in ('false', '0', 'no'):
        return False
    raise ValueError(f'expected true or false, got {v!r}')
