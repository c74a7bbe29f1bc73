"""The engine without pytest's plugin layer: run a script in a child that finalizes."""

from __future__ import annotations

import os
import sys

import pytest

from pytest_daemonexit import judge, phases, runner
from pytest_daemonexit.settings import Settings


def test_phase_markers_arrive_in_shutdown_order(tmp_path):
    script = tmp_path / "app.py"
    script.write_text("print('hello')\n")
    evidence = runner.run(runner.RunRequest.script(str(script), timeout=10))
    assert evidence.returncode == 0
    names = [mark.name for mark in evidence.phases]
    # A script has no pytest session to end.
    assert names == [name for name in phases.PHASE_NAMES if name != "session_end"]
    assert evidence.stdout_test.text == "hello\n"
    assert judge.judge(evidence, Settings()).ok


def test_script_exit_code_and_stderr_after_the_test(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('Exception ignored in: <x>\\n'))\n"
        "sys.exit(3)\n"
    )
    evidence = runner.run(runner.RunRequest.script(str(script)))
    assert evidence.returncode == 3
    verdict = judge.judge(evidence, Settings())
    assert verdict.classes == ("EXIT_CODE", "SHUTDOWN_EXCEPTION")
    assert verdict.findings[1].phase == "atexit"


def test_child_environment_removes_pinned_variables():
    env = runner.child_environment({"PYTHONUNBUFFERED": "1", "PYTHONDEVMODE": "1", "KEEP": "x"})
    assert env == {"KEEP": "x"}


def test_stopped_child_gets_a_dump_and_is_killed(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(
        "import threading, time\n"
        "def stuck():\n"
        "    time.sleep(300)\n"
        "threading.Thread(target=stuck).start()\n"
    )
    evidence = runner.run(runner.RunRequest.script(str(script), timeout=1, native_stacks="off"))
    assert evidence.stopped == "exit_timeout"
    assert evidence.returncode == -9
    verdict = judge.judge(evidence, Settings(timeout=1))
    assert verdict.kind == "HANG"
    assert any(f.function == "stuck" for s in verdict.stacks for f in s.frames)
    assert sys.platform != "linux" or evidence.last_phase == "threading_shutdown"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")
def test_the_child_says_at_interpreter_clear_whether_it_left_a_process(tmp_path):
    # "childless" lets the parent skip looking through every process for the run's tag;
    # a child that left one kills it and says so instead.
    clean = tmp_path / "clean.py"
    clean.write_text("print('hello')\n")
    evidence = runner.run(runner.RunRequest.script(str(clean), timeout=10))
    assert (len(evidence.events("childless")), evidence.events("reaped")) == (1, [])

    pidfile = tmp_path / "pid"
    leaves = tmp_path / "leaves.py"
    leaves.write_text(
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],\n"
        "                     start_new_session=True)\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
    )
    evidence = runner.run(runner.RunRequest.script(str(leaves), timeout=10))
    assert evidence.events("childless") == []
    assert [r["count"] for r in evidence.events("reaped")] == [1]
    # Killed, and collected before the child exited: neither running nor a zombie left
    # for init.
    assert not os.path.exists(f"/proc/{int(pidfile.read_text())}")
