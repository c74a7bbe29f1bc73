"""Soak: run a mixed suite of hostile marked tests many times under ``-n 2`` and look for
what was left behind.

The suite has a clean test, a crash at exit, a hang at exit, a flood of output, a test
that escapes with a double-forked grandchild in its own session, and a test body that
ignores SIGTERM/SIGINT and hangs.  After every pytest run the script checks the process
table for anything carrying the suite's tag (an environment variable every process of
the suite inherits), and at the end it compares this process's open descriptors and the
engine's temporary directories with the start.

Usage: python benchmarks/soak.py [--sessions N] [--json PATH]

A script, not a test: it prints what it found and exits 1 only if something was left.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

SUITE = """
    import atexit, os, signal, sys, threading, time, pytest

    @pytest.mark.daemon_exit
    def test_clean():
        pass

    @pytest.mark.daemon_exit
    def test_crash_at_exit():
        atexit.register(os.abort)

    @pytest.mark.daemon_exit(timeout=1)
    def test_hang_at_exit():
        threading.Thread(target=time.sleep, args=(600,)).start()

    @pytest.mark.daemon_exit
    def test_flood():
        chunk = b"x" * (1 << 20)
        atexit.register(lambda: [os.write(1, chunk) for _ in range(50)])

    @pytest.mark.daemon_exit
    def test_escaping_grandchild():
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(600)
            os._exit(0)
        os.wait()

    @pytest.mark.daemon_exit(run_timeout=2)
    def test_stubborn_body():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        time.sleep(600)
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


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10, help="pytest runs (10)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers here")
    args = parser.parse_args(argv)

    tag = uuid.uuid4().hex
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    (workdir / "test_soak.py").write_text(textwrap.dedent(SUITE))
    env = {**os.environ, "SOAK_TAG": tag}
    fds, temps = open_fds(), engine_temp_dirs()
    totals: Dict[str, int] = {}
    leftovers: List[int] = []
    seconds: List[float] = []
    for session in range(args.sessions):
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
            totals[key] = totals.get(key, 0) + int(count)
        left = tagged_processes(tag)
        leftovers += left
        for pid in left:  # do not let one session's leftovers pollute the next
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        print(f"session {session + 1}: {out.strip()} ({seconds[-1]:.1f} s, {len(left)} left)")
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result: Dict[str, Any] = {
        "sessions": args.sessions,
        "tests": 6 * args.sessions,
        "outcomes": totals,
        "leftover_processes": len(leftovers),
        "fd_change": open_fds() - fds,
        "engine_temp_dir_change": engine_temp_dirs() - temps,
        "peak_rss_mib_of_any_process": round(peak_mib, 1),
        "median_session_seconds": round(sorted(seconds)[len(seconds) // 2], 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    bad = result["leftover_processes"] or result["fd_change"] or result["engine_temp_dir_change"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
