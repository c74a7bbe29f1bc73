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
