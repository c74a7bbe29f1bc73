"""The examples are the plugin's main job: in one default pytest run every buggy example
fails with its documented verdict, and every fixed twin passes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

#: Buggy example -> the verdict classes its failure starts with (see examples/README.md).
EXPECTED = {
    "test_task_queue.py": "HANG",
    "test_event_sender.py": "HANG",
    "test_log_shipper.py": "FATAL_ERROR",
    "test_job_scheduler.py": "SHUTDOWN_EXCEPTION",
    "test_metrics_client.py": "(SHUTDOWN_EXCEPTION|FATAL_ERROR)",
    "test_heartbeat.py": "FATAL_ERROR",
    "test_session_tracker.py": "SHUTDOWN_EXCEPTION",
    "test_batch_writer.py": "DATA_LOST",
    "test_cache_store.py": "DATA_LOST",
}


def run_examples(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", *args],
        cwd=EXAMPLES,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=600,
        check=False,
    )
    return done.stdout.decode("utf-8", "replace")


def test_every_example_is_in_the_table():
    buggy = {p.name for p in EXAMPLES.glob("test_*.py") if not p.stem.endswith("_fixed")}
    assert buggy == set(EXPECTED)
    for name in buggy:
        assert (EXAMPLES / name.replace(".py", "_fixed.py")).exists(), name


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_one_default_run_fails_every_bug_and_passes_every_fix(start):
    # The same seed in both start modes: forked children must find the same bugs.  One
    # job: under xdist the machine's other core is busy with the other worker already.
    # A shorter exit timeout than the default 10 s: the two hanging examples hang for
    # good, and the fixed twins exit within a fraction of a second, so the verdicts are
    # the default run's, 6 s sooner per hang.
    out = run_examples(
        "-p",
        "daemonexit",
        "--daemonexit-native-stacks=off",
        f"--daemonexit-start={start}",
        "--daemonexit-seed=7",
        "--daemonexit-jobs=1",
        "--daemonexit-timeout=4",
    )
    for module, verdict in EXPECTED.items():
        assert f"FAILED {module}::" in out, out
        twin = module.replace(".py", "_fixed.py")
        assert f"PASSED {twin}::" in out, out
        # The daemonexit summary: test, policy, runs, failed, rate, verdict classes.
        row = rf"{re.escape(module)}::\S+\s+\S+\s+1\s+1\s+100%\s+{verdict}"
        assert re.search(row, out), (module, out[-3000:])
    assert "cannot schedule new futures after interpreter shutdown" in out
    assert "accepted records never reached the file" in out
    assert "the cache's index was never saved" in out


def test_examples_pass_in_process():
    out = run_examples("-p", "no:daemonexit", "-q")
    assert f"{2 * len(EXPECTED)} passed" in out, out


@pytest.mark.acceptance
def test_every_fixed_twin_passes_under_every_policy():
    twins = sorted(p.name for p in EXAMPLES.glob("test_*_fixed.py"))
    out = run_examples(
        "-p", "daemonexit", "--daemonexit-native-stacks=off", "--daemonexit-policy=all", *twins
    )
    assert f"{len(twins)} passed" in out, out
    assert f"{len(twins)} marked tests, {len(twins) * 6} child runs, 0 failed" in out, out
