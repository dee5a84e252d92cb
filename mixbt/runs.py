"""Run folders, one rule for every entry point (main.py, linear.py, transfer.py, evaluate_imagenet.py).

* Name: --resume (a folder or its state file), else <results_dir>/<fixed name> where the name is
  fixed (--run_name; on SLURM slurm<job id>[_<run>]), else <results_dir>/<new random id>.
* Auto-resume: a fixed-name folder that holds the state file is continued.
* Identity: on resume, the settings in `free` may change silently, those in `schedule` may change
  and are announced (the caller applies them), and every other setting must equal the saved one
  (mixbt/identity.py: the one rule for every reused result).
* One run per folder: an exclusive lock (flock on <folder>/.lock, released by the kernel when
  the process dies, so a killed run never blocks its successor); a second process is refused with
  the holder's pid and host. Temporary files of killed writes are removed when the lock is taken.
* A folder is created only when the run starts; one that a failed start created is removed.
"""
import fcntl
import os
import socket

from mixbt import distributed as D
from mixbt.checkpoints import CheckpointError, read_checkpoint
from mixbt.saving import remove_stale_temporaries
from mixbt.errors import MixBTError
from mixbt.runlog import new_run_id


def check_run_name(name):
    """A run name is a plain folder name under --results_dir: never a path that leads elsewhere."""
    if name in ('', '.', '..') or os.path.basename(name) != name or '\\' in name or name.startswith('.'):
        raise MixBTError(f'--run_name {name!r}: a run name is a plain folder name under --results_dir (no /, no .., '
                         f'not starting with .); choose another --run_name, or move the run with --results_dir')
    return name


def fixed_name(args, suffix=None, slurm_tag=None):
    """--run_name, else on SLURM slurm<job id> (with `_suffix` for evaluation runs, so that several
    evaluations in one job keep apart, and `_slurm_tag` for pretraining runs: a digest of the run's
    identity, so that the runs of a loop in one job keep apart too), else None."""
    if getattr(args, 'run_name', None):
        return check_run_name(args.run_name)
    if 'SLURM_JOB_ID' in os.environ:
        return f'slurm{os.environ["SLURM_JOB_ID"]}' + ''.join(f'_{t}' for t in (slurm_tag, suffix) if t)
    return None


def check_writable(results_dir):
    """Refuse a --results_dir that is a file or that cannot be written, before any work."""
    path = os.path.abspath(results_dir)
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise MixBTError(f'--results_dir {results_dir}: {probe} is a file, not a folder; choose another --results_dir')
    if not os.access(probe, os.W_OK | os.X_OK):
        raise MixBTError(f'--results_dir {results_dir}: {probe} is not writable; choose another --results_dir')


class Lock:
    """An exclusive lock on a run folder, held by this process until release() or its death."""

    def __init__(self, folder):
        self.path = os.path.join(folder, '.lock')
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 200, 0).decode(errors='replace').strip() or 'another process'
            os.close(self.fd)
            raise MixBTError(f'{folder} is in use by {holder}: one run per folder. Wait for it to finish, or '
                             f'give this run another --run_name') from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f'pid {os.getpid()} on host {socket.gethostname()}'.encode(), 0)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


class RunFolder:
    """Where a run lives and whether it continues a saved state. Rank 0 decides, every rank agrees.

    `state_name`: the file a run continues from (last.pth, checkpoint.pth); `is_state(obj)` says
    whether a file's content is such a state, `what` names it in the error; `id_from_name`: a new run
    with a fixed name takes it as its run id."""

    def __init__(self, args, state_name, suffix=None, is_state=lambda s: isinstance(s, dict), what=None,
                 id_from_name=False, slurm_tag=None, refuse_foreign=False):
        self.state_name, self.lock, self.created = state_name, None, False
        self.what = what or f'a {state_name} written by this code'
        name = fixed_name(args, suffix, slurm_tag)
        resume = getattr(args, 'resume', None)
        if resume is None and name and os.path.isfile(os.path.join(args.results_dir, name, state_name)):
            resume = os.path.join(args.results_dir, name)  # auto-resume
        self.resume_path = None
        if resume:
            path = os.path.join(resume, state_name) if os.path.isdir(resume) else resume
            if not os.path.isfile(path):
                raise CheckpointError(f'--resume: no {state_name} at {path}')
            self.resume_path = path
            self.path = os.path.dirname(os.path.abspath(path))
            self.run_id = None  # the saved state's
        else:
            # The run id (wandb's, and main.py's file-name stem): the fixed name where main.py asks for it,
            # else a new random one (probes: unique even where the folder name is fixed).
            self.run_id = name if (name and id_from_name) else D.broadcast_object(new_run_id())
            self.path = os.path.join(args.results_dir, name or self.run_id)
            if refuse_foreign:
                self.refuse_foreign_files()
        self.is_state = is_state

    def refuse_foreign_files(self):
        """A new run never writes into a folder that holds another run's files (e.g. a finished run
        whose state file was removed): its best model and statistics would be overwritten."""
        if not os.path.isdir(self.path):
            return
        held = sorted(f for f in os.listdir(self.path) if f != '.lock' and not f.endswith('.tmp'))
        if held:
            shown = ', '.join(held[:4]) + (', ...' if len(held) > 4 else '')
            raise MixBTError(f'{self.path} holds the files of another run ({shown}) but no {self.state_name} to '
                             f'continue from: give this run another --run_name, or move that folder away')

    def read_state(self):
        """The saved state (None for a new run); its run id becomes this run's."""
        if self.resume_path is None:
            return None
        saved = read_checkpoint(self.resume_path)
        if not self.is_state(saved):
            raise CheckpointError(f'--resume: {self.resume_path} is not {self.what}')
        self.run_id = saved.get('run_id') or self.run_id or os.path.basename(self.path)
        return saved

    def acquire(self):
        """Create the folder (if new) and take its lock (rank 0; the error reaches every rank)."""
        error = None
        if D.is_main():
            try:
                if not os.path.isdir(self.path):
                    top = os.path.abspath(self.path)
                    while not os.path.exists(os.path.dirname(top)):
                        top = os.path.dirname(top)
                    os.makedirs(self.path)
                    self.created, self.created_top = True, top
                self.lock = Lock(self.path)
                removed = remove_stale_temporaries(self.path)
                if removed:
                    print(f'Removed {removed} temporary file(s) of interrupted writes in {self.path}')
            except (MixBTError, OSError) as e:
                error = str(e) if isinstance(e, MixBTError) else f'cannot create the run folder {self.path}: {e}'
        error = D.broadcast_object(error)
        if error:
            raise MixBTError(error)
        return self

    def release(self, failed=False):
        """Drop the lock; a folder this run created and that holds nothing of value (no state, no
        model: a failed start, or a run stopped before its first epoch was saved) is removed."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
            if failed and self.created and not any(f.endswith('.pth') for f in os.listdir(self.path)):
                import shutil
                shutil.rmtree(self.path, ignore_errors=True)
                folder = os.path.dirname(os.path.abspath(self.path))  # and the parents it made, if left empty
                while len(folder) >= len(self.created_top):
                    try:
                        os.rmdir(folder)
                    except OSError:
                        break
                    folder = os.path.dirname(folder)
