"""--accumulate N: the exact large-batch loss of the Barlow Twins family on a small device.

The Barlow Twins family's loss depends on the batch only through the embeddings' means, standard
deviations and cross-correlations. So a batch of B can be processed as N micro-batches with the
exact full-batch loss and gradient at the projector output, in two passes (GradCache, Gao et al.
2021):

1. embed every micro-batch without a graph, and compute the loss on the whole batch's embeddings
   and its gradient with respect to each embedding;
2. embed each micro-batch again, with a graph, and backpropagate that embedding gradient.

Ordinary gradient accumulation would give each micro-batch its own statistics, another objective.
What still sees micro-batches is the backbone's and the projector's BatchNorm (training mode
normalises each micro-batch with its own statistics); the running statistics are updated once per
micro-batch, by the second pass only. Peak activation memory falls about N times, for one extra
forward pass. The mixed batch's permutation and alpha are drawn once, for the whole batch.
"""
import torch
import torch.nn as nn

from mixbt import distributed as D
from mixbt.errors import MixBTError


def check_accumulate(args, method_cls, world):
    """One error line, before any work, where --accumulate cannot apply."""
    if args.accumulate == 1:
        return
    if not hasattr(method_cls, 'loss_of'):
        raise MixBTError(f'--accumulate {args.accumulate}: --method {args.method} has no exact micro-batch loss; '
                         'it is available for mixbt, barlowtwins and hsic (or use --accumulate 1)')
    per_process = args.batch_size // world
    if per_process % args.accumulate or per_process // args.accumulate < 2:
        raise MixBTError(f'--accumulate {args.accumulate} must divide the {per_process} images of each process into '
                         'micro-batches of at least 2 (BatchNorm needs two): choose a divisor of it')


def _batchnorm_buffers(module):
    return [b for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]


def _embed_in_chunks(method, inputs, n):
    """The embeddings of every view, computed micro-batch by micro-batch (each micro-batch's
    views in one forward, as the full step does), in the batch's order."""
    parts = [method.embed([x.chunk(n)[i] for x in inputs]) for i in range(n)]
    return [torch.cat(views) for views in zip(*parts)]


def accumulated_step(method, views, n, progress, optimizer, scaler=None, grad_scale=1.0):
    """One optimiser step on the whole batch in `n` micro-batches; returns (loss, logs) as a
    forward would. Gradients are averaged over processes here (the method is not DDP-wrapped)."""
    inputs, draws = method.inputs(views)
    buffers = _batchnorm_buffers(method)
    saved = [b.clone() for b in buffers]
    with torch.no_grad():
        z = _embed_in_chunks(method, inputs, n)
    for b, s in zip(buffers, saved):  # the second pass updates the running statistics, once
        b.copy_(s)
    z = [t.detach().requires_grad_() for t in z]
    loss, logs = method.loss_of(z, draws, progress)
    scaled = loss * grad_scale
    if scaler is not None:
        scaled = scaler.scale(scaled)
    grads = torch.autograd.grad(scaled, z)
    optimizer.zero_grad(set_to_none=True)
    for i in range(n):
        zi = method.embed([x.chunk(n)[i] for x in inputs])
        torch.autograd.backward(zi, [g.chunk(n)[i].to(t.dtype) for g, t in zip(grads, zi)])
    if D.world_size() > 1:
        for p in method.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)  # DDP's averaging, once for the whole batch
                p.grad.div_(D.world_size())
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    return loss.detach(), {k: v.detach() for k, v in logs.items()}
