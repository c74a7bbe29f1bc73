"""A long run leaks nothing: 500 marked tests, some of them leaving daemon threads and
processes behind, crashing or hanging, and afterwards the pytest process holds no extra
file descriptor, has no zombie child, and nothing is left in the temporary directory or in
the process table.

The pytest under test measures itself: a conftest records its open descriptors when the
session starts and compares them when it finishes."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Dict

import pytest

pytestmark = [
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="checks /proc for descriptors and processes"
    ),
    # 500 child runs: about two minutes of one worker (129 s here).
    pytest.mark.acceptance,
]

TRIVIAL = 490
#: A bound on a hung plugin, far above the two minutes the 500 runs take here.
GUARD_SECONDS = 600

CONFTEST = """
    import json, os, sys, tempfile
    from pathlib import Path

    import pytest

    def _in_child():
        child = sys.modules.get("pytest_daemonexit.child")
        return bool(getattr(child, "RUNNING", False))

    def _fds():
        found = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                found[fd] = os.readlink("/proc/self/fd/" + fd)
            except OSError:
                pass  # the descriptor listdir used, closed by now
        return found

    def _children():
        # Every child of this process with its state: Z is a zombie nobody waited for.
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path("/proc", entry, "stat").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if int(fields[1]) == os.getpid():
                found.append("%s %s %s" % (entry, fields[0].decode(), stat.split()[1].decode()))
        return found

    START = {}

    def pytest_sessionstart(session):
        if not _in_child():
            START["fds"] = _fds()
            START["temps"] = sorted(os.listdir(tempfile.gettempdir()))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(session):
        if _in_child():
            return
        fds = _fds()
        Path(os.environ["LEAKS_REPORT"]).write_text(json.dumps({
            "pid": os.getpid(),
            "fds": sorted(
                fd + " -> " + target
                for fd, target in fds.items()
                if START["fds"].get(fd) != target
            ),
            "children": _children(),
            "temps": sorted(set(os.listdir(tempfile.gettempdir())) - set(START["temps"])),
        }))
"""

SUITE = """
    import os, subprocess, threading, time
    import pytest

    @pytest.mark.daemon_exit
    @pytest.mark.parametrize("n", range({trivial}))
    def test_trivial(n):
        pass

    @pytest.mark.daemon_exit
    def test_daemon_thread_sleeping():
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()

    @pytest.mark.daemon_exit
    def test_daemon_thread_writing(tmp_path):
        def write(f=open(tmp_path / "out", "w")):
            while True:
                f.write("x")
                time.sleep(0.001)
        threading.Thread(target=write, daemon=True).start()

    @pytest.mark.daemon_exit
    def test_subprocess_waited_for():
        subprocess.run(["true"], check=True)

    @pytest.mark.daemon_exit
    def test_subprocess_left_running():
        subprocess.Popen(["sleep", "600"])

    @pytest.mark.daemon_exit
    def test_subprocess_with_pipes_left_running():
        subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    @pytest.mark.daemon_exit
    def test_subprocess_in_its_own_session():
        subprocess.Popen(["sleep", "600"], start_new_session=True)

    @pytest.mark.daemon_exit
    def test_fails():
        assert False

    @pytest.mark.daemon_exit
    def test_crashes_leaving_a_subprocess():
        subprocess.Popen(["sleep", "600"], start_new_session=True)
        os.abort()

    @pytest.mark.daemon_exit(timeout=1)
    def test_hangs_at_exit():
        threading.Thread(target=time.sleep, args=(600,)).start()

    @pytest.mark.daemon_exit
    def test_shell_with_a_background_job_left_running():
        subprocess.Popen(["sh", "-c", "sleep 600 & sleep 600"])
"""


def _tagged(tag: str) -> Dict[int, str]:
    """Live processes whose environment carries ``LEAKS_TAG=tag``, with their command lines."""
    needle = f"LEAKS_TAG={tag}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        state = stat[stat.rfind(b")") + 2 :].split()[0]
        if needle in environ.split(b"\0") and state not in (b"Z", b"X"):
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode("utf-8", "replace")[:200]
    return found


def test_500_marked_tests_leak_no_descriptor_zombie_process_or_temporary_directory(
    run, pytester, monkeypatch
):
    tmp = pytester.path / "tmpdir"
    tmp.mkdir()
    report = pytester.path / "leaks.json"
    tag = uuid.uuid4().hex
    # A temporary directory of its own: other tests create entries in the shared one.
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("LEAKS_REPORT", str(report))
    monkeypatch.setenv("LEAKS_TAG", tag)
    pytester.makeconftest(textwrap.dedent(CONFTEST))
    run.write(SUITE.format(trivial=TRIVIAL))
    # Every child starts a pytest: leave out the plugins that only cost start-up time
    # (hypothesis alone triples it).
    lean = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:pytest_cov"]
    result = pytester.runpytest_subprocess(
        "-p",
        "daemonexit",
        "--daemonexit-native-stacks=off",
        "--daemonexit-policy=baseline",
        "-q",
        *lean,
        timeout=GUARD_SECONDS,
    )
    left: Dict[int, str] = {}
    try:
        # Bounded wait for the kernel to finish what was SIGKILLed just before pytest exited.
        end = time.monotonic() + 10
        left = _tagged(tag)
        while left and time.monotonic() < end:
            time.sleep(0.1)
            left = _tagged(tag)
        assert left == {}, "processes of the run outlived it"
    finally:
        for pid in left:  # do not leave them to the next test
            try:
                os.kill(pid, 9)
            except OSError:
                pass
    # Every test has its result: the crash, the hang and the failure fail, nothing is lost.
    result.assert_outcomes(passed=TRIVIAL + 7, failed=3)
    leaks = json.loads(report.read_text())
    assert leaks["pid"] != os.getpid()
    assert leaks["fds"] == []
    assert leaks["children"] == []
    assert leaks["temps"] == []
    assert sorted(os.listdir(tmp)) == []
