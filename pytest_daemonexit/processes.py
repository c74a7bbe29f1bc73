"""Finding and stopping a child's whole process tree."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from typing import Dict, List, Optional, Set


def parents() -> Dict[int, int]:
    """pid -> ppid for every process we can see (Linux /proc; empty elsewhere)."""
    table: Dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            table[int(entry)] = int(fields[1])
    return table


def own_children() -> Optional[List[int]]:
    """This process's children, from ``/proc/self/task/*/children`` (a few reads instead
    of one per process); None where the kernel does not provide those files."""
    if not os.path.exists(f"/proc/self/task/{os.getpid()}/children"):
        return None
    found: List[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children", "rb") as f:
                found.extend(int(pid) for pid in f.read().split())
        except OSError:
            continue  # that thread ended
    return found


def descendants(pid: int) -> List[int]:
    """Every live descendant of ``pid``, whatever session or group it moved to."""
    children: Dict[int, List[int]] = {}
    for child, parent in parents().items():
        children.setdefault(parent, []).append(child)
    found: List[int] = []
    seen: Set[int] = {pid}
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in seen:
                seen.add(child)
                found.append(child)
                stack.append(child)
    return found


def kill_group(pid: int) -> None:
    """SIGKILL what is left in the process group ``pid`` led (its leader has been reaped:
    its own children were reparented, so only the group can still name them)."""
    if sys.platform == "win32":
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree(pid: int, group: bool = True) -> None:
    """SIGKILL ``pid``, its process group and every descendant found in /proc."""
    victims = descendants(pid)
    if group and sys.platform != "win32":
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for victim in [pid, *victims]:
        try:
            os.kill(victim, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


#: Environment variable carrying the tokens of the runs a process belongs to.  Everything a
#: child starts inherits it, whatever session or process group it moves to, and it outlives
#: the child: when the child dies before its reaper runs (a crash, ``os._exit``), its
#: orphans are reparented to init and no longer descend from it, but still carry the tag.
#: A process that replaces its whole environment escapes it; nothing short of cgroups
#: would catch that.
RUN_TAG = "PYTEST_DAEMONEXIT_RUN"


def wait_exited(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait at most ``timeout`` seconds for ``proc`` to exit, and collect it; False if it
    is still running.  With a pidfd the wait ends when the process does: ``Popen.wait``
    polls, sleeping up to 50 ms past the exit."""
    pidfd = None
    if hasattr(os, "pidfd_open") and proc.poll() is None:
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError:
            pass
    if pidfd is not None:
        try:
            select.select([pidfd], [], [], timeout)
        finally:
            os.close(pidfd)
        timeout = 0.05  # it exited (or the time is up): collect it
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def tag_environment(env: Dict[str, str]) -> str:
    """Add a new run token to ``env`` (kept after an outer run's tokens) and return it."""
    token = os.urandom(16).hex()
    outer = env.get(RUN_TAG)
    env[RUN_TAG] = f"{outer},{token}" if outer else token
    return token


def comm_tag(token: str) -> str:
    """The process name (15 characters at most) a forked child takes for ``token``."""
    return "dx" + token[:13]


def name_process(token: str) -> None:
    """Linux: name this process after the run (``PR_SET_NAME``).  A forked child does
    this: its environment block is the fork server's, so a process it forks without exec
    does not carry the run's environment tag, but does inherit this name."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, comm_tag(token).encode("ascii"), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def tagged(token: str) -> List[int]:
    """Live processes whose environment carries ``token``, or named after it (Linux
    /proc; a zombie's environment reads empty, so the dead are not listed)."""
    needle = token.encode("ascii")
    name = comm_tag(token).encode("ascii")
    found: List[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    me = os.getpid()
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/comm", "rb") as f:
                if f.read().strip() == name:
                    found.append(int(entry))
                    continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if needle in environ:
            found.append(int(entry))
    return found


def kill_tagged(token: str, rounds: int = 5) -> int:
    """SIGKILL every process tagged with ``token``, again while new ones appear (one may
    fork while we look); returns how many were signalled."""
    killed = 0
    for _ in range(rounds):
        victims = tagged(token)
        if not victims:
            break
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
    return killed


def signal_threads(pid: int, signum: int) -> int:
    """Send ``signum`` to every thread of process ``pid`` except its main thread (Linux:
    tgkill through /proc/PID/task); returns how many threads were signalled."""
    from pytest_daemonexit.perturb import tgkill

    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return 0
    return sum(1 for tid in tids if tid != pid and tgkill(pid, tid, signum))


def signal_name(returncode: int) -> str:
    """``SIGSEGV`` for -11, etc."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
