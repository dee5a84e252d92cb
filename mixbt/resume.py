"""What a pretraining run saves to continue as if never stopped (last.pth), and how it continues:
the training state, every rank's random-generator state, and the optimiser settings of the
continuing command."""
import torch

from mixbt import distributed as D
from mixbt.runtime import rng_state, set_rng_state


def method_extra_state(method):
    """The method's own state (BYOL's target, its generators), without the model it wraps."""
    return {k: v for k, v in method.state_dict().items() if not k.startswith('model.')}


def training_state(epoch, model, method, optimizer, scaler, best, history, args, run_id, rng_states):
    """What last.pth holds: everything a resumed run needs to continue as if never stopped."""
    return {'epoch': epoch, 'model': model.state_dict(), 'method': method_extra_state(method),
            'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict() if scaler else None,
            'rng': rng_states[0], 'rng_per_rank': rng_states, 'best_acc': best, 'history': history,
            'args': vars(args), 'run_id': run_id}


def is_training_state(saved):
    return isinstance(saved, dict) and 'model' in saved and 'epoch' in saved and 'optimizer' in saved


def apply_settings(optimizer, fresh_groups):
    """After loading a saved optimizer state, its hyper-parameters become this command's (a
    resumed run's changed --lr or --weight_decay take effect); the moments stay the saved ones."""
    for group, fresh in zip(optimizer.param_groups, fresh_groups):
        group.update({k: v for k, v in fresh.items() if k != 'params'})


def gather_rng_states():
    """Every rank's generator states, in rank order (on rank 0; None elsewhere)."""
    state = rng_state()
    if D.world_size() == 1:
        return [state]
    states = [None] * D.world_size()
    torch.distributed.all_gather_object(states, state)
    return states if D.is_main() else None


def restore_rng_state(saved):
    """This rank's own generator states: a resumed multi-process run continues every rank's stream."""
    per_rank = saved.get('rng_per_rank')
    if per_rank and len(per_rank) == D.world_size():
        set_rng_state(per_rank[D.rank()])
        return
    if D.world_size() > 1 and D.is_main():
        print(f'note: the saved random state is of {len(per_rank or [1])} process(es), not {D.world_size()}: the '
              'continued run draws differently from an uninterrupted one')
    set_rng_state(saved['rng'])
