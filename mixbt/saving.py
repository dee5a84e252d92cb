"""Writing checkpoints and results: atomically (a temporary file renamed into place, so a kill
leaves the old file or the new one, never half of one), never with a non-finite tensor, and a
full disk named in one line.
"""
import os
import tempfile

import torch

from mixbt.errors import CheckpointError, MixBTError


class NonFiniteState(MixBTError):
    pass


def _floating_tensors(obj, prefix=''):
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield prefix or 'tensor', obj
        return
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        yield from _floating_tensors(v, f'{prefix}.{k}' if prefix else str(k))


def non_finite_entries(obj):
    """Names of the floating-point tensors in `obj` (nested dicts/lists) that hold inf or NaN. One
    host sync per device, not one per tensor. The extremes carry any NaN or inf (min and max propagate
    NaN) and take a fifth of isfinite's time on a CPU."""
    by_device = {}
    for name, t in _floating_tensors(obj):
        if t.numel():
            by_device.setdefault(t.device, []).append((name, t))
    bad = []
    for pairs in by_device.values():
        finite = torch.stack([torch.stack(torch.aminmax(t)).isfinite().all() for _, t in pairs]).tolist()
        bad += [name for (name, _), ok in zip(pairs, finite) if not ok]
    return bad


def _free_space(folder):
    import shutil
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def atomic_save(obj, path, checked_finite=False):
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`: a kill
    at any moment leaves either the old file or the new one, never a torn file. A state with a
    non-finite tensor is never written (NonFiniteState names it); a failed write removes its
    temporary file and says why (no space left, permissions...), with the old file intact.
    `checked_finite`: the caller has just checked every tensor of `obj` (non_finite_entries)."""
    bad = [] if checked_finite else non_finite_entries(obj)
    if bad:
        raise NonFiniteState(f'not writing {path}: {", ".join(bad[:5])}{" ..." if len(bad) > 5 else ""} '
                             f'{"is" if len(bad) == 1 else "are"} not finite')
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the permissions open() would
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, MixBTError):
            free = _free_space(folder)
            reason = (f'no space left on {folder}' if getattr(e, 'errno', None) == 28
                      or (free is not None and free < 64 * 2**20)
                      else f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}')
            kept = 'the previous file is intact' if os.path.exists(path) else 'nothing was written'
            raise CheckpointError(f'could not write {path}: {reason}; {kept}') from e
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temporaries(folder):
    """Remove the temporary files that killed writes left in `folder` (.<name>.<random>.tmp);
    returns how many. Call it only while holding the folder's lock."""
    removed = 0
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        if name.startswith('.') and name.endswith('.tmp') and not name.startswith('.lock'):
            try:
                os.remove(os.path.join(folder, name))
                removed += 1
            except OSError:
                pass
    return removed
