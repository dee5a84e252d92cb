"""One rule for every result that a later command may skip, continue or reuse.

A result is reused only when the identity of what it was computed from matches the identity
of what this command would compute it from; its name (a path, a run name, a grid point's
label) is never enough. The identities:

* a pretraining run: its resolved settings, seed included, less the settings that may change
  on resume (mixbt/resume.py's RESUME_FREE and RESUME_SCHEDULE);
* an evaluation part (kNN, linear, each transfer set): the sha256 of the checkpoint file's
  content (`file_sha256`, computed once per command) plus the settings that define the part;
* a grid point: the complete command it runs (the sweep file's fixed flags, the point's values,
  the extra arguments) and the launcher's environment variables.

When the identities differ, a command computes the result afresh (replacing the stale one, and
says so in one line: `stale_note`) or refuses with one error line that names the differences
and the way out (`IdentityMismatch`). It never reports, continues or skips on another input's
behalf. Records are JSON files written atomically (`write_json`): a torn record is named in an
error, never half-read.
"""
import hashlib
import json
import os

from mixbt.checkpoints import CheckpointError
from mixbt.errors import MixBTError

_SHA_CACHE = {}


class IdentityMismatch(CheckpointError):
    """A saved result (a run's state, an evaluation part) was computed from other inputs."""


def file_sha256(path):
    """The sha256 of a file's content, computed once per command (and again only if the file's
    size or modification time changed since)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(real, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def settings(args, keys):
    """The identity of a result defined by `keys` of `args` (a Namespace or a dict)."""
    values = args if isinstance(args, dict) else vars(args)
    return {k: values.get(k) for k in sorted(keys)}


def _short(value):
    text = repr(value)
    if isinstance(value, str) and len(value) == 64 and all(c in '0123456789abcdef' for c in value):
        text = value[:12] + '...'  # a sha256
    return text if len(text) <= 60 else text[:57] + '...'


def differences(recorded, current, keys=None):
    """'key recorded -> now' for each key whose value differs (a key only one side has counts)."""
    keys = sorted(set(recorded) | set(current)) if keys is None else keys
    return [f'{k} {_short(recorded.get(k))} -> {_short(current.get(k))}' for k in keys
            if recorded.get(k) != current.get(k)]


def changed_settings(saved_args, args, keys):
    """'--key saved -> now' for each of `keys` that a saved run recorded and this command changes."""
    now = args if isinstance(args, dict) else vars(args)
    return [f'--{k} {saved_args[k]!r} -> {now.get(k)!r}' for k in keys
            if k in saved_args and saved_args[k] != now.get(k)]


def check_resume(saved_args, args, free, schedule, where):
    """A run continued from a saved state: the schedule settings this command changes (to
    announce); IdentityMismatch when it changes anything else that the saved run recorded."""
    keys = [k for k in vars(args) if k not in free and k not in schedule]
    changed = changed_settings(saved_args, args, keys)
    if changed:
        raise IdentityMismatch(
            f'{where} holds another run: this command changes {", ".join(changed)}. Continue it with its own '
            f'settings (args.json in its folder) or give this run its own folder (--run_name)')
    return changed_settings(saved_args, args, schedule)


def read_json(path, what='record'):
    """A JSON file written by this code; None when absent; MixBTError naming a torn or foreign file."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise MixBTError(f'{path} is not a readable {what} (truncated or not JSON: {e}); delete it and run the '
                         f'command again to compute it afresh') from None


def write_json(path, obj):
    """Write JSON atomically: a reader (or a kill) never sees half a file."""
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def record_path(result_path):
    """Where the identity of a result file or folder is recorded: <result>.identity.json beside a
    file, identity.json inside a folder."""
    if os.path.isdir(result_path) or result_path.endswith(os.sep):
        return os.path.join(result_path, 'identity.json')
    return f'{result_path}.identity.json'


def recorded_identity(result_path):
    return read_json(record_path(result_path), 'identity record')


def record_identity(result_path, identity):
    write_json(record_path(result_path), identity)


def reusable(result_path, identity):
    """(True, []) when the result at `result_path` exists and was computed from `identity`;
    (False, differences) when it exists from other inputs (differences empty when it has no
    identity record, as results written before records existed); (False, None) when absent."""
    if not os.path.exists(result_path):
        return False, None
    recorded = recorded_identity(result_path)
    if recorded is None:
        return False, []
    diffs = differences(recorded, identity)
    return not diffs, diffs


def stale_note(what, diffs):
    """The one line a command prints when it computes a result afresh instead of reusing it."""
    why = ', '.join(diffs[:4]) + (' ...' if len(diffs) > 4 else '') if diffs else 'it has no identity record'
    return f'{what}: computed afresh, the saved result was computed from other inputs ({why})'
