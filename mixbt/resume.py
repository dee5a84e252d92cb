"""What a pretraining run saves to continue as if never stopped (last.pth), and how it continues:
which settings may change on resume, the training state, every rank's random-generator state, and
the optimiser settings of the continuing command."""
import hashlib
import json

import torch

from mixbt import distributed as D
from mixbt.identity import IdentityMismatch, check_resume
from mixbt.methods import METHODS, method_schedule_keys
from mixbt.runtime import rng_state, set_rng_state

# On resume: settings that may change silently (where things live, how fast it runs, what is
# monitored), and schedule settings that may change on purpose (e.g. more --epochs), announced
# and applied. Every other setting, the seed included, is what the run is (identity.check_resume).
RESUME_FREE = ('resume', 'run_name', 'results_dir', 'data_root', 'workers', 'gpu', 'download', 'log_every',
               'knn_every', 'knn_init', 'save_every', 'precision', 'channels_last', 'compile', 'aug', 'fuse_views',
               'sync_bn', 'temperature', 'k', 'skip_bad_images', 'visuals', 'max_memory_gb',
               'overfitting_monitors') + \
    tuple(k for cls in METHODS.values() for k in cls.resume_free)
RESUME_SCHEDULE = ('epochs', 'lr', 'lr_shed', 'lr_weights', 'lr_biases', 'weight_decay', 'warmup_epochs',
                   'warmup_steps', 'ref_world_size') + method_schedule_keys()


def identity_tag(args):
    """A short digest of the run's identity: the default SLURM run name carries it, so the runs of a
    loop inside one job (other seeds, other settings) get folders of their own, and a requeued job
    finds its own again."""
    identity = {k: v for k, v in sorted(vars(args).items()) if k not in RESUME_FREE + RESUME_SCHEDULE}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]


# Settings a run saved before they existed had, in effect: the value it ran with.
SETTINGS_BEFORE_THEY_EXISTED = {'bt_loss': 'global', 'accumulate': 1}


def restore_point(folder, args):
    """The saved state this run continues (None for a new run) and the schedule changes it makes."""
    saved = folder.read_state()
    if saved is None:
        return None, []
    saved_args = {**SETTINGS_BEFORE_THEY_EXISTED, **saved.get('args', {})}
    schedule = RESUME_SCHEDULE
    if getattr(args, 'bt_loss', None) == 'imagenet_reference':  # its groups are what the loss is, not a scale
        schedule = tuple(k for k in schedule if k != 'ref_world_size')
    changes = check_resume(saved_args, args, RESUME_FREE, schedule, folder.resume_path)
    if changes and saved['epoch'] >= args.epochs:
        raise IdentityMismatch(
            f'{folder.resume_path} holds a finished run ({saved["epoch"]} epochs); this command changes '
            f'{", ".join(changes)} but trains nothing more. Raise --epochs to continue it with these settings, or '
            f'give this run its own folder (--run_name)')
    return saved, changes



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
