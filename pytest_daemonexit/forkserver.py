"""The fork server: an interpreter that has paid for pytest once and forks one child per run.

Spawning ``python -m pytest`` per run pays for the interpreter's start, pytest's imports,
plugin discovery and argument parsing every time.  The server (a "zygote") does that once:
it imports pytest (``boot``, which needs nothing from the session and may start before the
session knows its command line) and, once sent the command line (``start``), parses it
into a configuration, without conftest files, without configuring plugins and without
any thread, freezes its heap
(``gc.freeze()``: a child's collections then skip pytest's objects), then forks a child per
run.  The child takes the run's stdout, stderr and channel, loads the conftest files and
the test module itself (their import-time threads and state are the run's own), configures
pytest, runs the one test and returns from ``main``: the interpreter goes through its real
finalization, as a spawned child does.

Linux only (fork after ``exec`` of a single-threaded interpreter, ``SOCK_SEQPACKET``,
``SCM_RIGHTS``).  The parent side (:class:`ForkServer`) is thread-safe; runs started through
it are watched by ``runner.py`` like spawned ones.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    List,
    Mapping,
    NoReturn,
    Optional,
    Sequence,
    Set,
    Tuple,
)

if TYPE_CHECKING:
    import queue

#: Seconds the server may take to start (import pytest, parse, learn what configure imports).
START_SECONDS = 60.0
#: Orphan sweeps, 10 ms apart, before a stopping server exits.
_FINAL_SWEEPS = 50
#: Seconds the server may take to answer a fork request.
FORK_SECONDS = 30.0
_MAX_MESSAGE = 1 << 20


class ForkServerError(RuntimeError):
    """The server could not start or died; the message says why."""


def available() -> bool:
    """Where the fork server can run: Linux, with fork and descriptor passing."""
    return (
        sys.platform.startswith("linux")
        and hasattr(os, "fork")
        and hasattr(socket, "SOCK_SEQPACKET")
        and hasattr(socket, "SCM_RIGHTS")
    )


def _send(sock: socket.socket, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(message).encode("utf-8")
    if fds:
        payload = struct.pack(f"{len(fds)}i", *fds)
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, payload)])
    else:
        sock.sendall(data)


def _receive(sock: socket.socket) -> Tuple[Optional[Dict[str, Any]], List[int]]:
    """One message and the descriptors sent with it; (None, []) at end of stream."""
    # struct, not array: a forked child has what its server imported, and a spawned child
    # has struct (pytest's imports) but not array.
    size = struct.calcsize("i")
    fds: List[int] = []
    data, ancdata, _flags, _addr = sock.recvmsg(_MAX_MESSAGE, socket.CMSG_LEN(16 * size))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            count = len(payload) // size
            fds += struct.unpack(f"{count}i", payload[: count * size])
    if not data:
        return None, fds
    return json.loads(data.decode("utf-8")), fds


def _returncode(status: int) -> int:
    """``subprocess``'s convention: -N for death by signal N."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


# -- parent side ------------------------------------------------------------------------


class ForkedChild:
    """A run forked by the server: the parts of ``subprocess.Popen`` the runner uses."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.returncode: Optional[int] = None
        self._done = threading.Event()

    def _exited(self, returncode: int) -> None:
        self.returncode = returncode
        self._done.set()

    def poll(self) -> Optional[int]:
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"forked child {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode


class ForkServer:
    """One server process per interpreter, interpreter flags and command line."""

    def __init__(
        self,
        *,
        python: str,
        python_flags: Sequence[str],
        args: Sequence[str],
        plugins: Sequence[str],
        cwd: Optional[str],
        env: Mapping[str, str],
        sys_path0: Optional[str],
        workdir: str,
        imports_cache: Optional[str] = None,
        key_args: Optional[Sequence[str]] = None,
        pycache_prefix: Optional[str] = None,
    ) -> None:
        self.python = python
        self.python_flags = tuple(python_flags)
        self.cwd = cwd
        self.env = dict(env)
        self.sys_path0 = sys_path0
        self.adopt(
            args=args,
            plugins=plugins,
            workdir=workdir,
            imports_cache=imports_cache,
            key_args=key_args,
            pycache_prefix=pycache_prefix,
        )
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._sock: Optional[socket.socket] = None
        self._lock = threading.Lock()  # one fork request at a time
        # Imported here: the server and its children, which import this module, would
        # otherwise have queue where a spawned child has not.
        import queue

        self._replies: queue.Queue[Dict[str, Any]] = queue.Queue()
        self._children: Dict[int, ForkedChild] = {}
        self._early: Dict[int, int] = {}  # exits reported before the parent knew the pid
        self._state = threading.Lock()
        self._dead: Optional[str] = None
        self.imported = 0  # modules the server imported after learning what configure needs
        self._aborted = False
        # The server's own stdout and stderr: anonymous files, read when it dies.
        self._output: List[Any] = []

    def boot(self) -> None:
        """Start the interpreter: it imports pytest, then waits for ``start`` to send the
        command line.  Called early (the plugin's ``pytest_configure``), the imports
        overlap the rest of the parent's configuration and collection."""
        import tempfile

        from pytest_daemonexit import childenv

        if self.proc is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        boot = json.dumps({"control_fd": theirs.fileno(), "parent_pid": os.getpid()})
        argv = childenv.interpreter_argv(
            self.python, self.python_flags, self.sys_path0, "forkserver", boot
        )
        try:
            # Open for the server's life (closed by stop).
            self._output = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]  # noqa: SIM115
            self.proc = subprocess.Popen(
                argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=self._output[0],
                stderr=self._output[1],
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise ForkServerError(f"cannot start {self.python}: {exc}") from None
        finally:
            theirs.close()
        self._sock = ours
        threading.Thread(target=self._read, name="daemonexit-forkserver", daemon=True).start()

    def adopt(
        self,
        *,
        args: Sequence[str],
        plugins: Sequence[str],
        workdir: str,
        imports_cache: Optional[str] = None,
        key_args: Optional[Sequence[str]] = None,
        pycache_prefix: Optional[str] = None,
    ) -> None:
        """The command line and session directory ``start`` sends: given here to a server
        launched before the session knew them."""
        self.args = tuple(args)
        self.plugins = tuple(plugins)
        self.workdir = Path(workdir)
        # Where the server remembers what a session imports lazily (pytest's cache).
        self.imports_cache = imports_cache
        # The command line without what changes every session (the server's cache_dir).
        self.key_args = tuple(key_args if key_args is not None else args)
        # Where pytest keeps the bytecode it rewrites, when the environment forbids
        # __pycache__ (runner.bytecode_cache_dir).
        self.pycache_prefix = pycache_prefix

    # The server is started lazily, by the first run that needs it.
    def start(self) -> None:
        """Launch the server if it is not running yet, send it the command line, and
        wait until it can fork."""
        self.boot()
        self.workdir.mkdir(parents=True, exist_ok=True)
        user_noconftest = "--noconftest" in self.args
        spec = {
            # Conftest files are the run's own: the child loads them (run_session).
            "args": [*self.args, *([] if user_noconftest else ["--noconftest"])],
            "user_noconftest": user_noconftest,
            "plugins": list(self.plugins),
            "workdir": str(self.workdir),
            "imports_cache": self.imports_cache,
            "key_args": list(self.key_args),
            "pycache_prefix": self.pycache_prefix,
        }
        # What the server was told, for whoever looks into the session's directory.
        (self.workdir / "server.json").write_text(json.dumps(spec), encoding="utf-8")
        if self._aborted:
            self.abort()
        elif self._sock is not None:
            try:
                _send(self._sock, {"op": "start", "spec": spec})
            except OSError:
                pass  # it died: the reader thread reports why
        import queue

        try:
            reply = self._replies.get(timeout=START_SECONDS)
        except queue.Empty:
            self.stop()
            raise ForkServerError(f"did not start within {START_SECONDS:g} s") from None
        if "error" in reply:
            self.stop()
            raise ForkServerError(str(reply["error"]))
        self.imported = int(reply.get("imported") or 0)

    def _read(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                message, fds = _receive(sock)
            except (OSError, ValueError):
                message, fds = None, []
            for fd in fds:
                os.close(fd)
            if message is None:
                self._died("the fork server ended")
                return
            if "exited" in message:
                pid, code = int(message["exited"]), int(message["returncode"])
                with self._state:
                    child = self._children.pop(pid, None)
                    if child is None:
                        self._early[pid] = code
                if child is not None:
                    child._exited(code)
            else:
                self._replies.put(message)

    def _died(self, why: str) -> None:
        stderr = ""
        try:
            # pread: the server shares this file's offset, and may still be writing.
            fd = self._output[1].fileno()
            size = os.fstat(fd).st_size
            tail = os.pread(fd, 8192, max(0, size - 8192))
            stderr = tail.decode("utf-8", "replace")[-2000:]
        except (IndexError, OSError, ValueError):
            pass
        with self._state:
            self._dead = why + (f"; its stderr ended with:\n{stderr}" if stderr.strip() else "")
            orphans = list(self._children.values())
            self._children.clear()
        self._replies.put({"error": self._dead})
        for child in orphans:
            # The kernel killed them with the server (PR_SET_PDEATHSIG); their status is lost.
            child._exited(-signal.SIGKILL)

    @property
    def alive(self) -> bool:
        return self._dead is None and self.proc is not None and self.proc.poll() is None

    def launch(
        self, spec: Mapping[str, Any], env: Mapping[str, str], fds: Sequence[int]
    ) -> ForkedChild:
        """Fork a child for the run described by ``spec`` (what a spawned child reads
        from its spec file); ``fds`` are its channel, stdout and stderr."""
        with self._lock:
            if not self.alive or self._sock is None:
                raise ForkServerError(self._dead or "the fork server is not running")
            _send(self._sock, {"op": "run", "spec": dict(spec), "env": dict(env)}, fds)
            import queue

            try:
                reply = self._replies.get(timeout=FORK_SECONDS)
            except queue.Empty:
                raise ForkServerError(
                    f"no answer to a fork request in {FORK_SECONDS:g} s"
                ) from None
        if "error" in reply:
            raise ForkServerError(str(reply["error"]))
        child = ForkedChild(self, int(reply["pid"]))
        with self._state:
            code = self._early.pop(child.pid, None)
            if code is None:
                self._children[child.pid] = child
        if code is not None:
            child._exited(code)
        return child

    def abort(self) -> None:
        """Kill a server that is still starting (nobody will use it): ``start`` then
        raises at once instead of waiting for pytest's imports."""
        self._aborted = True
        if self.proc is not None and self.proc.poll() is None:
            from pytest_daemonexit import processes

            processes.kill_tree(self.proc.pid)
        self._replies.put({"error": "stopped while it started"})

    def discard(self) -> None:
        """Kill a server that never forked (nothing of a run can be lost) and wait."""
        self.abort()
        self.stop()

    def stop(self) -> None:
        """Stop the server (its children die with it: PR_SET_PDEATHSIG)."""
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.proc is not None and self.proc.poll() is None:
            from pytest_daemonexit import processes

            if not processes.wait_exited(self.proc, 2):
                processes.kill_tree(self.proc.pid)
                self.proc.wait(timeout=10)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for output in self._output:
            output.close()


# -- server side ------------------------------------------------------------------------


def _prepare(spec: Mapping[str, Any]) -> Any:
    """pytest's configuration of the session's command line, without conftest files and
    not yet configured (plugins' ``pytest_configure`` runs in each child)."""
    from _pytest.config import _prepareconfig

    return _prepareconfig(list(spec["args"]), [p for p in spec.get("plugins", ()) if p])


def _learn_imports(config: Any, empty_dir: str) -> List[str]:
    """Modules a session imports on its way (plugins import lazily: hypothesis at the
    terminal summary, pdb, ...), found by a session that collects an empty directory in a
    throwaway fork, so the server imports them once for every child.  The test's own
    modules are never among them: nothing is collected."""
    from _pytest.config import Config

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the throwaway fork
        try:
            os.close(read_fd)
            before = set(sys.modules)
            from pytest_daemonexit import child

            child.skip_terminal_summary(config.pluginmanager)  # as the children skip it
            config.args, config.args_source = [empty_dir], Config.ArgsSource.ARGS
            config.option.collectonly = True
            config.hook.pytest_cmdline_main(config=config)
            new = sorted(m for m in set(sys.modules) - before if m != "__main__")
            os.write(write_fd, json.dumps(new).encode("utf-8"))
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while True:
        data = os.read(read_fd, 1 << 16)
        if not data:
            break
        chunks.append(data)
    os.close(read_fd)
    os.waitpid(pid, 0)
    try:
        names = json.loads(b"".join(chunks).decode("utf-8"))
    except ValueError:
        return []
    return [str(n) for n in names]


#: Changes when what a child imports on its way changes for the same plugins (2: the
#: terminal summary is skipped), so that lists learned before are learned again.
_IMPORTS_FORMAT = 2


def _imports_key(config: Any, args: Sequence[str]) -> str:
    """What the modules a session imports lazily depend on: the interpreter, the command
    line, the ini file and the plugins' versions (never the tests: none is collected)."""
    import zlib  # not hashlib: a spawned child of an older pytest has not imported it

    ini = ""
    if config.inipath is not None:
        try:
            ini = Path(config.inipath).read_text("utf-8", "replace")
        except OSError:
            pass
    # Their metadata files as they are: parsing them (dist.version) imports email's
    # parser, which a forked child would then have and a spawned one not.
    dists = sorted(
        dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
        for _plugin, dist in config.pluginmanager.list_plugin_distinfo()
    )
    parts = [_IMPORTS_FORMAT, sys.executable, sys.version, list(args), ini, dists]
    data = json.dumps(parts).encode("utf-8")
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}{len(data):x}"


def _cached_imports(path: str, key: str) -> Optional[List[str]]:
    try:
        with open(path, encoding="utf-8") as f:
            entry = json.load(f).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(entry, list) or not all(isinstance(n, str) for n in entry):
        return None
    return entry


def _store_imports(path: str, key: str, names: List[str]) -> None:
    """Remember what was learned for the next session (the newest few command lines);
    atomic, since xdist workers' servers share the file."""
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError):
        entries = {}
    entries.pop(key, None)
    entries[key] = names
    entries = dict(list(entries.items())[-8:])
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(entries, f)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _outside(module: Any, roots: Sequence[str]) -> bool:
    path = getattr(module, "__file__", None) or ""
    return not any(path.startswith(root + os.sep) for root in roots)


#: The code objects of the server's functions, never freed: a self-referencing list that
#: gc.freeze() takes out of every collection.
_KEPT_CODE: List[Any] = []


def _keep_code(objects: List[Any]) -> None:
    """Keep the server's code objects alive through a child's finalization.  When a child
    clears the modules a function's code is then not freed, and neither is anything only
    it refers to (constants, names, line tables, nested code): a sixth of the teardown's
    work and page copies, for objects no program can tell were freed (no finalizer, no
    weak reference anyone makes).  The functions themselves are freed as before, since a
    closure or a default may hold something of the test's."""
    function = type(_keep_code)
    _KEPT_CODE[:] = [obj.__code__ for obj in objects if type(obj) is function]
    _KEPT_CODE.append(_KEPT_CODE)


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _serve(spec: Mapping[str, Any], sock: socket.socket) -> Tuple[Dict[str, Any], List[int]]:
    """The server's loop; returns (request, descriptors) in a forked child only."""
    import gc
    import importlib

    from pytest_daemonexit import (
        child,
        pluginfixtures,
        programhooks,  # noqa: F401 - every child imports it
    )

    child.RUNNING = True  # the plugin in this configuration acts as in a child
    try:
        # pytest rewrites the asserts of every module of a plugin's distribution
        # (hypothesis' ~70) and caches the result beside the bytecode: where the
        # environment forbids writing it, every server would rewrite them again (0.5 s).
        child.use_bytecode_cache(spec.get("pycache_prefix"))
        child.read_rewritten_bytecode_at_once()
        config = _prepare(spec)
        roots = [str(config.rootpath), str(config.invocation_params.dir)]
        imported = 0
        cache = spec.get("imports_cache")
        key = _imports_key(config, spec.get("key_args") or spec["args"])
        names = _cached_imports(cache, key) if cache else None
        if names is None:
            empty = Path(spec["workdir"], "empty")
            empty.mkdir(exist_ok=True)
            names = _learn_imports(config, str(empty))
            if cache:
                _store_imports(cache, key, names)
        for name in names:
            if name in sys.modules:
                continue
            try:
                module = importlib.import_module(name)
            except Exception:
                continue
            if not _outside(module, roots):
                continue
            imported += 1
        pluginfixtures.scan(config.pluginmanager.get_plugins())
        if _threads() != 1:
            raise ForkServerError(
                f"{_threads()} threads after pytest's start (a plugin started one): "
                "forking would leave them behind"
            )
        # Everything the server made moves to the permanent generation: a child's
        # collections, at pytest's session end and in finalization, then skip pytest's
        # heap instead of walking it (and copying every page of it on write), which
        # halves a run.  The test's own objects are made in the child and collected as
        # in a spawned one; only the time finalization spends on pytest's objects, which
        # a program outside pytest does not have, is gone.  With the default policies
        # the examples' verdicts are the same as spawned (README, "Known limitations").
        # No collection first: what the imports left as garbage stays frozen (a few
        # hundred KiB), and the collector, off since main, is on again for the children.
        gc.freeze()
        gc.enable()
    except BaseException as exc:  # the parent falls back to spawn
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        text = f"{type(exc).__name__}: {'; '.join(lines)}"[:400]
        _send(sock, {"error": f"cannot prepare pytest's configuration: {text}"})
        raise SystemExit(0) from None
    _CONFIG.append(config)
    # A child's exit wakes the loop at once (its status is what the parent waits for).
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_w)
    _send(sock, {"ready": os.getpid(), "imported": imported})
    children: Set[int] = set()
    crashed = False  # a child died by a signal: its orphans may reach us late
    next_sweep = time.monotonic() + 1.0
    kept = False
    while True:
        if children and not kept:
            # While the first run goes (its child does without): not on the way to the
            # server's first fork, which a small session waits for.
            gc.disable()  # no collection of what was frozen unexamined
            gc.unfreeze()  # get_objects() leaves out the frozen ones
            _keep_code(gc.get_objects())
            gc.freeze()
            gc.enable()
            kept = True
        ready = select.select([sock.fileno(), wake_r], [], [], 1.0)[0]
        if wake_r in ready:
            try:
                os.read(wake_r, 512)
            except OSError:
                pass
        orphans = time.monotonic() >= next_sweep
        if orphans:
            next_sweep = time.monotonic() + 1.0
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid in children:
                children.discard(pid)
                orphans = True
                crashed = crashed or os.WIFSIGNALED(status)
                try:
                    _send(sock, {"exited": pid, "returncode": _returncode(status)})
                except OSError:  # the parent is gone: end, leaving nothing behind
                    _stop_orphans(children)
                    _leave()
        if orphans:
            _stop_orphans(children)
        if sock.fileno() not in ready:
            continue
        message, fds = _receive(sock)
        if message is None or message.get("op") != "run":
            for fd in fds:
                os.close(fd)
            # Orphans of a child killed by a signal can reach us a while after it was
            # reaped (it was dumping core): then keep looking for a moment.
            for sweep in range(_FINAL_SWEEPS if crashed else 1):
                if sweep:
                    time.sleep(0.01)
                _stop_orphans(children)
            _leave()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)
            sock.close()
            return message, fds
        children.add(pid)
        for fd in fds:
            os.close(fd)
        _send(sock, {"pid": pid})


def _leave() -> NoReturn:
    """End the server.  Its own finalization would only make the parent wait (it walks
    pytest's whole heap): nothing of the user's runs in the server."""
    if "coverage" in sys.modules:  # measured (this project's CI): keep what was measured
        try:
            import coverage

            current = coverage.Coverage.current()
            if current is not None:
                current.stop()
                current.save()
        except Exception:  # measuring must not keep the server alive
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def _stop_orphans(children: Set[int]) -> None:
    """Kill every process that became ours without being a run's child: the leftovers of
    a child that died (whose run has ended, or is ending, with that child's death)."""
    from pytest_daemonexit import processes

    mine = processes.own_children()
    if mine is None:
        me = os.getpid()
        mine = [pid for pid, parent in processes.parents().items() if parent == me]
    for pid in mine:
        if pid not in children:
            processes.kill_tree(pid, group=False)


#: The prepared configuration (set in the server; the forked child uses it).
_CONFIG: List[Any] = []


def _take_streams(stdout_fd: int, stderr_fd: int) -> None:
    """Make the run's files the child's stdout and stderr, including every copy the server
    made of its own (an ``os.dup`` of fd 1 or 2 kept by a plugin)."""
    old = {name: os.fstat(fd) for name, fd in (("out", 1), ("err", 2))}
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        fds = []
    for fd in fds:
        if fd <= 2 or fd in (stdout_fd, stderr_fd):
            continue
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        for name, target in (("out", 1), ("err", 2)):
            if (st.st_dev, st.st_ino) == (old[name].st_dev, old[name].st_ino):
                os.dup2(target, fd)
    os.close(stdout_fd)
    os.close(stderr_fd)


def run_session(config: Any, args: Sequence[str], plugins: Sequence[Any], noconftest: bool) -> int:
    """In the forked child: what ``pytest.main(args)`` does after parsing, on the prepared
    configuration: conftest files, configure, one session, unconfigure."""
    from _pytest.config import Config

    from pytest_daemonexit import pluginfixtures

    node = [a for a in args if not a.startswith("-")][-1:]
    basetemp = next((a.split("=", 1)[1] for a in args if a.startswith("--basetemp=")), None)
    if basetemp is not None:
        config.option.basetemp = basetemp
        config.known_args_namespace.basetemp = basetemp
    overrides = [b for a, b in zip(args, args[1:]) if a == "-o" and b.startswith("cache_dir=")]
    inicache = getattr(config, "_inicache", None)
    if overrides and isinstance(inicache, dict):
        # The run's own pytest cache, as a spawned child has: the server's is shared by
        # every child (and rewriting one file per run waits for its writeback).
        inicache["cache_dir"] = overrides[-1].split("=", 1)[1]
    config.args = list(node)
    config.args_source = Config.ArgsSource.ARGS
    config.known_args_namespace.file_or_dir = list(node)
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None and getattr(capman, "_global_capturing", None) is not None:
        # The server's capture files are shared with every child: start this run's own.
        capman._global_capturing = None
        capman.start_global_capturing()
        capman.suspend_global_capture()
    for plugin in plugins:
        if not isinstance(plugin, str):  # named plugins are already in the configuration
            config.pluginmanager.register(plugin)
    if not noconftest:
        config.known_args_namespace.noconftest = False
        config.option.noconftest = False
        config.pytest_load_initial_conftests(early_config=config)
    pluginfixtures.use_scans()
    status = config.hook.pytest_cmdline_main(config=config)
    return int(status)


def main(argv: Optional[Sequence[str]] = None) -> None:
    import gc

    # Off until the heap is frozen (_serve): the collections that pytest's and the
    # plugins' imports would trigger only walk objects that are about to be frozen, and
    # took a fifth of the server's start.
    gc.disable()
    args = list(sys.argv[1:] if argv is None else argv)
    boot = json.loads(args[0])
    from pytest_daemonexit import child, injection

    # As a child does: die with pytest, and be the subreaper of what the forked children
    # leave when they crash before their own reaper runs (_stop_orphans).
    child._die_with_parent(int(boot.get("parent_pid") or 0))

    # First: pytest's imports register atexit callbacks (logging's, ...) that a spawned
    # child registers after its last-callback marker; the slot keeps that order here.
    injection.reserve_last_atexit()
    sock = socket.socket(fileno=int(boot["control_fd"]))
    server_pid = os.getpid()
    # pytest's imports, the longest part of the start, need nothing from the parent: they
    # run while the parent is still configuring and collecting.
    try:
        import pytest  # noqa: F401
    except BaseException as exc:
        _send(sock, {"error": f"cannot import pytest: {type(exc).__name__}: {exc}"[:400]})
        raise SystemExit(0) from None
    message, fds = _receive(sock)
    for fd in fds:
        os.close(fd)
    if message is None or message.get("op") != "start":
        _leave()  # not needed after all: the parent stopped it
    spec = message["spec"]
    request, fds = _serve(spec, sock)
    # A forked child from here on: this run's descriptors, environment and session.
    os.setsid()
    channel_fd, stdout_fd, stderr_fd = fds
    _take_streams(stdout_fd, stderr_fd)
    os.environ.clear()
    os.environ.update(request.get("env") or {})
    from pytest_daemonexit import processes

    run_tags = os.environ.get(processes.RUN_TAG, "")
    if run_tags:
        # What this child forks without exec keeps the server's environment: the name
        # is how the parent finds it after a crash (processes.tagged).
        processes.name_process(run_tags.split(",")[-1])

    run_spec = dict(request["spec"])
    run_spec["channel_fd"] = channel_fd
    run_spec["parent_pid"] = server_pid
    noconftest = bool(spec.get("user_noconftest"))
    child.run(
        run_spec,
        session=lambda args, plugins: run_session(_CONFIG[0], args, plugins, noconftest),
    )
    # Returning from main: the interpreter finalizes for real, as a spawned child does.
