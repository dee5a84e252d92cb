"""Distributed helpers over torch.distributed: torchrun, multi-node torchrun and SLURM srun.

The loss code sums cross-correlation matrices over the global batch with `all_reduce_sum`,
which is autograd-aware: its backward all-reduces the gradient too. Every rank computes the
same global loss, so each rank's local gradient is W times its share; DDP's averaging then
divides by W, and the parameter gradients equal those of one process on the global batch
(the reference's plain all_reduce gives 1/W of that: docs/protocol.md section 1; the
`grad_scale` of utils.backward_step reproduces it where wanted, section 4).
"""
import os
import subprocess

import torch
import torch.distributed as dist


def is_dist():
    return dist.is_available() and dist.is_initialized()


def world_size():
    return dist.get_world_size() if is_dist() else 1


def rank():
    return dist.get_rank() if is_dist() else 0


def is_main():
    return rank() == 0


_GROUP = None


def _group():
    """The process group of the collectives inside forward/backward (losses, global BatchNorm):
    separate from DDP's, so their order can never interleave with DDP's gradient buckets."""
    global _GROUP
    if _GROUP is None:
        _GROUP = dist.new_group(backend=dist.get_backend())
    return _GROUP


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        t = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(t, group=_group())
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, group=_group())
        return grad


def all_reduce_sum(t):
    """Sum over ranks, differentiable: the backward sums the incoming gradients over ranks too."""
    if world_size() == 1:
        return t
    return _AllReduceSum.apply(t)


class _AllGatherGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over ranks (all_reduce works on
    every backend, unlike reduce_scatter/all_to_all on gloo) and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, t):
        out = [torch.empty_like(t) for _ in range(world_size())]
        dist.all_gather(out, t.contiguous(), group=_group())
        ctx.slice = (rank() * t.shape[0], (rank() + 1) * t.shape[0])
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=_group())
        return grad[ctx.slice[0]:ctx.slice[1]]


def all_gather_grad(t):
    """Concatenate every rank's tensor along dim 0, differentiable w.r.t. this rank's part."""
    if world_size() == 1:
        return t
    return _AllGatherGrad.apply(t)


@torch.no_grad()
def all_gather_cat(t):
    """Concatenate equal-shaped tensors from every rank along dim 0 (no gradient)."""
    if world_size() == 1:
        return t
    out = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)


def shard_indices(n):
    """Indices this rank handles when N items are split round-robin, padded to equal length.

    Returns (indices, valid) where `valid` is the number of real items at this rank; use
    `unshard` on the gathered results to restore the original order."""
    ws, r = world_size(), rank()
    per_rank = -(-n // ws)
    idx = torch.arange(r, n, ws)
    valid = len(idx)
    if valid < per_rank:  # pad with the last real index; dropped again by unshard
        idx = torch.cat([idx, idx.new_full((per_rank - valid,), max(n - 1, 0))])
    return idx, valid


def unshard(gathered, n):
    """Inverse of round-robin sharding: item i lives on rank i % W at position i // W."""
    ws = world_size()
    if ws == 1:
        return gathered[:n]
    per_rank = gathered.shape[0] // ws
    return gathered.view(ws, per_rank, *gathered.shape[1:]).transpose(0, 1).reshape(-1, *gathered.shape[1:])[:n]


def barrier():
    if is_dist():
        dist.barrier()


def broadcast_object(obj, src=0):
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def first_host(nodelist):
    """First host name of a SLURM node list: 'gpu[07-09,12],cpu1' -> 'gpu07'."""
    head = nodelist.split(',')[0] if '[' not in nodelist.split(',')[0] else nodelist[:nodelist.index(']') + 1]
    if '[' not in head:
        return head
    prefix, ranges = head.split('[', 1)
    return prefix + ranges.rstrip(']').split(',')[0].split('-')[0]


def _slurm_to_torchrun_env():
    """Map `srun` variables onto torchrun's, so one code path serves both launchers."""
    if 'RANK' in os.environ or int(os.environ.get('SLURM_NTASKS', '1')) <= 1:
        return
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')
    if 'MASTER_ADDR' not in os.environ:
        nodes = os.environ.get('SLURM_JOB_NODELIST') or os.environ.get('SLURM_NODELIST', 'localhost')
        try:
            host = subprocess.check_output(['scontrol', 'show', 'hostnames', nodes], text=True).split()[0]
        except (OSError, subprocess.CalledProcessError):
            host = first_host(nodes)
        os.environ['MASTER_ADDR'] = host
    os.environ.setdefault('MASTER_PORT', str(29500 + int(os.environ.get('SLURM_JOB_ID', '0')) % 10000))


def init_distributed(gpu=0):
    """Initialise the process group when launched by torchrun/srun with >1 process.

    Returns the device of this process: cuda:LOCAL_RANK (NCCL) or CPU (gloo) under a
    launcher; otherwise cuda:<gpu> when CUDA is present and gpu >= 0, else CPU."""
    _slurm_to_torchrun_env()
    if int(os.environ.get('WORLD_SIZE', '1')) > 1:
        local_rank = int(os.environ.get('LOCAL_RANK', '0'))
        if torch.cuda.is_available() and gpu >= 0:
            torch.cuda.set_device(local_rank)
            device = torch.device('cuda', local_rank)
            backend = 'nccl'
        else:
            device = torch.device('cpu')
            backend = 'gloo'
        if not is_dist():
            dist.init_process_group(backend=backend, init_method='env://')
        _group()  # every rank creates it at the same point
        return device
    if torch.cuda.is_available() and gpu >= 0:
        torch.cuda.set_device(gpu)
        return torch.device('cuda', gpu)
    return torch.device('cpu')


def cleanup():
    global _GROUP
    if is_dist():
        dist.destroy_process_group()
    _GROUP = None
