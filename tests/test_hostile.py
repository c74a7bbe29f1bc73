"""Tests that fight back: processes that hide or ignore signals must still be stopped, and
nothing the test started may outlive the run (checked in the process table)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="checks the process table in /proc"
)


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie waiting for init to reap it does not count."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2 :].split()[0]
    return state not in (b"Z", b"X")


def _gone(pid: int, within: float = 10.0) -> bool:
    # A bound on how long to wait for the kernel, not a timing assertion.
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


ESCAPES = """
    import os, sys, time, pytest

    PIDFILE = {pidfile!r}

    def escape():
        # Double fork and a new session: the grandchild is nobody's child and in no
        # process group of ours.
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                with open(PIDFILE, "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(600)
            os._exit(0)
        os.wait()
        for _ in range(200):
            if os.path.exists(PIDFILE) and open(PIDFILE).read():
                break
            time.sleep(0.01)

    @pytest.mark.daemon_exit
    def test_leaves_a_process_behind():
        escape()

    @pytest.mark.daemon_exit(run_timeout=2)
    def test_hangs_and_ignores_signals():
        import signal
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        escape()
        time.sleep(600)
"""


@pytest.mark.parametrize("test", ["test_leaves_a_process_behind", "test_hangs_and_ignores_signals"])
def test_no_process_the_test_started_survives(run, pytester, test):
    pidfile = pytester.path / f"{test}.pid"
    run.write(ESCAPES.format(pidfile=str(pidfile)))
    # The run fixture fails the test if pytest itself does not end within its guard.
    result = run(f"test_it.py::{test}")
    pid = int(pidfile.read_text())
    try:
        assert _gone(pid), f"pid {pid} that {test} started is still running"
    finally:
        if _alive(pid):
            os.kill(pid, 9)
    if test == "test_hangs_and_ignores_signals":
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*HANG*run_timeout=2 s*"])
    else:
        result.assert_outcomes(passed=1)


REAPED = """
    import atexit, os, subprocess, sys, time, pytest

    @pytest.mark.daemon_exit
    def test_leaves_two_running_and_fails_at_exit():
        for _ in range(2):
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        def broken():
            raise RuntimeError("flush failed at exit")
        atexit.register(broken)

    @pytest.mark.daemon_exit
    def test_leaves_nothing_and_fails_at_exit():
        def broken():
            raise RuntimeError("flush failed at exit")
        atexit.register(broken)
"""


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_the_child_kills_what_the_test_left_running_and_says_so(run, start):
    run.write(REAPED)
    result = run(f"--daemonexit-start={start}")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    # One note, for the test that left two processes; none for the other.
    assert out.count("process(es) the test started were still running") == 1
    assert "2 process(es) the test started were still running at interpreter clear" in out


ABRUPT = """
    import os, signal, sys, pytest

    @pytest.mark.daemon_exit
    def test_os_exit():
        os._exit(3)

    @pytest.mark.daemon_exit
    def test_sys_exit():
        sys.exit(2)

    @pytest.mark.daemon_exit
    def test_abort():
        os.abort()

    @pytest.mark.daemon_exit
    def test_sigkill():
        os.kill(os.getpid(), signal.SIGKILL)

    @pytest.fixture
    def forked():
        pid = os.fork()
        yield pid

    @pytest.mark.daemon_exit
    def test_fork_in_a_fixture(forked):
        # Both processes go on running the test and pytest; only the child's own reports
        # and markers count.
        pass

    @pytest.mark.daemon_exit
    def test_after_them_all():
        pass
"""


def test_abrupt_ends_get_clear_verdicts_and_lose_no_other_result(run):
    run.write(ABRUPT)
    result = run("-rA")
    result.assert_outcomes(passed=2, failed=4)
    out = result.stdout.str()
    assert "PASSED test_it.py::test_after_them_all" in out
    assert "PASSED test_it.py::test_fork_in_a_fixture" in out
    result.stdout.fnmatch_lines(
        [
            "FAILED test_it.py::test_os_exit - *",
            "FAILED test_it.py::test_sys_exit - SystemExit: 2",
            "FAILED test_it.py::test_abort - *",
            "FAILED test_it.py::test_sigkill - *",
        ],
        consecutive=False,
    )
    assert "the child ended with exit status 3" in out
    assert "killed by SIGABRT (signal 6)" in out
    assert "killed by SIGKILL (signal 9)" in out


FLOOD = """
    import os, sys, pytest

    CHUNK = b"x" * (1 << 20)

    @pytest.mark.daemon_exit(exit_code=7)
    def test_floods(capfd):
        import atexit
        def flood():
            for _ in range({mb}):
                os.write(1, CHUNK)
                os.write(2, CHUNK[:1024])
            os._exit(9)  # a bad exit, so that the report shows what was kept
        atexit.register(flood)
"""


def test_a_flood_of_output_keeps_the_parent_small(run):
    import resource

    run.write(FLOOD.format(mb=200))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the child ended with exit status 9, expected exit status 7*"])
    # 200 MB went to stdout and 200 KB to stderr; the parent keeps head and tail only.
    assert "bytes left out by pytest-daemonexit" in result.stdout.str()
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kib < 150 * 1024 or peak_kib == before, f"a process peaked at {peak_kib} KiB"


def test_ctrl_c_stops_the_children_and_pytest_reports_the_interrupt(pytester, monkeypatch):
    import signal
    import subprocess
    import textwrap

    pidfile = pytester.path / "child.pid"
    pytester.makepyfile(
        test_it=textwrap.dedent(
            f"""
            import os, time, pytest

            @pytest.mark.daemon_exit
            def test_slow():
                with open({str(pidfile)!r}, "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(600)
            """
        )
    )

    def default_sigint() -> None:
        # xdist workers ignore SIGINT, and an ignored signal stays ignored across exec.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "daemonexit", "--daemonexit-native-stacks=off"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=default_sigint,
    )
    try:
        end = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < end:
            time.sleep(0.05)
        child = int(pidfile.read_text())
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode("utf-8", "replace")
    assert "KeyboardInterrupt" in text, text
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, text
    assert _gone(child), f"the child {child} survived Ctrl-C"


def test_a_hang_after_faulthandler_is_gone_is_still_a_hang(run):
    run.write(
        """
        import sys, time, pytest

        @pytest.mark.daemon_exit(timeout=1)
        def test_x():
            def hook(event, args, _sleep=time.sleep):
                if event == "cpython.PyInterpreterState_Clear":
                    _sleep(600)
            sys.addaudithook(hook)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    # The program's own hook runs before the plugin's interpreter_clear marker, so the
    # last phase reported is module_teardown; the dump signal must not kill the child.
    result.stdout.fnmatch_lines(
        [
            "*daemon exit: HANG in phase module_teardown*",
            "*exit: killed by SIGKILL (signal 9) (stopped by pytest-daemonexit)",
            "*stacks: faulthandler produced no dump*",
        ]
    )


def test_a_child_that_blocks_every_signal_is_still_stopped(run):
    run.write(
        """
        import signal, time, pytest

        @pytest.mark.daemon_exit(timeout=1)
        def test_x():
            import atexit
            def stubborn():
                signal.pthread_sigmask(signal.SIG_BLOCK, range(1, signal.NSIG))
                time.sleep(600)
            atexit.register(stubborn)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*daemon exit: HANG in phase atexit*",
            "*exit: killed by SIGKILL (signal 9) (stopped by pytest-daemonexit)",
        ]
    )


CRASH_WITH_AN_ESCAPED_GRANDCHILD = """
    import ctypes, os, time, pytest

    PIDFILE = {pidfile!r}

    @pytest.mark.daemon_exit
    def test_crashes():
        if os.fork() == 0:
            # A new session: out of the child's process group, so only the child (a
            # subreaper) knew it, and the child dies before its reaper runs.
            os.setsid()
            with open(PIDFILE, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(600)
            os._exit(0)
        for _ in range(500):
            if os.path.exists(PIDFILE) and open(PIDFILE).read():
                break
            time.sleep(0.01)
        {crash}
"""

CRASHES = {
    "abort": "os.abort()",
    "segv": "ctypes.string_at(0)",
    "os_exit": "os._exit(5)",
}


@pytest.mark.parametrize("crash", sorted(CRASHES))
def test_a_crash_before_interpreter_clear_leaves_no_grandchild(run, pytester, crash):
    pidfile = pytester.path / "grandchild.pid"
    run.write(CRASH_WITH_AN_ESCAPED_GRANDCHILD.format(pidfile=str(pidfile), crash=CRASHES[crash]))
    result = run("-rA")
    pid = int(pidfile.read_text())
    try:
        assert _gone(pid), f"the grandchild {pid} survived the child's crash ({crash})"
    finally:
        if _alive(pid):
            os.kill(pid, 9)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["FAILED test_it.py::test_crashes - *"])


CAPTURED_FLOOD = """
    import os, pytest

    @pytest.mark.daemon_exit
    def test_floods_while_captured():
        junk = bytes(range(256)) * 4096  # 1 MiB, half of it not UTF-8
        for _ in range(16):
            os.write(1, junk)
            os.write(2, junk)
        assert False, "shows the captured output"
"""

PARENT_PEAK = """
    import sys

    def pytest_sessionfinish(session):
        child = sys.modules.get("pytest_daemonexit.child")
        if not getattr(child, "RUNNING", False):  # the parent, not the child
            # VmHWM, not ru_maxrss: that one keeps the peak of whatever process exec'd
            # this one (here an xdist worker that may have grown large).
            with open("/proc/self/status") as status:
                peak = [line.split()[1] for line in status if line.startswith("VmHWM:")]
            with open({path!r}, "w") as f:
                f.write(peak[0])
"""


def test_a_flood_while_pytest_captures_it_keeps_the_parent_small(run, pytester):
    import textwrap

    # The child's reports carry what pytest captured: 32 MB here, several times that as
    # JSON.  The parent must neither hold it all nor take quadratic time to read it.
    peak = pytester.path / "parent-peak"
    pytester.makeconftest(textwrap.dedent(PARENT_PEAK.format(path=str(peak))))
    run.write(CAPTURED_FLOOD)
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: shows the captured output",
            "*Captured stdout call*",
            "*characters left out by pytest-daemonexit ...]",
            "*Captured stderr call*",
            "*characters left out by pytest-daemonexit ...]",
        ]
    )
    peak_kib = int(peak.read_text())
    assert peak_kib < 150 * 1024, f"the parent peaked at {peak_kib} KiB"
