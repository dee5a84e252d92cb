"""A probe's run folder: what a probe's result is computed from (probe_identity), when a saved
probe may be continued, and the folder's lock while the probe runs.

Run folders follow runs.py; a saved probe is continued, and its result reused, only by a
command with the same identity (probe_identity: the backbone file's content and every setting
that is not free, RESUME_FREE_ARGS) and on the same backbone file, byte for byte.
"""
import contextlib
import os
import shutil

from mixbt.errors import MixBTError
from mixbt.identity import IdentityMismatch, check_resume, differences, file_sha256, settings
from mixbt.runlog import RunLog
from mixbt.runs import RunFolder
from mixbt.runtime import install_requeue_handler


# Flags that may change when a run is continued: where things live and how fast it runs (a
# folder's images in memory or streamed), not what it computes. Any other difference means the folder holds another evaluation. The backbone
# file is named by its content (model_sha256), not by its path.
RESUME_FREE_ARGS = ('resume', 'run_name', 'results_dir', 'data_root', 'model_path', 'workers', 'gpu', 'download',
                    'print_freq', 'wandb_group', 'screen', 'precision', 'skip_bad_images', 'model_sha256',
                    'max_memory_gb')


def probe_identity(args):
    """What a probe's result is computed from: the content of the backbone file and every setting
    that is not free (RESUME_FREE_ARGS)."""
    ident = settings(args, [k for k in vars(args) if k not in RESUME_FREE_ARGS])
    ident['model_sha256'] = getattr(args, 'model_sha256', None) or file_sha256(args.model_path)
    return ident


def is_probe_state(saved):
    return isinstance(saved, dict) and 'fc' in saved and 'epoch' in saved


def check_saved_backbone(saved, args, where):
    """A saved probe is continued only on the backbone it was trained on, byte for byte."""
    if file_sha256(args.model_path) != args.model_sha256:
        raise MixBTError(f'{args.model_path} was rewritten while this command read it (a pretraining run saving a '
                         f'better model?): run the command again')
    recorded = (saved.get('identity') or {}).get('model_sha256')
    if recorded != args.model_sha256:
        why = (f'{saved.get("model_file") or "its backbone"} had sha256 {recorded[:12]}..., {args.model_path} now has '
               f'{args.model_sha256[:12]}... (rewritten since?)' if recorded else 'it records no sha256 of its backbone')
        raise IdentityMismatch(f'{where} continues a probe of another backbone file: {why}. Give this probe its own '
                               f'folder (a new --run_name, or --checkpoint-dir for evaluate_imagenet.py), or delete '
                               f'{os.path.dirname(where)} to start it afresh')


def open_run(args, prefix, project, wandb_group=None, wandb_name=None):
    """(run folder, saved state or None, RunLog) of a probe run, its folder locked (runs.RunFolder).
    A run folder is continued only by the same evaluation (probe_identity)."""
    if getattr(args, 'model_sha256', None) is None:
        args.model_sha256 = file_sha256(args.model_path)
    folder = RunFolder(args, 'checkpoint.pth', suffix=prefix, is_state=is_probe_state,
                       what='a probe checkpoint written by linear.py/transfer.py').acquire()
    try:
        saved = folder.read_state()
        if saved is not None:
            check_resume(saved.get('args') or {}, args, RESUME_FREE_ARGS, (), folder.resume_path)
            check_saved_backbone(saved, args, folder.resume_path)
            diffs = differences(saved.get('identity') or {}, probe_identity(args))
            if diffs:  # a setting the saved args did not record (written by an older version)
                raise IdentityMismatch(f'{folder.resume_path} holds another probe ({", ".join(diffs[:4])}): give '
                                       f'this one its own folder (a new --run_name)')
        if 'SLURM_JOB_ID' in os.environ:
            install_requeue_handler(os.path.join(folder.path, 'checkpoint.pth'))
        log = RunLog(folder.path, prefix, args, project, folder.run_id, resume=saved is not None,
                     history=saved['history'] if saved else None,
                     plot_keys=(('train_loss', 'test_loss'), ('train_acc@1', 'test_acc@1', 'test_acc@5')),
                     wandb_group=wandb_group, wandb_name=wandb_name)
    except BaseException:
        folder.release(failed=True)
        raise
    return folder, saved, log


@contextlib.contextmanager
def folder_held(folder):
    """The run folder's lock, released at the end. A folder this run made and left without a
    checkpoint.pth holds nothing of value (its args.json at most): a failed start, removed."""
    try:
        yield folder
    except BaseException:
        if folder.created and not os.path.isfile(os.path.join(folder.path, 'checkpoint.pth')):
            for name in os.listdir(folder.path):
                if name != '.lock':
                    path = os.path.join(folder.path, name)
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        folder.release(failed=True)
        raise
    folder.release()
