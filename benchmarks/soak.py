"""Soak: run a mixed suite of hostile marked tests many times under ``-n 2`` and look for
what was left behind.

The suite has clean tests, crashes (abort at exit, a segfault in the body, ``os._exit``, a
crash that leaves a grandchild in a session of its own), hangs (at exit, and a body that
ignores SIGTERM/SIGINT), floods of output and forking tests (a fork that goes on running
pytest, a double-forked grandchild in its own session).

A conftest in the suite's directory measures the pytest processes that run the children
(the xdist workers, parents of the children) from the inside: their open descriptors at
session start and finish, their zombie and live children at the end, their peak memory;
the controller counts the verdicts.
After every pytest run the script checks the process table for anything carrying the
suite's tag (an environment variable every process of the suite inherits) and the
suite's private temporary directory for entries; at the end it compares the engine's
``daemonexit-*`` directories in the system temporary directory with the start.

Usage: python benchmarks/soak.py [--sessions N] [--json PATH]

A script, not a test: it prints what it found and exits 1 only if something was left or a
test had no result.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, Counter, Dict, List, Optional

SUITE = """
    import atexit, ctypes, os, signal, sys, threading, time, pytest

    @pytest.mark.daemon_exit
    @pytest.mark.parametrize("n", range(3))
    def test_clean(n):
        pass

    @pytest.mark.daemon_exit
    def test_clean_with_a_daemon_thread():
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()

    @pytest.mark.daemon_exit
    def test_crash_at_exit():
        atexit.register(os.abort)

    @pytest.mark.daemon_exit
    def test_segfault_in_the_body():
        ctypes.string_at(0)

    @pytest.mark.daemon_exit
    def test_os_exit_in_the_body():
        os._exit(3)

    @pytest.mark.daemon_exit
    def test_crash_leaving_a_grandchild_in_its_own_session():
        if os.fork() == 0:
            os.setsid()
            time.sleep(600)
            os._exit(0)
        time.sleep(0.05)
        os.abort()

    @pytest.mark.daemon_exit(timeout=1)
    def test_hang_at_exit():
        threading.Thread(target=time.sleep, args=(600,)).start()

    @pytest.mark.daemon_exit(run_timeout=2)
    def test_stubborn_body():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        time.sleep(600)

    @pytest.mark.daemon_exit
    def test_flood_at_exit():
        chunk = b"x" * (1 << 20)
        atexit.register(lambda: [os.write(1, chunk) for _ in range(50)])

    @pytest.mark.daemon_exit
    def test_binary_flood_on_stderr():
        junk = bytes(range(256)) * 4096
        for _ in range(20):
            os.write(2, junk)

    @pytest.mark.daemon_exit
    def test_fork_that_goes_on():
        os.fork()  # both processes run the rest of the test and of pytest

    @pytest.mark.daemon_exit
    def test_escaping_grandchild():
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(600)
            os._exit(0)
        os.wait()
"""
TESTS = 14

CONFTEST = """
    import json, os, re, sys
    from pathlib import Path

    import pytest

    OUT = Path(os.environ["SOAK_OUT"])
    VERDICT = re.compile(r"daemon exit: ([A-Z_, ]+) in phase")
    START = {}
    RESULTS = {}

    def _role():
        child = sys.modules.get("pytest_daemonexit.child")
        if getattr(child, "RUNNING", False):
            return None  # a child run by the plugin: not measured
        return os.environ.get("PYTEST_XDIST_WORKER", "controller")

    def _fds():
        found = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                found[fd] = os.readlink("/proc/self/fd/" + fd)
            except OSError:
                pass
        return found

    def _children():
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
                found.append([int(entry), fields[0].decode()])
        return found

    def _peak_kib():
        # VmHWM: ru_maxrss would keep the peak of the process that exec'd this one.
        with open("/proc/self/status") as status:
            return [int(line.split()[1]) for line in status if line.startswith("VmHWM:")][0]

    def pytest_sessionstart(session):
        if _role() is not None:
            START["fds"] = _fds()

    def pytest_runtest_logreport(report):
        if _role() != "controller":
            return
        outcome = RESULTS.setdefault(report.nodeid, {"failed": False, "classes": []})
        if report.failed:
            outcome["failed"] = True
            found = VERDICT.search(str(report.longrepr))
            if found:
                outcome["classes"] += [c.strip() for c in found.group(1).split(",")]

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(session):
        role = _role()
        if role is None:
            return
        # The workers run the children; the controller only has its workers and their
        # pipes, which xdist is still closing now.
        parent = role != "controller"
        now = _fds() if parent else START["fds"]
        children = _children() if parent else []
        (OUT / ("%s-%d.json" % (role, os.getpid()))).write_text(json.dumps({
            "role": role,
            "fds_opened": sorted(
                "%s -> %s" % (fd, target)
                for fd, target in now.items() if START["fds"].get(fd) != target
            ),
            "zombies": [pid for pid, state in children if state == "Z"],
            "live_children": [pid for pid, state in children if state != "Z"],
            "peak_rss_kib": _peak_kib(),
            "results": RESULTS,
        }))
"""

_OUTCOMES = re.compile(r"(\d+) (passed|failed|error|errors)")


def tagged_processes(tag: str) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        state = stat[stat.rfind(b")") + 2 :].split()[0]
        if f"SOAK_TAG={tag}".encode() in environ.split(b"\0") and state not in (b"Z", b"X"):
            found.append(int(entry))
    return found


def engine_temp_dirs() -> int:
    return len(list(Path(tempfile.gettempdir()).glob("daemonexit-*")))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10, help="pytest runs (10)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers here")
    args = parser.parse_args(argv)

    tag = uuid.uuid4().hex
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    (workdir / "test_soak.py").write_text(textwrap.dedent(SUITE))
    (workdir / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    private_tmp, measured = workdir / "tmp", workdir / "measured"
    temps = engine_temp_dirs()
    outcomes: Counter[str] = collections.Counter()
    verdicts: Counter[str] = collections.Counter()
    leftover_processes: List[int] = []
    leftover_temps: List[str] = []
    fds_opened: List[str] = []
    zombies: List[int] = []
    live_children: List[int] = []
    without_result: List[str] = []
    peak_worker_kib = peak_controller_kib = 0
    seconds: List[float] = []
    for session in range(args.sessions):
        for path in (private_tmp, measured):
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
        env = {
            **os.environ,
            "SOAK_TAG": tag,
            "SOAK_OUT": str(measured),
            # Its own temporary directory: anything left in it is a leak.
            "TMPDIR": str(private_tmp),
        }
        start = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "daemonexit",
                "-n",
                "2",
                "-q",
                "-p",
                "no:cacheprovider",
                # Start-up cost of every child; nothing in the suite uses them.
                "-p",
                "no:hypothesispytest",
                "-p",
                "no:pytest_cov",
                "--daemonexit-policy=baseline",
                "--daemonexit-native-stacks=off",
                f"--basetemp={workdir / 'basetemp'}",
                "test_soak.py",
            ],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=600,
            check=False,
        )
        seconds.append(time.monotonic() - start)
        out = done.stdout.decode("utf-8", "replace").splitlines()[-1]
        for count, outcome in _OUTCOMES.findall(out):
            key = "errors" if outcome.startswith("error") else outcome
            outcomes[key] += int(count)
        # Bounded wait for the kernel to finish what was SIGKILLed as pytest exited.
        end = time.monotonic() + 5
        left = tagged_processes(tag)
        while left and time.monotonic() < end:
            time.sleep(0.1)
            left = tagged_processes(tag)
        leftover_processes += left
        for pid in left:  # do not let one session's leftovers pollute the next
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        leftover_temps += [f"session {session + 1}: {p}" for p in sorted(os.listdir(private_tmp))]
        results: Dict[str, Any] = {}
        for path in sorted(measured.glob("*.json")):
            data = json.loads(path.read_text())
            fds_opened += [f"{data['role']}: {fd}" for fd in data["fds_opened"]]
            zombies += data["zombies"]
            live_children += data["live_children"]
            if data["role"] == "controller":
                peak_controller_kib = max(peak_controller_kib, data["peak_rss_kib"])
                results.update(data["results"])
            else:
                peak_worker_kib = max(peak_worker_kib, data["peak_rss_kib"])
        for result in results.values():
            # One key per test: its verdict classes, or how it ended without one.
            classes = ",".join(dict.fromkeys(result["classes"]))
            verdicts[classes or ("test failed" if result["failed"] else "passed")] += 1
        if len(results) != TESTS:
            without_result.append(f"session {session + 1}: {len(results)} of {TESTS} tests")
        print(
            f"session {session + 1}: {out.strip()} ({seconds[-1]:.1f} s, "
            f"{len(left)} processes left)",
            flush=True,
        )
    shutil.rmtree(workdir, ignore_errors=True)
    peak_any_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report: Dict[str, Any] = {
        "sessions": args.sessions,
        "tests": TESTS * args.sessions,
        "child_runs": TESTS * args.sessions,  # --daemonexit-policy=baseline: one run each
        "outcomes": dict(outcomes),
        "tests_by_verdict": dict(sorted(verdicts.items())),
        "tests_without_result": without_result,
        "leftover_processes": leftover_processes,
        "leftover_temp_entries": leftover_temps,
        "parent_fds_opened_and_not_closed": fds_opened,
        "parent_zombies": zombies,
        "parent_live_children_at_finish": live_children,
        "engine_temp_dir_change": engine_temp_dirs() - temps,
        "peak_rss_mib_xdist_worker": round(peak_worker_kib / 1024, 1),
        "peak_rss_mib_controller": round(peak_controller_kib / 1024, 1),
        "peak_rss_mib_of_any_process": round(peak_any_kib / 1024, 1),
        "median_session_seconds": round(sorted(seconds)[len(seconds) // 2], 1),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    bad = any(
        report[key]
        for key in (
            "tests_without_result",
            "leftover_processes",
            "leftover_temp_entries",
            "parent_fds_opened_and_not_closed",
            "parent_zombies",
            "parent_live_children_at_finish",
            "engine_temp_dir_change",
        )
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
