"""The child's entry point: run one test (or one script), report it, then really finalize.

Started by ``runner.py`` as ``python -X faulthandler -c <bootstrap> SPEC``.  Nothing here
calls ``os._exit``: ``main`` returns and the interpreter goes through ``Py_FinalizeEx``.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

from pytest_daemonexit import channel, childcoverage, injection

if TYPE_CHECKING:
    from pytest_daemonexit.programhooks import ProgramHooks


class ChildReporter:
    """pytest plugin in the child: forwards test and collection reports to the parent."""

    def __init__(
        self, writer: channel.Writer, mark: Any = None, hooks: Optional[ProgramHooks] = None
    ) -> None:
        self.writer = writer
        self.mark = mark
        self.hooks = hooks
        self.config: Any = None

    def pytest_configure(self, config: Any) -> None:
        self.config = config
        config._pytest_daemonexit_child = True
        skip_terminal_summary(config.pluginmanager)

    def _serialize(self, report: Any) -> Dict[str, Any]:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        return dict(data) if data else {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        self.writer.send("report", report=self._serialize(report))

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.writer.send("collect_error", report=self._serialize(report))

    def pytest_runtest_call(self, item: Any) -> None:
        # Post-exit checks look at what the test left in its tmp_path.
        path = getattr(item, "funcargs", {}).get("tmp_path")
        if path is not None:
            self.writer.send("tmp_path", path=str(path))

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        # The child's one test has ended: from here on its threads' errors are the
        # program's to print, as they would be after the test outside pytest, and what
        # stderr gets is judged as the exit's (pytest's own hooks would turn them into
        # warnings nobody sees while its session ends).
        if self.hooks is not None:
            self.hooks.test_ended()
        _flush_std_streams()
        if self.mark is not None:
            self.mark("session_end")

    def pytest_collection_finish(self, session: Any) -> None:
        self.writer.send("collected", nodeids=[item.nodeid for item in session.items])

    def pytest_unconfigure(self, config: Any) -> None:
        _keep_capture_files_open(config)


class _NotCalled:
    """A hook caller that registers implementations as the one it stands for, but calls
    none of them."""

    def __init__(self, caller: Any) -> None:
        self._caller = caller

    def __call__(self, **kwargs: Any) -> List[Any]:
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._caller, name)


def skip_terminal_summary(pluginmanager: Any) -> None:
    """The child's session ends without ``pytest_terminal_summary``: nobody reads the
    child's terminal (the parent reports its results), and plugins import modules there
    that the test never asked for (hypothesis' plugin imports all of hypothesis), which a
    child would then tear down at exit and a fork server import for every child."""
    hook: Any = getattr(pluginmanager, "hook", None)
    caller = getattr(hook, "pytest_terminal_summary", None)
    if caller is not None and not isinstance(caller, _NotCalled):
        hook.pytest_terminal_summary = _NotCalled(caller)


class _ClosedStandIn:
    """What pytest's capture closes at its end instead of its capture file."""

    def close(self) -> None:
        pass


#: pytest's capture files, kept open until the interpreter tears this module down.
_KEPT_FILES: List[Any] = []


def _keep_capture_files_open(config: Any) -> None:
    """pytest's global capture closes its files when the session ends, but a stream the
    test took from ``sys.stdout`` or ``sys.stderr`` while pytest captured (a
    ``logging.StreamHandler`` made in the test) is that file: a thread that writes to it
    at exit would raise "I/O operation on closed file", where in a program outside pytest
    the stream is the real one and the write succeeds.  The files stay open (what is
    written there is lost); pytest still restores the streams and reports its output."""
    capman = config.pluginmanager.getplugin("capturemanager")
    capturing = getattr(capman, "_global_capturing", None)
    for capture in (getattr(capturing, "out", None), getattr(capturing, "err", None)):
        if capture is None:
            continue
        try:
            original = capture.done
            holders = [capture, getattr(capture, "syscapture", None)]
            holders = [h for h in holders if getattr(h, "tmpfile", None) is not None]

            def done(original: Any = original, holders: List[Any] = holders) -> None:
                for holder in holders:
                    _KEPT_FILES.append(holder.tmpfile)
                    holder.tmpfile = _ClosedStandIn()
                original()

            capture.done = done
        except AttributeError:  # another pytest: leave its capture as it is
            continue


def _flush_std_streams() -> None:
    """So that the offsets taken next cover what the test printed (a test may have
    closed or replaced the streams)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _offsets() -> Dict[str, int]:
    out = {}
    for name, fd in (("stdout", 1), ("stderr", 2)):
        try:
            out[name] = os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            pass
    return out


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills us if the parent dies (a killed pytest leaves no child)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        # PR_SET_CHILD_SUBREAPER: orphans of the test's processes (double fork, setsid)
        # become our children, so they can be found and stopped.
        libc.prctl(36, 1)
    except (OSError, AttributeError):
        return
    if parent and os.getppid() != parent:  # it died before the prctl
        os._exit(70)


#: True in a child interpreter: the plugin there only reports, it does not run children.
RUNNING = False


def use_bytecode_cache(prefix: Optional[str]) -> None:
    """Read and write bytecode under ``prefix`` (runner.bytecode_cache_dir), when given.
    Called once pytest is imported: its own modules keep the bytecode installed with them."""
    if prefix:
        sys.pycache_prefix = prefix
        sys.dont_write_bytecode = False


class _WholeFileMarshal:
    """``marshal`` for pytest's assertion rewriter, whose ``marshal.load(file)`` reads a
    cached module a few bytes at a time: nine times slower than loading the file's bytes
    at once (5 ms for hypothesis' ``core.py``; a plugin's lazily imported modules cost
    the fork server 0.1 s).  The same code object either way."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def load(self, file: Any) -> Any:
        return self._real.loads(file.read())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def read_rewritten_bytecode_at_once() -> None:
    """Make pytest read the modules it rewrote (plugins', conftest files, tests) from its
    cache in one read each.  Called once pytest is imported; a pytest whose rewriter
    does not use ``marshal`` that way is left alone."""
    try:
        from _pytest.assertion import rewrite
    except ImportError:
        return
    real = getattr(rewrite, "marshal", None)
    if real is not None and not isinstance(real, _WholeFileMarshal) and hasattr(real, "loads"):
        rewrite.marshal = _WholeFileMarshal(real)  # type: ignore[attr-defined,assignment]


def run(
    spec: Dict[str, Any], session: Optional[Callable[[List[str], List[Any]], int]] = None
) -> None:
    """Run the test (or script) of ``spec``; ``session`` replaces ``pytest.main`` in a child
    forked from a server that prepared pytest's configuration (forkserver.py)."""
    global RUNNING
    RUNNING = True
    childcoverage.start_in_child()  # before the test's modules are imported
    _die_with_parent(int(spec.get("parent_pid") or 0))
    fd = int(spec["channel_fd"])
    os.set_inheritable(fd, False)  # grandchildren must not hold the parent's pipe open
    mark: Any = injection.make_marker(fd)
    threading_actions = True
    quiet: Sequence[str] = ()
    notes: List[str] = []
    if spec.get("plan"):
        # Imported only for a plan: the natural run stays free of its imports.
        from pytest_daemonexit import perturb

        engine = perturb.Engine(spec["plan"], fd, int(spec.get("seed") or 0))
        engine.install()  # may register the atexit callback that must run after all others
        mark = engine.hooks(mark)
        threading_actions = not engine.threading_actions_separate
        quiet = engine.quiet
        notes = engine.notes
    # First atexit registration (but the engine's), so it runs last.
    injection.install_early(mark, quiet, injection.make_reaper(fd))
    writer = channel.Writer(fd)
    for note in notes:
        writer.send("note", text=note)
    fault_file = open(spec["fault_file"], "w", encoding="utf-8")  # noqa: SIM115 - lives until exit
    watchdog = injection.Watchdog(fault_file)
    watchdog.arm(float(spec.get("run_timeout") or 0))
    if sys.version_info < (3, 9):
        # 3.9+ line-buffers stderr even into a file; the same here keeps what the child
        # prints in the phase that printed it.
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    writer.send(
        "start",
        main_thread=threading.get_ident(),
        python=sys.version,
        executable=sys.executable,
        version=list(sys.version_info[:3]),
        dump_signal=injection.DUMP_SIGNAL,
    )
    mark("test")
    try:
        if spec["mode"] == "pytest":
            import pytest

            # From here on the test's modules and conftest files (rewritten by pytest)
            # are compiled once for every run, not once per run.
            use_bytecode_cache(spec.get("pycache_prefix"))
            read_rewritten_bytecode_at_once()
            from pytest_daemonexit import programhooks

            hooks = programhooks.ProgramHooks()
            plugins: List[Any] = [ChildReporter(writer, mark, hooks), hooks]
            plugins += [name for name in spec.get("plugins", ()) if name]
            args = list(spec["args"])
            status = session(args, plugins) if session else pytest.main(args, plugins)
            hooks.restore()
            writer.send("pytest_exit", status=int(status))
        else:
            sys.argv = [spec["args"][0], *spec["args"][1:]]
            try:
                runpy.run_path(spec["args"][0], run_name="__main__")
            except SystemExit as exc:
                writer.send("script_exit", code=repr(exc.code))
                raise
    finally:
        _flush_std_streams()
        writer.send("test_done", offsets=_offsets())
        mark("test_done")
        watchdog.take_over()
        watchdog.arm(float(spec.get("timeout") or 0))
        injection.install_shutdown_markers(mark, threading_actions)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    with open(args[0], encoding="utf-8") as f:
        spec = json.load(f)
    run(spec)


if __name__ == "__main__":
    main()
