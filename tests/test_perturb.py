"""The child-side actions, one at a time, through the engine and a real child."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import pytest

from pytest_daemonexit import judge, runner
from pytest_daemonexit.policies import Action, action
from pytest_daemonexit.settings import Settings


def _run(tmp_path: Path, source: str, plan: Sequence[Action]) -> runner.Evidence:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(source))
    return runner.run(
        runner.RunRequest.script(
            str(script), plan=tuple(plan), seed=1, timeout=10, native_stacks="off"
        )
    )


WAITS = {
    "time.sleep": "time.sleep(30)",
    "Event.wait": "threading.Event().wait(30)",
    "Condition.wait": "c = threading.Condition()\n        with c:\n            c.wait(30)",
    "Queue.get": "try:\n            queue.Queue().get(timeout=30)\n"
    "        except queue.Empty:\n            pass",
    "Thread.join": "t = threading.Thread(target=time.sleep, args=(60,), daemon=True)\n"
    "        t.start()\n        t.join(30)",
    "selector": "s = selectors.DefaultSelector()\n        a, b = socket.socketpair()\n"
    "        s.register(a, selectors.EVENT_READ)\n        s.select(30)",
}

PERIODIC_WORKER = """
import os, queue, selectors, socket, threading, time

def worker():
    while True:
        {wait}
        os.write(2, b"next iteration\\n")

threading.Thread(target=worker, daemon=True).start()
time.sleep(0.05)
"""


@pytest.mark.parametrize("kind", sorted(WAITS))
def test_warp_ends_a_daemon_threads_timed_wait(tmp_path, kind):
    source = PERIODIC_WORKER.replace("{wait}", WAITS[kind])
    natural = _run(tmp_path, source, ())
    assert "next iteration" not in natural.stderr_exit.text
    warped = _run(
        tmp_path,
        source,
        [action("atexit_done", "warp"), action("atexit_done", "sleep", seconds=0.3)],
    )
    assert "next iteration" in warped.stderr_exit.text, warped.stderr_exit.text
    # It ran while the interpreter was still intact: before the runtime was finalizing.
    offset = warped.stderr_exit.start + warped.stderr_exit.text.index("next iteration")
    assert warped.phase_at(offset) == "atexit_done"
    assert judge.judge(warped, Settings()).ok


def test_warp_leaves_the_main_thread_and_non_daemon_threads_alone(tmp_path):
    source = """
    import threading, time

    def joined():
        start = time.monotonic()
        time.sleep(0.5)
        print(f"non-daemon slept {time.monotonic() - start >= 0.5}")

    threading.Thread(target=joined).start()
    start = time.monotonic()
    time.sleep(0.3)
    print(f"main slept {time.monotonic() - start >= 0.3}")
    """
    evidence = _run(
        tmp_path, source, [action("test_done", "warp"), action("threading_shutdown", "warp")]
    )
    out = evidence.stdout_test.text + evidence.stdout_exit.text
    assert "main slept True" in out
    assert "non-daemon slept True" in out


def test_waking_blocked_threads_is_harmless_to_correct_code(tmp_path):
    # PEP 475: every interrupted call is retried; nothing may surface in the program.
    source = """
    import os, socket, threading, time

    r, w = os.pipe()
    a, b = socket.socketpair()
    lock = threading.Lock()
    lock.acquire()
    done = []

    def reader():
        done.append(os.read(r, 1))

    def receiver():
        done.append(a.recv(1))

    def locker():
        done.append(lock.acquire(timeout=5))

    for target in (reader, receiver, locker):
        threading.Thread(target=target, daemon=True).start()
    time.sleep(0.05)
    """
    wakes = [action("test_done", "wake"), action("test_done", "sleep", seconds=0.05)] * 5
    evidence = _run(tmp_path, source, wakes)
    assert evidence.returncode == 0
    assert evidence.stderr_exit.text == ""
    assert judge.judge(evidence, Settings()).ok


def test_after_finalize_delay_runs_after_the_interpreter_is_gone(tmp_path):
    evidence = _run(tmp_path, "print('hi')\n", [action("after_finalize", "c_delay", seconds=0.4)])
    assert evidence.returncode == 0
    last = evidence.phases[-1]
    assert last.name == "interpreter_clear"
    assert evidence.exit_seconds is not None and evidence.exit_seconds >= 0.4


def test_quiet_leaves_the_early_finalization_markers_out(tmp_path):
    evidence = _run(tmp_path, "pass\n", [action("atexit_done", "quiet")])
    names = [m.name for m in evidence.phases]
    assert names[-2:] == ["atexit_done", "interpreter_clear"]


def test_wrapped_waits_lose_no_notification(tmp_path):
    # The main thread holds the condition's lock across the waiter's slice boundary and
    # then notifies: the daemon's wait must see it (and an Event its set()).
    source = """
    import threading, time

    cond = threading.Condition()
    result = {}

    def waiter():
        with cond:
            result["cond"] = cond.wait(5.0)

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    time.sleep(0.02)
    with cond:
        time.sleep(0.1)
        cond.notify()
    t.join()

    missed = 0
    for i in range(20):
        event = threading.Event()
        seen = []
        w = threading.Thread(target=lambda: seen.append(event.wait(5.0)), daemon=True)
        w.start()
        end = time.monotonic() + 0.045 + (i % 10) * 0.001
        while time.monotonic() < end:
            pass
        event.set()
        w.join()
        missed += not seen[0]
    print(f"cond={result['cond']} missed={missed}")
    """
    evidence = _run(
        tmp_path, source, [action("test_done", "starve", share=0.0, low=0.001, high=0.002, cap=0)]
    )
    assert "cond=True missed=0" in evidence.stdout_test.text, evidence.stdout_test.text


def test_a_forked_process_that_finalizes_does_not_end_the_run(tmp_path):
    # Its phase markers must not be taken for the child's own.
    source = """
    import os, time

    if os.fork() == 0:
        pass  # the forked copy ends normally: atexit, finalization, phase markers
    else:
        time.sleep(1.0)
        os.wait()
    """
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(source))
    evidence = runner.run(runner.RunRequest.script(str(script), timeout=0.3, native_stacks="off"))
    assert evidence.stopped is None
    assert evidence.returncode == 0
    assert judge.judge(evidence, Settings(timeout=0.3)).ok
