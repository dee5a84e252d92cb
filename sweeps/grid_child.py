"""A grid point's command never outlives grid.py.

The command (bash <launch script> ..., which starts main.py) runs in its own process group under
this file run as a guard. SIGINT/SIGTERM/SIGHUP to grid.py stop the whole group: SIGTERM, then
SIGKILL after GRACE_S (main.py ignores SIGTERM under SLURM). If grid.py itself is killed (SIGKILL
included), the kernel tells the guard (Linux: prctl PR_SET_PDEATHSIG) or the guard sees its parent
gone within a second (elsewhere), and it stops the group: a killed grid never leaves a main.py
training in the background holding its run folder's lock.
"""
import os
import signal
import subprocess
import sys
import time

GRACE_S = 10.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(Exception):
    """grid.py was asked to stop (the signal's number in .signum); the point's processes are gone."""

    def __init__(self, signum, message=''):
        super().__init__(message or signal.Signals(signum).name)
        self.signum, self.message = signum, message


def _end_group(pgid, alive, grace=GRACE_S):
    """SIGTERM to the process group, SIGKILL to what is left after `grace` seconds; `alive()` says
    whether the process we wait for still runs."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not alive():
            return


def run(command, env):
    """Run `command` under the guard; its exit code. Raises Stopped after a stop signal, once the
    command's processes are gone."""
    guard = [sys.executable, os.path.abspath(__file__), str(os.getpid()), *command]
    received = []

    def forward(signum, frame):
        received.append(signum)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    proc = subprocess.Popen(guard, env=env, start_new_session=True)
    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    try:
        while True:
            try:
                code = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if received:
                    _end_group(proc.pid, lambda: proc.poll() is None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise Stopped(received[0])
    return code


def _set_parent_death_signal(sig):
    """Linux: the kernel sends `sig` to this process when its parent dies. False where unavailable."""
    if not sys.platform.startswith('linux'):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(sig), 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def guard(parent, command):
    """The guard's life: start `command` in this process group, end the group when stopped or when
    `parent` (grid.py) is gone."""
    stopping = []

    def stop(signum=None, frame=None):
        stopping.append(signum)
    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # grid.py died before the kernel was told to warn us
        return 143
    child = subprocess.Popen(command)
    while child.poll() is None:
        if stopping or os.getppid() != parent:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM is for the command
            _end_group(0, lambda: child.poll() is None)
            break
        time.sleep(0.2)
    code = child.wait()
    return 128 - code if code < 0 else code


if __name__ == '__main__':
    sys.exit(guard(int(sys.argv[1]), sys.argv[2:]))
