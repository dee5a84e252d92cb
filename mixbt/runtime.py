"""Small helpers every part of the project shares: device constants, seeding and RNG state,
precision, the backward step, SLURM signals and the command-line entry (one-line errors)."""
import functools
import os
import random
import signal
import subprocess
import sys

import numpy as np
import torch


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


def grad_scaler(amp_dtype, device, growth_interval=2000):
    """A GradScaler where the autocast dtype is float16 (its small gradients can underflow), else None.
    growth_interval: steps without overflow before the scale doubles (torch's default 2000; the
    original ImageNet script used 100)."""
    if amp_dtype != torch.float16:
        return None
    return torch.amp.GradScaler(device.type, growth_interval=growth_interval)


def install_requeue_handler(state_path):
    """SIGTERM (kill, timeout, scancel) stops the run where it is: last.pth keeps the last finished
    epoch (every write is atomic), the lock is released and the run continues from it when started
    again. On SLURM, SIGUSR1 (sent before the time limit with --signal=USR1@90) requeues the job."""
    owner = os.getpid()

    def stop(signum, frame):
        from mixbt import distributed
        if os.getpid() != owner:  # a forked DataLoader worker: end as the default action would
            os._exit(128 + signal.SIGTERM)
        if distributed.is_main():
            print(f'SIGTERM: stopping; the run continues from {state_path} when started again', flush=True)
        raise SystemExit(128 + signal.SIGTERM)
    signal.signal(signal.SIGTERM, stop)
    if 'SLURM_JOB_ID' not in os.environ:
        return

    def requeue(signum, frame):
        from mixbt import distributed
        if distributed.is_main():
            print(f'SIGUSR1: requeueing SLURM job {os.environ["SLURM_JOB_ID"]}; it resumes from {state_path}')
            subprocess.run(['scontrol', 'requeue', os.environ['SLURM_JOB_ID']], check=False)
        sys.exit(0)
    signal.signal(signal.SIGUSR1, requeue)


def run_command(main):
    """A script's command-line entry: the project's own checks (errors.MixBTError: bad input,
    missing data, a non-finite loss) end in one line and exit code 1; any other exception keeps
    its traceback."""
    from mixbt import distributed
    from mixbt.errors import MixBTError
    try:
        return main()
    except MixBTError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
    finally:
        distributed.cleanup()


def str2bool(v):
    """A boolean flag's value: true/false (also 1/0, yes/no), as the original scripts take them."""
    if isinstance(v, bool):
        return v
    if v.lower() in ('true', '1', 'yes'):
        return True
    if v.lower() in ('false', '0', 'no'):
        return False
    import argparse
    raise argparse.ArgumentTypeError(f'expected true or false (also 1/0, yes/no), got {v!r}')
