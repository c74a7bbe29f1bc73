"""Finding and stopping a child's whole process tree."""

from __future__ import annotations

import os
import signal
import sys
from typing import Dict, List, Set


def _parents() -> Dict[int, int]:
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


def descendants(pid: int) -> List[int]:
    """Every live descendant of ``pid``, whatever session or group it moved to."""
    children: Dict[int, List[int]] = {}
    for child, parent in _parents().items():
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
