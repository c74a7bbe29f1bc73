"""Carry out a policy's plan inside the child (see ``policies.py`` for what the actions mean).

Like ``injection.py`` this code runs while the interpreter is torn down, when module
globals may already be None: every function that can run late binds what it uses as
default arguments, and no action may raise into the interpreter's shutdown.

Threads are woken with SIGURG (default action: ignore, so a stray one never kills the
process) through a C-level no-op handler installed with ``sigaction`` and no SA_RESTART:
the interrupted system call fails with EINTR, CPython retries it (PEP 475) and retaking the
GIL for that is the path the four fixes guard.  A Python-level handler would not do: CPython
resets those when it finalizes signal handling, before the late phases.
"""

from __future__ import annotations

import _thread
import ctypes
import math
import os
import platform
import queue
import random
import selectors
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

WAKE_SIGNAL = getattr(signal, "SIGURG", 0)
#: A timed wait of a daemon thread is cut into slices this long, so a warp can end it.
SLICE = 0.05
#: After the warp, a timed wait of a daemon thread returns at once, without releasing the
#: GIL: a periodic worker becomes a tight loop until the runtime stops it, so the flag
#: finds it in the middle of its work (inside a write, holding a stream's lock) rather
#: than asleep.  The warp only acts during shutdown; the main thread still gets the GIL
#: every switch interval.
WARPED_WAIT = 0.0
#: tgkill(2) system call numbers (the wake targets threads by their kernel id).
_TGKILL = {"x86_64": 234, "amd64": 234, "aarch64": 131, "arm64": 131, "i686": 270, "i386": 270}

Act = Callable[[], None]
#: The builtin, taken before ``install_waits`` replaces ``time.sleep``.
REAL_SLEEP = time.sleep


_LIBC: List[Optional[ctypes.CDLL]] = []


def _libc() -> Optional[ctypes.CDLL]:
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        except OSError:  # pragma: no cover - every supported platform has one
            _LIBC.append(None)
    return _LIBC[0]


def _tgkill_function() -> Optional[Callable[[int, int, int], int]]:
    """glibc's tgkill (2.30+), else the raw system call; None where neither exists."""
    libc = _libc()
    if libc is None or not sys.platform.startswith("linux"):
        return None
    function = getattr(libc, "tgkill", None)
    if function is not None:
        return function  # type: ignore[no-any-return]
    machine = platform.machine().lower()
    if ctypes.sizeof(ctypes.c_void_p) == 4 and machine in ("x86_64", "amd64"):
        machine = "i686"  # 32-bit userland on a 64-bit kernel
    nr = _TGKILL.get(machine)
    if nr is None or (ctypes.sizeof(ctypes.c_void_p) == 4 and machine in ("aarch64", "arm64")):
        return None
    syscall = libc.syscall

    def raw(pid: int, tid: int, signum: int, _syscall: Any = syscall, _nr: int = nr) -> int:
        return int(_syscall(_nr, pid, tid, signum))

    return raw


def tgkill(pid: int, tid: int, signum: int) -> bool:
    """Send ``signum`` to thread ``tid`` of process ``pid`` (Linux only)."""
    function = _tgkill_function()
    return function is not None and function(pid, tid, signum) == 0


class _Sigaction(ctypes.Structure):
    # glibc's struct sigaction on Linux (x86_64, aarch64, i686).
    _fields_ = [
        ("sa_handler", ctypes.c_void_p),
        ("sa_mask", ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong)))),
        ("sa_flags", ctypes.c_int),
        ("sa_restorer", ctypes.c_void_p),
    ]


def _install_c_noop_handler(libc: ctypes.CDLL, signum: int) -> bool:
    """Make ``signum`` interrupt system calls without running anything (Linux/glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        noop = ctypes.cast(libc.abs, ctypes.c_void_p).value  # int abs(int): harmless
        act = _Sigaction()
        act.sa_handler = noop
        act.sa_flags = 0  # no SA_RESTART: blocking calls return EINTR
        libc.sigemptyset(ctypes.byref(act, _Sigaction.sa_mask.offset))
        return bool(libc.sigaction(signum, ctypes.byref(act), None) == 0)
    except (AttributeError, OSError, TypeError):
        return False


def make_waker() -> Act:
    """A function that interrupts the blocking call of every thread but the main one and
    the non-daemon Python threads (joined at exit, they are not left behind)."""
    libc = _libc()
    pid = os.getpid()
    main_tid = pid
    kill = _tgkill_function()
    native_ok = bool(
        libc is not None
        and kill is not None
        and WAKE_SIGNAL
        and _install_c_noop_handler(libc, WAKE_SIGNAL)
    )
    if not native_ok and WAKE_SIGNAL:
        # Elsewhere: a Python-level no-op handler (works until signal handling is finalized).
        try:
            signal.signal(WAKE_SIGNAL, lambda signum, frame: None)
        except (ValueError, OSError):
            pass

    def keep_tids(
        _enumerate: Any = threading.enumerate, _main: Any = threading.main_thread
    ) -> List[int]:
        try:
            return [
                t.native_id
                for t in _enumerate()
                if not t.daemon and t is not _main() and getattr(t, "native_id", None)
            ]
        except Exception:
            return []

    if native_ok:

        def wake(
            _listdir: Any = os.listdir,
            _kill: Any = kill,
            _pid: int = pid,
            _main: int = main_tid,
            _sig: int = int(WAKE_SIGNAL),
            _int: Any = int,
            _keep: Any = keep_tids,
            _is_finalizing: Any = sys.is_finalizing,
        ) -> None:
            # After the flag no Python thread can be "kept": each one is being stopped.
            keep = () if _is_finalizing() else _keep()
            for name in _listdir("/proc/self/task"):
                tid = _int(name)
                if tid != _main and tid not in keep:
                    _kill(_pid, tid, _sig)

        return wake

    pthread_kill = getattr(signal, "pthread_kill", None)

    def wake_python(
        _enumerate: Any = threading.enumerate,
        _main: Any = threading.main_thread,
        _kill: Any = pthread_kill,
        _sig: int = int(WAKE_SIGNAL),
    ) -> None:
        if _kill is None or not _sig:
            return
        for t in _enumerate():
            if t.daemon and t is not _main() and t.ident:
                try:
                    _kill(t.ident, _sig)
                except Exception:
                    pass

    return wake_python


class WaitState:
    """Shared by the wrappers of timed waits: the warp and the starvation schedule."""

    def __init__(self, seed: int) -> None:
        self.main = _thread.get_ident()
        self.gate = _thread.allocate_lock()
        self.gate.acquire()  # released by the warp; each woken sleeper passes it on
        self.generation = 0
        self.warped = False
        self.starving = False
        self.share = 0.0
        self.low = 0.001
        self.high = 1.0
        self.budget = 0.0
        self.victims: Dict[int, bool] = {}
        self.rng = random.Random(seed)

    def warp(self) -> None:
        if not self.warped:
            self.warped = True
            self.generation += 1
            self.gate.release()

    def starve(self, share: float, low: float, high: float, cap: float) -> None:
        self.share, self.low, self.high, self.budget = share, low, high, cap
        self.starving = True


def install_waits(state: WaitState) -> None:
    """Wrap the timed waits daemon threads use, so a warp can end them and a starvation
    window can stretch them.  The main thread and non-daemon threads go straight through.

    A wait is cut into slices at the level of the lock it blocks on, never by calling the
    original wait again: a notification between two calls would be lost.  Starvation
    delays happen where no lock of the program is held."""
    real_sleep = REAL_SLEEP
    monotonic = time.monotonic
    get_ident = _thread.get_ident
    allocate_lock = _thread.allocate_lock
    timeout_max = getattr(_thread, "TIMEOUT_MAX", 1e9)
    # threading's registry; current_thread() would register a _DummyThread for a thread
    # threading does not know, which the program would then see in enumerate().
    active = getattr(threading, "_active", {})

    def affected(_ident: Any = get_ident, _s: WaitState = state, _active: Any = active) -> bool:
        ident = _ident()
        if ident == _s.main:
            return False
        thread = _active.get(ident)
        # Threads threading does not know (_thread, native) are left behind like daemons.
        return thread is None or bool(getattr(thread, "daemon", True))

    def starve_delay(
        _s: WaitState = state,
        _ident: Any = get_ident,
        _exp: Any = math.exp,
        _log: Any = math.log,
        _min: Any = min,
    ) -> float:
        """Seconds this thread is to be held back now (0 when it is not a victim)."""
        if not _s.starving or _s.budget <= 0:
            return 0.0
        ident = _ident()
        victim = _s.victims.get(ident)
        if victim is None:
            victim = _s.victims[ident] = _s.rng.random() < _s.share
        if not victim:
            return 0.0
        delay: float = _min(_exp(_s.rng.uniform(_log(_s.low), _log(_s.high))), _s.budget)
        _s.budget -= delay
        return delay

    def timed(value: Any, _type: Any = type, _numbers: Any = (int, float)) -> bool:
        return _type(value) in _numbers and 0 < value < timeout_max and value == value

    def acquire(lock: Any, timeout: float) -> bool:
        """``lock.acquire(True, timeout)`` that a warp ends early (returning False)."""
        if state.warped:
            return bool(lock.acquire(False))
        generation = state.generation
        end = monotonic() + timeout
        while True:
            remaining = end - monotonic()
            if lock.acquire(True, max(0.0, min(remaining, SLICE))):
                return True
            if remaining <= SLICE or state.generation != generation:
                return False

    def sliced(call: Callable[[float], Any], timeout: float, done: Callable[[Any], bool]) -> Any:
        """For waits that can be repeated without losing anything (join, select):
        ``call`` with at most SLICE seconds at a time until ``done``, the timeout or a
        warp; returns the last result."""
        if state.warped:
            result = call(WARPED_WAIT)
        else:
            generation = state.generation
            end = monotonic() + timeout
            while True:
                remaining = end - monotonic()
                result = call(max(0.0, min(remaining, SLICE)))
                if done(result) or remaining <= SLICE or state.generation != generation:
                    break
        delay = starve_delay()
        if delay:
            real_sleep(delay)
        return result

    def sleep(secs: Any, _real: Any = real_sleep, _s: WaitState = state) -> None:
        if not timed(secs) or not affected():
            return _real(secs)  # type: ignore[no-any-return]
        if not _s.warped and _s.gate.acquire(True, secs):
            _s.gate.release()  # warped: pass the gate on to the next sleeper
        delay = starve_delay()
        if delay:
            _real(delay)
        return None

    time.sleep = sleep

    cond_wait = threading.Condition.wait

    def wait(self: Any, timeout: Any = None, _orig: Any = cond_wait) -> Any:
        if not timed(timeout) or not affected():
            return _orig(self, timeout)
        # threading.Condition.wait (3.8 to 3.13), with the waiter's acquire sliced.
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        waiter = allocate_lock()
        waiter.acquire()
        self._waiters.append(waiter)
        saved_state = self._release_save()
        gotit = False
        try:
            gotit = acquire(waiter, timeout)
            delay = starve_delay()
            if delay:  # the program's lock is released here: only this thread waits
                if gotit:
                    real_sleep(delay)
                else:
                    gotit = bool(waiter.acquire(True, delay))
            return gotit
        finally:
            self._acquire_restore(saved_state)
            if not gotit:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass

    threading.Condition.wait = wait  # type: ignore[method-assign]

    queue_get = queue.Queue.get

    def get(self: Any, block: bool = True, timeout: Any = None, _orig: Any = queue_get) -> Any:
        if not block or not timed(timeout) or not affected():
            return _orig(self, block, timeout)
        # queue.Queue.get with a timeout (3.8 to 3.13); a warp counts as the timeout.
        with self.not_empty:
            endtime = monotonic() + timeout
            while not self._qsize():
                remaining = endtime - monotonic()
                if remaining <= 0.0 or state.warped:
                    raise queue.Empty
                self.not_empty.wait(remaining)
            item = self._get()
            self.not_full.notify()
            return item

    queue.Queue.get = get  # type: ignore[method-assign]

    thread_join = threading.Thread.join

    def join(self: Any, timeout: Any = None, _orig: Any = thread_join) -> None:
        if not timed(timeout) or not affected():
            return _orig(self, timeout)  # type: ignore[no-any-return]
        sliced(lambda t: _orig(self, t), timeout, lambda _: not self.is_alive())
        return None

    threading.Thread.join = join  # type: ignore[method-assign]

    # PollSelector and DevpollSelector inherit select() from _PollLikeSelector.
    for name in ("SelectSelector", "_PollLikeSelector", "EpollSelector", "KqueueSelector"):
        cls = getattr(selectors, name, None)
        original = vars(cls).get("select") if cls is not None else None
        if original is None:
            continue

        def select(self: Any, timeout: Any = None, _orig: Any = original) -> List[Any]:
            if not timed(timeout) or not affected():
                return _orig(self, timeout)  # type: ignore[no-any-return]
            return sliced(lambda t: _orig(self, t), timeout, bool)  # type: ignore[no-any-return]

        setattr(cls, "select", select)  # noqa: B010 - cls is Optional to mypy here


def _spin_forever(counter: List[int]) -> None:
    while True:
        counter[0] += 1


#: Seconds the injected late threads get to enter the interpreter before finalization goes
#: on (they take a millisecond unless the machine is loaded).
LATE_THREADS_WAIT = 0.5


def _own_tasks(_listdir: Any = os.listdir, _frozenset: Any = frozenset, _exc: Any = OSError) -> Any:
    """This process's thread ids (empty where /proc is missing); usable in finalization."""
    try:
        return _frozenset(_listdir("/proc/self/task"))
    except _exc:
        return _frozenset()


class Engine:
    """One child's plan, compiled into per-phase actions."""

    def __init__(self, plan: Sequence[Mapping[str, Any]], fd: int, seed: int) -> None:
        self.fd = fd
        self.seed = seed
        self.plan = [(str(a["phase"]), str(a["do"]), dict(a.get("args") or {})) for a in plan]
        self.table: Dict[str, List[Act]] = {}
        self.spin_counter: List[int] = [0]
        self.spinners = 0
        self.keep: List[Any] = []  # ctypes callbacks must outlive their native threads
        self.threading_actions_separate = False
        #: What the engine could not do as planned, for the report.
        self.notes: List[str] = []
        #: Late phases left unmarked ("quiet" action): no Python code runs there.
        self.quiet: Sequence[str] = ()

    def install(self) -> None:
        """At child start, before anything registers an atexit callback."""
        kinds = {do for _, do, _ in self.plan}
        # The parent's storm needs the handler too: an ignored signal interrupts nothing.
        wake: Optional[Act] = make_waker() if kinds & {"wake", "storm"} else None
        waits: Optional[WaitState] = None
        if kinds & {"warp", "starve"}:
            waits = WaitState(self.seed)
            install_waits(waits)
        hold_rate = _sum_rate() if "hold" in kinds else 0.0
        for phase, do, args in self.plan:
            seconds = float(args.get("seconds", 0.0))
            if do == "hold" and phase == "atexit_done":
                # Registered before every other callback, so atexit (LIFO) calls it last:
                # no bytecode runs between it and the runtime being marked finalizing.
                from pytest_daemonexit.injection import register_last, registered_before_last

                earlier = registered_before_last()
                if earlier:
                    self.notes.append(
                        f"{earlier} atexit callback(s) registered before the test started "
                        "(sitecustomize, .pth files) run after the hold at atexit_done"
                    )
                register_last(sum, range(int(seconds * hold_rate)))
                continue
            if do == "c_delay":
                _c_exit_delay(seconds)
                continue
            if do == "quiet":
                from pytest_daemonexit.injection import EARLY_LATE_MARKERS

                self.quiet = EARLY_LATE_MARKERS
                continue
            act = self._compile(do, args, seconds, wake, waits, hold_rate)
            if act is not None:
                self.table.setdefault(phase, []).append(act)

    def _compile(
        self,
        do: str,
        args: Mapping[str, Any],
        seconds: float,
        wake: Optional[Act],
        waits: Optional[WaitState],
        hold_rate: float,
    ) -> Optional[Act]:
        if do == "sleep":

            def sleep(_s: float = seconds, _sleep: Any = REAL_SLEEP) -> None:
                _sleep(_s)

            return sleep
        if do == "spin":

            def spin(_s: float = seconds, _now: Any = time.perf_counter) -> None:
                end = _now() + _s
                while _now() < end:
                    pass

            return spin
        if do == "hold":
            n = int(seconds * hold_rate)

            def hold(_n: int = n, _sum: Any = sum, _range: Any = range) -> None:
                _sum(_range(_n))  # C code: holds the GIL, runs no bytecode

            return hold
        if do == "wake":
            return wake
        if do == "warp" and waits is not None:
            return waits.warp
        if do == "starve" and waits is not None:
            share, low = float(args.get("share", 1.0)), float(args.get("low", 0.001))
            high, cap = float(args.get("high", 1.0)), float(args.get("cap", 1.0))
            low, high = max(low, 1e-6), max(high, low)

            def starve(_w: WaitState = waits) -> None:
                _w.starve(share, low, high, cap)

            return starve
        if do == "switch":
            interval = max(seconds, 1e-6)

            def switch(_set: Any = sys.setswitchinterval, _v: float = interval) -> None:
                _set(_v)

            return switch
        if do == "spinners":
            count = int(args.get("count", 1))
            self.spinners += count

            def start(
                _n: int = count,
                _start: Any = _thread.start_new_thread,
                _c: List[int] = self.spin_counter,
                _range: Any = range,
                _spin: Any = _spin_forever,
            ) -> None:
                for _ in _range(_n):
                    _start(_spin, (_c,))

            return start
        if do == "late_threads":
            return self._late_threads()
        return None  # "storm" is the parent's; anything else is unknown here

    def _late_threads(self) -> Act:
        fd = self.fd

        def probe(
            kind: bytes,
            _write: Any = os.write,
            _fd: int = fd,
            _getpid: Any = os.getpid,
            _fin: Any = sys.is_finalizing,
        ) -> None:
            if _fin():
                _write(
                    _fd,
                    b'{"event": "late_thread", "kind": "%s", "pid": %d}\n' % (kind, _getpid()),
                )

        libc = _libc()
        create = getattr(libc, "pthread_create", None) if libc is not None else None
        callback_type = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
        keep = self.keep

        def native_entry(arg: Any, _probe: Any = probe) -> None:
            _probe(b"native")

        callback = callback_type(native_entry)
        keep.append(callback)
        # Never freed: a native thread may call it after the interpreter dropped our hooks.
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(callback))

        def start(
            _start: Any = _thread.start_new_thread,
            _probe: Any = probe,
            _create: Any = create,
            _cb: Any = callback,
            _tid: Any = ctypes.c_ulong,
            _byref: Any = ctypes.byref,
            _keep: List[Any] = keep,
            _exc: Any = Exception,
            _tasks: Any = _own_tasks,
            _sleep: Any = time.sleep,
            _now: Any = time.monotonic,
            _wait: float = LATE_THREADS_WAIT,
        ) -> None:
            before = _tasks()
            try:
                _start(_probe, (b"python",))
            except _exc:
                pass  # 3.12+ refuse new threads while finalizing: that is the fix working
            if _create is not None:
                tid = _tid()
                _keep.append(tid)
                _create(_byref(tid), None, _cb, None)
            # They enter the interpreter in this phase, as the policy says, and not at
            # whatever later moment a loaded machine schedules them: one that starts after
            # the interpreter was deleted crashes CPython, whatever the program does.
            ours = _tasks() - before
            deadline = _now() + _wait
            while ours and _now() < deadline:
                _sleep(0.001)
                ours &= _tasks()

        return start

    def hooks(self, mark: Callable[[str], None]) -> Callable[..., None]:
        """``enter(phase, act=True)``: write the phase marker, then carry out that phase's
        actions.  On 3.9+ the threading_shutdown actions run from a
        ``threading._register_atexit`` callback registered now, i.e. after every such
        callback the test registers (executors' shutdown), before non-daemon threads are
        joined."""
        table = self.table
        counter = self.spin_counter
        watch_spinners = self.spinners > 0
        seen: List[int] = []
        fd = self.fd

        def enter(
            phase: str,
            act: bool = True,
            _mark: Optional[Callable[[str], None]] = mark,
            _table: Dict[str, List[Act]] = table,
            _counter: List[int] = counter,
            _watch: bool = watch_spinners,
            _seen: List[int] = seen,
            _fin: Any = sys.is_finalizing,
            _write: Any = os.write,
            _fd: int = fd,
            _getpid: Any = os.getpid,
            _exc: Any = Exception,
            _len: Any = len,
        ) -> None:
            # Builtins are None by interpreter clear: everything used here is bound.
            if _mark is not None:
                _mark(phase)
            for action in _table.get(phase, ()) if act else ():
                try:
                    action()
                except _exc:
                    pass  # the engine must never be the reason a shutdown fails
            if _watch and _fin():
                # Our spinners may not advance once the runtime is finalizing.
                if not _seen:
                    _seen.append(_counter[0])
                elif _len(_seen) == 1 and _counter[0] != _seen[0]:
                    _seen.append(_counter[0])
                    _write(
                        _fd,
                        b'{"event": "late_thread", "kind": "spinner", "pid": %d, '
                        b'"phase": "%s"}\n' % (_getpid(), phase.encode("ascii")),
                    )

        register: Any = getattr(threading, "_register_atexit", None)
        self.threading_actions_separate = register is not None and "threading_shutdown" in table
        if register is not None and self.threading_actions_separate:

            def threading_actions(_enter: Any = enter) -> None:
                _enter("threading_shutdown", True, None)

            register(threading_actions)
        return enter


def _sum_rate() -> float:
    """Iterations per second of ``sum(range(n))`` on this machine (a quick measurement)."""
    n = 200_000
    start = time.perf_counter()
    sum(range(n))
    elapsed = time.perf_counter() - start
    return n / elapsed if elapsed > 0 else 5e7


def _c_exit_delay(seconds: float) -> bool:
    """glibc ``__cxa_atexit(usleep, µs)``: a delay after ``Py_FinalizeEx`` returned."""
    libc = _libc()
    register = getattr(libc, "__cxa_atexit", None) if libc is not None else None
    usleep = getattr(libc, "usleep", None) if libc is not None else None
    if register is None or usleep is None:
        return False
    micros = max(0, min(int(seconds * 1e6), 10_000_000))
    return register(usleep, ctypes.c_void_p(micros), None) == 0  # type: ignore[no-any-return]
