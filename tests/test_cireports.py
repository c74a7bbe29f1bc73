"""What CI reads: the JSON report, JUnit XML properties, GitHub annotations, and options
that cannot work with a child run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from typing import Any, Dict, List

import pytest

SUITE = """
    import atexit, os, pytest

    @pytest.mark.daemon_exit
    def test_exits_badly():
        atexit.register(os._exit, 3)

    @pytest.mark.daemon_exit
    def test_clean():
        pass

    def test_unmarked():
        pass
"""

#: The main thread joins a daemon thread that never ends: a hang whose innermost user
#: frame is the join (line 8).
HANG_AT_EXIT = """
        import atexit, threading, time, pytest

        def spin():
            while True:
                time.sleep(0.01)

        def join_forever(t):
            t.join()

        @pytest.mark.daemon_exit(timeout=1)
        def test_hangs():
            t = threading.Thread(target=spin, daemon=True)
            t.start()
            atexit.register(join_forever, t)
"""

#: Every key of a run record and the types its value may have (the README's schema).
RUN_KEYS: Dict[str, Any] = {
    "nodeid": str,
    "interpreter": dict,
    "policy": str,
    "start": str,
    "seed": int,
    "session_seed": int,
    "round": int,
    "verdict": str,
    "classes": list,
    "phase": str,
    "findings": list,
    "interpreter_bug": (str, type(None)),
    "test_outcome": str,
    "exit": dict,
    "duration": float,
    "exit_seconds": (float, type(None)),
    "plan": list,
    "stderr_excerpt": str,
    "stack_source": (str, type(None)),
    "stacks": list,
    "user_frame": (dict, type(None)),
    "replay": str,
}


def _validate(doc: Dict[str, Any]) -> List[Dict[str, Any]]:
    assert doc["schema"] == "pytest-daemonexit/report"
    assert doc["schema_version"] == 1
    for key in ("plugin_version", "created", "policies", "interpreters", "settings", "summary"):
        assert key in doc, key
    for run in doc["runs"]:
        assert set(run) == set(RUN_KEYS), set(run) ^ set(RUN_KEYS)
        for key, kind in RUN_KEYS.items():
            assert isinstance(run[key], kind), (key, run[key])
        assert set(run["exit"]) == {"returncode", "signal", "status", "stopped"}
        assert set(run["interpreter"]) == {"path", "version"}
        for stack in run["stacks"]:
            for frame in stack["frames"]:
                assert set(frame) == {"file", "line", "function", "user"}
    return list(doc["runs"])


@pytest.mark.parametrize("workers", [0, 2])
def test_json_report_has_one_valid_record_per_run(run, pytester, workers):
    run.write(SUITE)
    args = ["--daemonexit-report=out/report.json", "--daemonexit-seed=77"]
    pytester.mkdir("out")
    result = run(*args, *(["-n", str(workers)] if workers else []))
    result.assert_outcomes(passed=2, failed=1)
    doc = json.loads((pytester.path / "out" / "report.json").read_text(encoding="utf-8"))
    runs = _validate(doc)
    assert doc["complete"] is True and doc["interrupted"] is False
    assert doc["session_seed"] == 77
    assert doc["policies"] == ["baseline"]
    assert doc["summary"] == {"tests": 2, "failed_tests": 1, "runs": 2, "failed_runs": 1}
    by_test = {r["nodeid"]: r for r in runs}
    assert set(by_test) == {"test_it.py::test_exits_badly", "test_it.py::test_clean"}
    bad = by_test["test_it.py::test_exits_badly"]
    assert bad["verdict"] == "EXIT_CODE"
    assert bad["phase"] == "atexit"
    assert bad["exit"]["returncode"] == 3 and bad["exit"]["signal"] is None
    assert bad["interpreter"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert bad["policy"] == "baseline" and bad["session_seed"] == 77
    assert "--daemonexit-seed=77" in bad["replay"]
    assert "--daemonexit-report" not in bad["replay"].split("&&")[0]
    assert by_test["test_it.py::test_clean"]["verdict"] == "ok"
    assert by_test["test_it.py::test_clean"]["exit"]["returncode"] == 0


def test_json_report_keeps_stacks_and_the_user_frame_of_a_hang(run, pytester):
    run.write(HANG_AT_EXIT)
    result = run("--daemonexit-report=report.json")
    result.assert_outcomes(failed=1)
    (record,) = _validate(json.loads((pytester.path / "report.json").read_text()))
    assert record["verdict"] == "HANG"
    assert record["exit"]["stopped"] == "exit_timeout"
    threads = {s["thread_id"]: s for s in record["stacks"]}
    assert len(threads) >= 2
    functions = {f["function"] for s in record["stacks"] for f in s["frames"] if f["user"]}
    assert {"spin", "join_forever"} <= functions
    assert record["user_frame"]["function"] == "join_forever"
    assert record["user_frame"]["file"].endswith("test_it.py")
    assert record["user_frame"]["line"] == 8


def test_junit_xml_carries_the_verdict_as_properties(run, pytester):
    run.write(SUITE)
    result = run("--junitxml=junit.xml", "-n", "2", "--daemonexit-seed=5")
    result.assert_outcomes(passed=2, failed=1)
    root = ET.parse(str(pytester.path / "junit.xml")).getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    props = {
        name: {p.get("name"): p.get("value") for p in case.iter("property")}
        for name, case in cases.items()
    }
    bad = props["test_exits_badly"]
    assert bad["daemonexit.verdict"] == "EXIT_CODE"
    assert bad["daemonexit.phase"] == "atexit"
    assert bad["daemonexit.policy"] == "baseline"
    assert bad["daemonexit.session_seed"] == "5"
    assert int(bad["daemonexit.seed"]) >= 0
    assert bad["daemonexit.interpreter"].startswith(".".join(map(str, sys.version_info[:3])))
    assert bad["daemonexit.exit"] == "exit status 3"
    assert (bad["daemonexit.runs"], bad["daemonexit.failed_runs"]) == ("1", "1")
    assert props["test_clean"]["daemonexit.verdict"] == "ok"
    assert props["test_unmarked"] == {}
    # The tallies travel on the report, not as a property.
    assert not any(name == "daemonexit" for p in props.values() for name in p)


def test_github_annotation_points_at_the_users_frame(run, pytester, monkeypatch):
    run.write(
        HANG_AT_EXIT
        + """
        @pytest.mark.daemon_exit
        def test_exit_status():
            atexit.register(__import__("os")._exit, 4)

        @pytest.mark.daemon_exit
        def test_clean():
            pass
        """
    )
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(pytester.path))
    result = run()
    result.assert_outcomes(failed=2, passed=1)
    lines = [line for line in result.stdout.lines if line.startswith("::")]
    assert len(lines) == 2, lines
    hang, status = sorted(lines, key=lambda line: "test_exit_status" in line)
    assert hang.startswith("::error file=test_it.py,line=8,title=daemon exit%3A HANG in phase ")
    assert "test_it.py::test_hangs" in hang and "%0Areproduce with: " in hang
    # No stack: the annotation goes to the test itself (its decorator line).
    assert status.startswith("::error file=test_it.py,line=16,title=daemon exit%3A EXIT_CODE")


def test_no_annotation_outside_github_actions(run, monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    run.write(SUITE)
    result = run()
    result.assert_outcomes(failed=1, passed=2)
    assert not [line for line in result.stdout.lines if line.startswith("::")]


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("missing-dir/report.json", "its directory * does not exist"),
        (".", "is a directory"),
    ],
)
def test_unwritable_report_path_is_a_usage_error(run, path, problem):
    run.write(SUITE)
    result = run(f"--daemonexit-report={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*--daemonexit-report='{path}': cannot write the report there: {problem}*"]
    )


def test_ctrl_c_leaves_a_valid_report_of_the_finished_runs(pytester):
    startfile = pytester.path / "started"
    pytester.makepyfile(
        test_it=textwrap.dedent(
            f"""
            import time, pytest

            @pytest.mark.daemon_exit
            def test_a_quick():
                pass

            @pytest.mark.daemon_exit
            def test_b_slow():
                open({str(startfile)!r}, "w").close()
                time.sleep(600)
            """
        )
    )

    def default_sigint() -> None:
        # xdist workers ignore SIGINT, and an ignored signal stays ignored across exec.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "daemonexit",
            "--daemonexit-native-stacks=off",
            "--daemonexit-policy=baseline",
            "--daemonexit-report=report.json",
        ],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=default_sigint,
    )
    report = pytester.path / "report.json"

    def finished() -> List[str]:
        # The file is replaced atomically: whenever it exists, it is complete JSON.
        if not report.exists():
            return []
        return [r["nodeid"] for r in json.loads(report.read_text(encoding="utf-8"))["runs"]]

    try:
        end = time.monotonic() + 60
        while not (startfile.exists() and finished()) and time.monotonic() < end:
            time.sleep(0.05)
        assert startfile.exists() and finished(), "the slow test never started"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode("utf-8", "replace")
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, text
    doc = json.loads((pytester.path / "report.json").read_text(encoding="utf-8"))
    runs = _validate(doc)
    assert doc["interrupted"] is True and doc["complete"] is True
    assert [r["nodeid"] for r in runs] == ["test_it.py::test_a_quick"]
    leftovers = [p.name for p in pytester.path.iterdir() if p.name.startswith(".daemonexit-report")]
    assert leftovers == []


def test_debugger_options_skip_marked_tests_with_a_reason(run):
    run.write(SUITE)
    for option in ("--pdb", "--trace"):
        result = run(option, "-rs")
        # The unmarked test runs as usual; marked tests are skipped, saying why.
        result.assert_outcomes(passed=1, skipped=2)
        result.stdout.fnmatch_lines(
            [f"*{option} cannot debug a test that runs in a child interpreter*"]
        )


@pytest.mark.parametrize(
    "options",
    [
        ["-x"],
        ["-k", "exits_badly or unmarked"],
        ["-s"],
        ["--capture=no"],
        ["-p", "no:faulthandler"],
        ["--strict-markers"],
        ["-W", "error"],
        ["-p", "no:cacheprovider"],
    ],
    ids=lambda o: " ".join(o),
)
def test_common_options_keep_verdicts(run, options):
    run.write(SUITE)
    result = run(*options)
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1, result.stdout.str()
    expected_passed = {"-x": None, "-k": 1}.get(options[0], 2)
    if options[0] == "-x":
        assert "stopping after 1 failures" in result.stdout.str()
    else:
        assert outcomes.get("passed") == expected_passed, result.stdout.str()
    result.stdout.fnmatch_lines(["*daemon exit: EXIT_CODE in phase atexit*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_last_failed_reruns_the_marked_test_that_failed_at_exit(run):
    run.write(SUITE)
    run().assert_outcomes(failed=1, passed=2)
    result = run("--lf")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_exits_badly*daemon exit: EXIT_CODE*"])


def test_report_path_from_the_ini_file(run, pytester):
    pytester.makeini("[pytest]\ndaemonexit_report = from-ini.json\n")
    run.write(SUITE)
    run().assert_outcomes(failed=1, passed=2)
    assert os.path.exists(pytester.path / "from-ini.json")
    assert len(_validate(json.loads((pytester.path / "from-ini.json").read_text()))) == 2
