"""Start a child interpreter, watch it through its shutdown, collect what it left behind.

Usable without pytest's plugin layer, like CPython's ``script_helper``::

    from pytest_daemonexit.runner import RunRequest, run
    evidence = run(RunRequest.script("app.py", timeout=5))

The child reports over a pipe (``channel.py``); stdout and stderr go to files, so a child
that floods them never blocks on a full pipe and the parent reads only their head and tail.
"""

from __future__ import annotations

import dataclasses
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from pytest_daemonexit import channel, processes
from pytest_daemonexit.childenv import ORIGINAL_SYS_PATH0 as ORIGINAL_SYS_PATH0
from pytest_daemonexit.childenv import PINNED_ENVIRONMENT as PINNED_ENVIRONMENT
from pytest_daemonexit.childenv import child_environment as child_environment
from pytest_daemonexit.childenv import interpreter_argv as interpreter_argv
from pytest_daemonexit.policies import Action

#: How much of stdout/stderr the parent keeps from each end.
KEEP_BYTES = 64 * 1024
#: Seconds past the child's own watchdog before the parent asks for a dump itself.
DUMP_GRACE = 0.5
#: Seconds allowed for a native stack tool.
NATIVE_STACK_SECONDS = 8.0


def bytecode_cache_dir(env: Mapping[str, str], candidate: Path) -> Optional[str]:
    """``candidate`` when a child with ``env`` would compile every module it imports from
    source in every run (``PYTHONDONTWRITEBYTECODE``, common in CI images): its pytest then
    keeps bytecode there, out of the source tree (``sys.pycache_prefix``).  None when the
    child may write ``__pycache__`` as usual, or the user chose a prefix."""
    if not env.get("PYTHONDONTWRITEBYTECODE") or env.get("PYTHONPYCACHEPREFIX"):
        return None
    return str(candidate)


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """One child run."""

    mode: str  # "pytest": args are pytest arguments; "script": args[0] is a script path
    args: Tuple[str, ...]
    python: str = sys.executable
    python_flags: Tuple[str, ...] = ()
    cwd: Optional[str] = None
    env: Optional[Mapping[str, str]] = None  # default: child_environment()
    timeout: float = 10.0
    run_timeout: float = 0.0
    plugins: Tuple[str, ...] = ()
    native_stacks: str = "auto"
    sys_path0: Optional[str] = ORIGINAL_SYS_PATH0
    workdir: Optional[str] = None  # default: a temporary directory, removed afterwards
    plan: Tuple[Action, ...] = ()  # a policy's perturbation (policies.py)
    seed: int = 0  # the run's seed: the child draws its own random choices from it
    #: Start the child by forking this server (forkserver.ForkServer) instead of spawning.
    forkserver: Any = None
    #: A threading.Event: once set, the child is stopped and the run ends ("cancelled").
    cancel: Any = None
    #: Where the child's pytest writes and reads bytecode (``sys.pycache_prefix``), when the
    #: environment forbids writing it next to the sources (bytecode_cache_dir).
    pycache_prefix: Optional[str] = None

    @classmethod
    def script(cls, path: str, *args: str, **kwargs: Any) -> RunRequest:
        return cls(mode="script", args=(path, *args), **kwargs)

    def argv(self, spec_path: str) -> List[str]:
        return interpreter_argv(self.python, self.python_flags, self.sys_path0, "child", spec_path)


@dataclasses.dataclass(frozen=True)
class PhaseMark:
    """A shutdown phase the child entered: its name, the child's monotonic time, and
    how far stderr had been written then (-1 when unknown)."""

    name: str
    time: float
    stderr_offset: int = -1


@dataclasses.dataclass(frozen=True)
class Output:
    """Part of a stream: its text (head and tail when large) and what was left out."""

    text: str = ""
    dropped: int = 0
    start: int = 0  # byte offset of this part in the stream


@dataclasses.dataclass(frozen=True)
class Evidence:
    """Everything a child left behind; the judge needs nothing else."""

    argv: Tuple[str, ...]
    pid: int
    returncode: Optional[int]  # as subprocess reports it: -N for death by signal N
    stopped: Optional[str]  # None, "exit_timeout", "run_timeout" or "cancelled": we killed it
    phases: Tuple[PhaseMark, ...]
    records: Tuple[Dict[str, Any], ...]  # channel records other than phases
    stdout_test: Output
    stdout_exit: Output
    stderr_test: Output
    stderr_exit: Output
    faults: str
    native_stacks: str
    duration: float
    exit_seconds: Optional[float]  # from the test's end to the child's end, parent's clock
    version: Optional[Tuple[int, ...]] = None
    workdir: Optional[str] = None
    plan: Tuple[Action, ...] = ()
    seed: int = 0

    @property
    def last_phase(self) -> str:
        return self.phases[-1].name if self.phases else "start"

    @property
    def test_finished(self) -> bool:
        return any(mark.name == "test_done" for mark in self.phases)

    def phase_at(self, stderr_offset: int) -> Optional[str]:
        """The phase the child was in when it wrote stderr at ``stderr_offset``."""
        found = None
        for mark in self.phases:
            if 0 <= mark.stderr_offset <= stderr_offset:
                found = mark.name
        return found

    @property
    def main_thread(self) -> Optional[str]:
        """The child's main thread id as faulthandler prints it."""
        for record in self.events("start"):
            ident = record.get("main_thread")
            if isinstance(ident, int):
                return f"0x{ident:016x}"
        return None

    def events(self, name: str) -> List[Dict[str, Any]]:
        return [r for r in self.records if r.get("event") == name]


def _read_range(path: Path, start: int, end: Optional[int]) -> Output:
    try:
        size = path.stat().st_size
    except OSError:
        return Output()
    end = size if end is None else max(0, min(end, size))  # f.read(-n) would raise
    start = max(0, min(start, end))
    length = end - start
    with open(path, "rb") as f:
        f.seek(start)
        if length <= 2 * KEEP_BYTES:
            return Output(f.read(length).decode("utf-8", "replace"), 0, start)
        head = f.read(KEEP_BYTES)
        f.seek(end - KEEP_BYTES)
        tail = f.read(KEEP_BYTES)
    dropped = length - 2 * KEEP_BYTES
    text = (
        head.decode("utf-8", "replace")
        + f"\n[... {dropped} bytes left out by pytest-daemonexit ...]\n"
        + tail.decode("utf-8", "replace")
    )
    return Output(text, dropped, start)


def _split(path: Path, offset: Optional[int]) -> Tuple[Output, Output]:
    if offset is None:
        return Output(), _read_range(path, 0, None)
    return _read_range(path, 0, offset), _read_range(path, offset, None)


_GDB_FRAME = re.compile(
    r"^#(?P<n>\d+)\s+(?:0x[0-9a-f]+ in )?(?P<func>[\w.<>:~]+) \(.*?\)(?: at (?P<at>\S+))?"
    r"(?: from (?P<lib>\S+))?"
)
_GDB_THREAD = re.compile(
    r'^Thread (?P<n>\d+) \(Thread 0x[0-9a-f]+ \(LWP (?P<lwp>\d+)\)(?: "(?P<name>[^"]*)")?\)'
)
#: Native frames kept per thread; the outermost ones are start-up boilerplate.
NATIVE_FRAMES = 24


def _compact_gdb(text: str) -> str:
    """gdb's backtraces as ``Thread N: #0 func at file:line`` lines, arguments dropped."""
    out: List[str] = []
    frames = 0
    for line in text.splitlines():
        header = _GDB_THREAD.match(line)
        if header:
            name = f' "{header.group("name")}"' if header.group("name") else ""
            out.append(f"Thread {header.group('n')} (LWP {header.group('lwp')}){name}:")
            frames = 0
            continue
        m = _GDB_FRAME.match(line)
        if not m:
            continue
        frames += 1
        if frames > NATIVE_FRAMES:
            if frames == NATIVE_FRAMES + 1:
                out.append("    ...")
            continue
        where = m.group("at") or (Path(m.group("lib")).name if m.group("lib") else "")
        out.append(f"    #{m.group('n')} {m.group('func')}" + (f" at {where}" if where else ""))
    return "\n".join(out)


def native_stacks(pid: int, tool: str = "auto") -> str:
    """Native stacks of every thread of ``pid`` from gdb or py-spy, or "" without them."""
    if tool == "off":
        return ""
    commands: List[List[str]] = []
    gdb, pyspy = shutil.which("gdb"), shutil.which("py-spy")
    if gdb and tool in ("auto", "gdb"):
        commands.append(
            [
                gdb,
                "-p",
                str(pid),
                "-batch",
                "-nx",
                "-ex",
                "set pagination off",
                "-ex",
                "thread apply all bt",
            ]
        )
    if pyspy and (tool == "py-spy" or (tool == "auto" and not gdb)):
        commands.append([pyspy, "dump", "--native", "--pid", str(pid)])
    texts = []
    for command in commands:
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=NATIVE_STACK_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            texts.append(f"$ {' '.join(command[:1])}: {exc}")
            continue
        out = done.stdout.decode("utf-8", "replace")
        if Path(command[0]).name == "gdb":
            out = _compact_gdb(out)
        texts.append(f"$ {Path(command[0]).name} ({pid})\n{out.strip()}")
    return "\n\n".join(texts)


class _Watch:
    """Waits for a child process with a deadline; uses a pidfd where there is one."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pidfd: Optional[int] = None
        if hasattr(os, "pidfd_open"):
            try:
                self.pidfd = os.pidfd_open(proc.pid)
            except OSError:
                self.pidfd = None

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _take(
    record: Dict[str, Any], pid: int, phases: List[PhaseMark], records: List[Dict[str, Any]]
) -> Optional[str]:
    """File one channel record; returns the phase name for a phase record."""
    if record.get("pid") != pid:
        return None  # written by a process the test forked
    if record["event"] != "phase":
        records.append(record)
        return None
    try:
        when = int(record["t_ns"]) / 1e9 if "t_ns" in record else float(record["t"])
        mark = PhaseMark(str(record["phase"]), when, int(record.get("err", -1)))
    except (KeyError, TypeError, ValueError):
        return None
    phases.append(mark)
    return mark.name


def run(request: RunRequest) -> Evidence:
    """Run one child to its end (or stop it) and return the evidence.  Never hangs: every
    wait has a deadline, and a child that overstays is killed with its whole tree."""
    own_dir = request.workdir is None
    workdir = Path(request.workdir or tempfile.mkdtemp(prefix="daemonexit-"))
    try:
        return _run(request, workdir)
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(request: RunRequest, workdir: Path) -> Evidence:
    import json

    workdir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = workdir / "stdout", workdir / "stderr"
    fault_path, spec_path = workdir / "faults", workdir / "spec.json"
    read_fd, write_fd = os.pipe()
    spec = {
        "mode": request.mode,
        "args": list(request.args),
        "channel_fd": write_fd,
        "fault_file": str(fault_path),
        "timeout": request.timeout,
        "run_timeout": request.run_timeout,
        "plugins": list(request.plugins),
        "parent_pid": os.getpid(),
        "plan": [a.to_json() for a in request.plan],
        "seed": request.seed,
        "pycache_prefix": request.pycache_prefix,
    }
    storms = {a.phase: a for a in request.plan if a.do == "storm"}
    storm: Optional[_Storm] = None
    if request.forkserver is None:
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
    # A forked child gets the spec with the fork request: no file to write and remove.
    argv = request.argv(str(spec_path))
    env = dict(request.env) if request.env is not None else child_environment()
    token = processes.tag_environment(env)
    started = time.monotonic()
    proc: Any
    try:
        with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
            if request.forkserver is not None:
                proc = request.forkserver.launch(
                    spec, env, (write_fd, out_f.fileno(), err_f.fileno())
                )
            else:
                proc = subprocess.Popen(
                    argv,
                    cwd=request.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out_f,
                    stderr=err_f,
                    pass_fds=(write_fd,),
                    start_new_session=(sys.platform != "win32"),
                )
    finally:
        os.close(write_fd)
    watch = _Watch(proc)
    reader = channel.Reader()
    records: List[Dict[str, Any]] = []
    phases: List[PhaseMark] = []
    stopped: Optional[str] = None
    test_done_at: Optional[float] = None
    run_deadline = started + request.run_timeout + DUMP_GRACE if request.run_timeout else None
    exit_deadline: Optional[float] = None
    pipe_open = True
    try:
        while proc.poll() is None:
            now = time.monotonic()
            deadline = exit_deadline if exit_deadline is not None else run_deadline
            if deadline is not None and now >= deadline:
                stopped = "exit_timeout" if exit_deadline is not None else "run_timeout"
                break
            if request.cancel is not None and request.cancel.is_set():
                stopped = "cancelled"
                break
            wait = 0.05 if watch.pidfd is None else (1.0 if request.cancel is None else 0.2)
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            if storm is not None:
                wait = min(wait, storm.tick(now))
            fds = ([read_fd] if pipe_open else []) + (
                [watch.pidfd] if watch.pidfd is not None else []
            )
            if not fds:
                time.sleep(wait)
                continue
            ready = select.select(fds, [], [], wait)[0]
            if watch.pidfd in ready and proc.poll() is None:
                # A forked child: it has exited, its server reports the status shortly.
                try:
                    proc.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    pass
            if read_fd in ready:
                data = os.read(read_fd, 1 << 16)
                if not data:
                    pipe_open = False
                for record in reader.feed(data):
                    phase = _take(record, proc.pid, phases, records)
                    if phase == "test_done":
                        test_done_at = time.monotonic()
                        exit_deadline = test_done_at + request.timeout + DUMP_GRACE
                    if phase in storms:
                        storm = _Storm(proc.pid, storms[phase], time.monotonic())
        native = ""
        if stopped == "cancelled":
            processes.kill_tree(proc.pid)
        elif stopped is not None:
            native = _stop(proc, request, fault_path)
        else:
            processes.kill_group(proc.pid)  # leftovers in the child's process group
        ended = time.monotonic()
        # Whatever the child wrote before it died is still in the pipe.
        while pipe_open and select.select([read_fd], [], [], 0)[0]:
            data = os.read(read_fd, 1 << 16)
            if not data:
                break
            for record in reader.feed(data):
                _take(record, proc.pid, phases, records)
    finally:
        watch.close()
        os.close(read_fd)
        interrupted = proc.poll() is None  # KeyboardInterrupt or an internal error
        if interrupted:
            processes.kill_tree(proc.pid)
        # What the child started and could not reap itself: it died before interpreter
        # clear and its orphans (in a session of their own) were reparented away from it.
        # Not needed when the child said at interpreter clear that it had no child at
        # all (a subreaper: then it had no descendant); the search reads two files of
        # every process on the machine, per run.
        if interrupted or not any(r.get("event") == "childless" for r in records):
            processes.kill_tagged(token)
        if interrupted:
            proc.wait(timeout=10)

    offsets: Dict[str, int] = {}
    for record in records:
        if record["event"] == "test_done":
            offsets = record.get("offsets") or {}
    err_split = offsets.get("stderr")
    for mark in phases:
        if mark.name == "session_end" and mark.stderr_offset >= 0:
            # What a child printed once its test had ended (a thread's error while pytest's
            # session ends) is judged with the exit, as outside pytest; its stdout is
            # pytest's summary until the session has ended.
            err_split = mark.stderr_offset
    stdout_test, stdout_exit = _split(out_path, offsets.get("stdout"))
    stderr_test, stderr_exit = _split(err_path, err_split)
    faults = _read_range(fault_path, 0, None).text
    version = None
    for record in records:
        if record["event"] == "start" and isinstance(record.get("version"), list):
            version = tuple(int(v) for v in record["version"])
    return Evidence(
        argv=tuple(argv),
        pid=proc.pid,
        returncode=proc.returncode,
        stopped=stopped,
        phases=tuple(phases),
        records=tuple(records),
        stdout_test=stdout_test,
        stdout_exit=stdout_exit,
        stderr_test=stderr_test,
        stderr_exit=stderr_exit,
        faults=faults,
        native_stacks=native,
        duration=ended - started,
        exit_seconds=None if test_done_at is None else ended - test_done_at,
        version=version,
        workdir=str(workdir),
        plan=request.plan,
        seed=request.seed,
    )


class _Storm:
    """Signals to every thread of the child but its main one, every ``interval`` seconds
    for ``seconds`` (a policy's "storm" action, carried out by the parent)."""

    def __init__(self, pid: int, action: Action, now: float) -> None:
        from pytest_daemonexit.perturb import WAKE_SIGNAL

        self.pid = pid
        self.signal = WAKE_SIGNAL
        self.interval = max(action.arg("interval", 0.002), 0.0005)
        self.end = now + min(action.arg("seconds", 0.1), 1.0)
        self.next = now

    def tick(self, now: float) -> float:
        """Send what is due; return the seconds until the next signal (inf when over)."""
        if now >= self.end or not self.signal:
            return float("inf")
        if now >= self.next:
            processes.signal_threads(self.pid, self.signal)
            self.next = now + self.interval
        return max(0.0, self.next - now)


def _fault_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _stop(proc: subprocess.Popen[bytes], request: RunRequest, fault_path: Path) -> str:
    """Stop an overstaying child: stacks first (faulthandler, then native), then SIGKILL."""
    size = _fault_size(fault_path)
    if size == 0:
        # The child's own watchdog did not dump (faulthandler gone, or the watchdog
        # disarmed by the test): ask with the dump signal.
        from pytest_daemonexit.injection import DUMP_SIGNAL

        if DUMP_SIGNAL:
            try:
                os.kill(proc.pid, DUMP_SIGNAL)
            except (ProcessLookupError, PermissionError):
                pass
            end = time.monotonic() + DUMP_GRACE
            while time.monotonic() < end and _fault_size(fault_path) == size:
                if proc.poll() is not None:
                    break
                time.sleep(0.02)
    native = ""
    if proc.poll() is None:
        native = native_stacks(proc.pid, request.native_stacks)
    processes.kill_tree(proc.pid)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL did not work
        pass
    return native
