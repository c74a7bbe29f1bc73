"""What runs inside the child around its shutdown: phase markers and the hang watchdog.

Everything here may run while the interpreter is being torn down, when module globals are
already None.  So the hooks bind what they use as default arguments, write with ``os.write``
and format bytes by hand (no ``json`` after module teardown), and the object whose
finalizer marks module teardown is reachable only from a module of its own (a function
registered anywhere keeps its module's globals alive; see the reference notes, A.5).
"""

from __future__ import annotations

import atexit
import faulthandler
import gc
import os
import signal
import sys
import threading
import time
import types
from typing import IO, Any, Callable, List, Optional, Sequence

#: Signal the parent sends to make faulthandler dump every thread's stack.  SIGWINCH: its
#: default action is to be ignored, so once faulthandler is finalized (late in shutdown)
#: the signal does nothing instead of killing the child before its native stacks are
#: taken; the child has no terminal, so it never gets one otherwise.
DUMP_SIGNAL: int = int(getattr(signal, "SIGWINCH", 0)) or int(getattr(signal, "SIGUSR2", 0))

Mark = Callable[[str], None]


def make_marker(fd: int) -> Mark:
    """A function that writes one phase record; safe until the very end of finalization."""

    def mark(
        phase: str,
        _write: Any = os.write,
        _seek: Any = os.lseek,
        _fd: int = fd,
        _getpid: Any = os.getpid,  # at write time: a process the test forks has its own
        _now: Any = time.monotonic_ns,
        _exc: Any = Exception,  # builtins are None by interpreter clear
    ) -> None:
        try:
            # Where stderr stood when the phase began: tells which phase printed what.
            err = _seek(2, 0, 1)
        except _exc:
            err = -1
        # Integers only: formatting a float this late crashes CPython 3.13.0 (its dtoa
        # state is freed before the interpreter-clear audit event).
        line = b'{"event": "phase", "phase": "%s", "pid": %d, "t_ns": %d, "err": %d}\n' % (
            phase.encode("ascii"),
            _getpid(),
            _now(),
            err,
        )
        try:
            _write(_fd, line)
        except _exc:
            pass

    return mark


class Watchdog:
    """faulthandler set up to dump every thread's stack into the child's fault file."""

    def __init__(self, fault_file: IO[str]) -> None:
        self.file = fault_file
        faulthandler.enable(file=fault_file, all_threads=True)
        if DUMP_SIGNAL:
            faulthandler.register(DUMP_SIGNAL, file=fault_file, all_threads=True, chain=False)

    def arm(self, seconds: float) -> None:
        """Dump all stacks after ``seconds`` unless finalization ends first."""
        faulthandler.cancel_dump_traceback_later()
        if seconds > 0:
            faulthandler.dump_traceback_later(seconds, repeat=False, file=self.file)

    def take_over(self) -> None:
        """Point faulthandler back at our file after the test (pytest moves it)."""
        faulthandler.enable(file=self.file, all_threads=True)
        if DUMP_SIGNAL:
            faulthandler.register(DUMP_SIGNAL, file=self.file, all_threads=True, chain=False)


class _StdoutFlushMarker:
    """Stands in for sys.stdout after the test: its flush() is the first code CPython
    runs once the runtime is marked finalizing (flush_std_files)."""

    def __init__(self, stream: Any, mark: Mark, is_finalizing: Callable[[], bool]) -> None:
        object.__setattr__(self, "_stream", stream)
        object.__setattr__(self, "_mark", mark)
        object.__setattr__(self, "_is_finalizing", is_finalizing)
        object.__setattr__(self, "_done", False)

    def flush(self) -> Any:
        if not self._done and self._is_finalizing():
            object.__setattr__(self, "_done", True)
            self._mark("finalizing")
        return self._stream.flush()

    def write(self, text: Any) -> Any:
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._stream, name, value)


class _TeardownSentinel:
    def __init__(self, mark: Mark) -> None:
        self.mark = mark

    def __del__(self) -> None:
        self.mark("module_teardown")


SENTINEL_MODULE = "_pytest_daemonexit_sentinel"


#: Phases whose markers run Python code soon after the runtime is marked finalizing.
EARLY_LATE_MARKERS = ("finalizing", "gc", "module_teardown")


def install_late_markers(
    mark: Mark, skip: Sequence[str] = (), reap: Optional[Callable[[], None]] = None
) -> None:
    """Markers for the phases after atexit; called from the last atexit callback.
    ``skip``: phases to leave unmarked, so that no Python code runs there; ``reap`` runs
    right after the interpreter-clear marker (make_reaper)."""
    is_finalizing = sys.is_finalizing
    if sys.stdout is not None and "finalizing" not in skip:
        sys.stdout = _StdoutFlushMarker(sys.stdout, mark, is_finalizing)

    gc_done: List[bool] = []

    def on_gc(phase: str, info: Any, _fin: Any = is_finalizing, _done: Any = gc_done) -> None:
        if phase == "start" and not _done and _fin():
            _done.append(True)
            mark("gc")

    if "gc" not in skip:
        gc.callbacks.append(on_gc)

    if "module_teardown" not in skip:
        module = types.ModuleType(SENTINEL_MODULE)
        module.sentinel = _TeardownSentinel(mark)  # type: ignore[attr-defined]
        sys.modules[SENTINEL_MODULE] = module
        del module

    if hasattr(sys, "addaudithook"):

        def on_audit(
            event: str,
            args: Any,
            _done: Any = [],  # noqa: B006
            _reap: Optional[Callable[[], None]] = reap,
        ) -> None:
            if event == "cpython.PyInterpreterState_Clear" and not _done:
                _done.append(True)
                mark("interpreter_clear")
                if _reap is not None:
                    _reap()

        sys.addaudithook(on_audit)


#: Seconds the reaper waits for the processes it killed to die (one in uninterruptible
#: sleep may take longer; the run's verdict is not held back for it).
REAP_WAIT = 2.0
_WAITPID = getattr(os, "waitpid", None)


def make_reaper(fd: int) -> Callable[[], None]:
    """A function that SIGKILLs every process descended from this one and reports their
    pids on the channel.  Called at interpreter clear, the last point Python code runs: by
    then nothing the test started may outlive the run.  The child is a subreaper (see
    child.py), so double-forked orphans are its children too.  Integers and bytes only:
    builtins are gone by then."""

    def reap(
        _listdir: Any = os.listdir,
        _open: Any = os.open,
        _read: Any = os.read,
        _close: Any = os.close,
        _kill: Any = os.kill,
        _write: Any = os.write,
        _getpid: Any = os.getpid,
        _waitpid: Any = _WAITPID,
        _wnohang: int = int(getattr(os, "WNOHANG", 1)),
        _monotonic: Any = time.monotonic,
        _sleep: Any = time.sleep,
        _wait: float = REAP_WAIT,
        _int: Any = int,
        _len: Any = len,
        _rdonly: int = os.O_RDONLY,
        _sigkill: int = int(getattr(signal, "SIGKILL", 9)),
        _fd: int = fd,
        _exc: Any = Exception,
    ) -> None:
        try:
            # The common case, no child at all, without reading every process's stat:
            # orphans come to us (subreaper), so no child means no descendant.
            for tid in _listdir("/proc/self/task"):
                handle = _open("/proc/self/task/" + tid + "/children", _rdonly)
                try:
                    if _read(handle, 64):
                        break
                finally:
                    _close(handle)
            else:
                # Said, so that the parent need not look through every process for
                # ones the run tagged (runner.py): none can exist.
                _write(_fd, b'{"event": "childless", "pid": %d}\n' % _getpid())
                return
        except _exc:
            pass  # no children files (CONFIG_PROC_CHILDREN): scan /proc
        try:
            entries = _listdir("/proc")
        except _exc:
            return
        children: Any = {}
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                handle = _open("/proc/" + entry + "/stat", _rdonly)
                try:
                    stat = _read(handle, 4096)
                finally:
                    _close(handle)
                fields = stat[stat.rfind(b")") + 2 :].split()
                children.setdefault(_int(fields[1]), []).append(_int(entry))
            except _exc:
                continue
        me = _getpid()
        found = []
        stack = [me]
        while stack:
            for child in children.get(stack.pop(), ()):
                if child != me and child not in found:
                    found.append(child)
                    stack.append(child)
        if not found:
            return
        for pid in found:
            try:
                _kill(pid, _sigkill)
            except _exc:
                pass
        # SIGKILL is delivered when the victim is next scheduled; wait for each to die (and
        # collect it: as subreaper we are its parent, or become so when its parent dies), so
        # that none is still running when the run's verdict is given, nor left a zombie.
        deadline = _monotonic() + _wait
        waiting = found[:]
        while waiting and _monotonic() < deadline:
            alive = []
            for pid in waiting:
                try:
                    if _waitpid(pid, _wnohang)[0] == 0:
                        alive.append(pid)
                    continue
                except _exc:
                    pass  # not (yet) our child: its parent has not died yet
                try:
                    handle = _open(f"/proc/{pid}/stat", _rdonly)
                    try:
                        stat = _read(handle, 4096)
                    finally:
                        _close(handle)
                except _exc:
                    continue  # gone
                if stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X"):
                    alive.append(pid)
            waiting = alive
            if waiting:
                _sleep(0.001)
        line = b'{"event": "reaped", "pid": %d, "count": %d}\n' % (me, _len(found))
        try:
            _write(_fd, line)
        except _exc:
            pass

    return reap


#: A fork server's reserved last atexit slot (forkserver.py): callbacks that must run after
#: every other one, in LIFO order.  None in a spawned child: atexit itself is the slot.
_LAST_SLOT: Optional[List[Any]] = None
_BEFORE_SLOT = 0


def reserve_last_atexit() -> None:
    """Register the callback that runs last before anything else can (a fork server does
    this before importing pytest, whose imports register callbacks of their own)."""
    global _LAST_SLOT, _BEFORE_SLOT
    _BEFORE_SLOT = int(getattr(atexit, "_ncallbacks", lambda: 0)())
    _LAST_SLOT = []
    atexit.register(_run_last_slot)


def _run_last_slot() -> None:
    slot = _LAST_SLOT
    while slot:
        func, args = slot.pop()
        func(*args)


def register_last(func: Callable[..., Any], *args: Any) -> None:
    """``atexit.register``, but after every callback registered so far (LIFO)."""
    if _LAST_SLOT is None:
        atexit.register(func, *args)
    else:
        _LAST_SLOT.append((func, args))


def registered_before_last() -> int:
    """Callbacks that run after the ones :func:`register_last` registers."""
    if _LAST_SLOT is None:
        return int(getattr(atexit, "_ncallbacks", lambda: 0)())
    return _BEFORE_SLOT


def install_early(
    mark: Mark, skip: Sequence[str] = (), reap: Optional[Callable[[], None]] = None
) -> None:
    """Register the atexit callback that runs last (atexit is LIFO): call before anything
    else registers one.  ``skip`` and ``reap``: see install_late_markers."""

    def last_atexit(
        _mark: Mark = mark,
        _skip: Sequence[str] = tuple(skip),
        _reap: Optional[Callable[[], None]] = reap,
    ) -> None:
        _mark("atexit_done")
        install_late_markers(_mark, _skip, _reap)

    register_last(last_atexit)


def install_shutdown_markers(mark: Callable[..., None], threading_actions: bool = True) -> None:
    """Markers for threading shutdown and the start of atexit; call when the test is done.

    ``mark`` may be a perturbation engine's ``enter(phase, act)``; ``threading_actions``
    False means the engine acts at threading shutdown by itself (perturb.py)."""
    original: Optional[Callable[[], Any]] = getattr(threading, "_shutdown", None)
    if original is None:  # pragma: no cover - every supported CPython has it
        return

    def first_atexit(_mark: Callable[..., None] = mark) -> None:
        _mark("atexit")

    def _shutdown(
        _orig: Callable[[], Any] = original,
        _mark: Callable[..., None] = mark,
        _register: Any = atexit.register,
        _first: Callable[[], None] = first_atexit,
        _act: bool = threading_actions,
    ) -> Any:
        if _act:
            _mark("threading_shutdown")
        else:
            _mark("threading_shutdown", False)
        try:
            return _orig()
        finally:
            # Registered last, so atexit (LIFO) calls it first.
            _register(_first)

    threading._shutdown = _shutdown  # type: ignore[attr-defined]
