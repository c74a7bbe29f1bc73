"""Policies from a user's side: choosing them, listing them, adding one, seeds and replay."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from pytest_daemonexit import policies
from pytest_daemonexit.policies import BUILTIN_POLICIES, PolicyError, action

ALWAYS_FAILS_AT_EXIT = """
    import atexit, os, pytest

    @pytest.mark.daemon_exit
    def test_x():
        atexit.register(os._exit, 3)
"""


def _perturbation(out: str) -> str:
    lines = [line for line in out.splitlines() if line.strip().startswith("perturbation:")]
    assert len(lines) == 1, out
    return lines[0]


# --- plans and seeds (pure) ------------------------------------------------------------


@pytest.mark.parametrize("policy", BUILTIN_POLICIES, ids=lambda p: p.name)
def test_the_same_seed_gives_the_same_plan(policy):
    for seed in (0, 1, 2**31):
        assert policy.plan(seed, (3, 11, 7)) == policy.plan(seed, (3, 11, 7))
    for act in policy.plan(5, (3, 9, 18)):
        assert act.phase in policies.INJECTION_PHASES
        assert policies.Action.from_json(act.to_json()) == act


def test_different_seeds_give_different_plans():
    policy = policies.registry()["restore-after-free"]
    plans = {policy.plan(seed, (3, 12, 1)) for seed in range(20)}
    assert len(plans) > 10


def test_a_runs_seed_depends_on_session_seed_test_policy_and_round():
    base = policies.run_seed(1, "t.py::test", "atexit-race", 0)
    assert base == policies.run_seed(1, "t.py::test", "atexit-race", 0)
    assert base != policies.run_seed(2, "t.py::test", "atexit-race", 0)
    assert base != policies.run_seed(1, "t.py::other", "atexit-race", 0)
    assert base != policies.run_seed(1, "t.py::test", "baseline", 0)
    assert base != policies.run_seed(1, "t.py::test", "atexit-race", 1)


def test_bad_actions_say_what_was_expected():
    with pytest.raises(PolicyError, match="unknown phase 'shutdown'; expected one of test_done"):
        action("shutdown", "sleep", seconds=1)
    with pytest.raises(PolicyError, match="action 'sleep' takes seconds, not 'count'"):
        action("atexit", "sleep", count=1)
    with pytest.raises(PolicyError, match="seconds=-1 must be a finite number >= 0"):
        action("atexit", "sleep", seconds=-1)
    with pytest.raises(PolicyError, match="seconds=inf must be a finite number >= 0"):
        action("atexit", "spin", seconds=float("inf"))
    with pytest.raises(PolicyError, match="late_threads cannot act at interpreter_clear"):
        action("interpreter_clear", "late_threads")
    with pytest.raises(PolicyError, match="only c_delay can act at after_finalize"):
        action("after_finalize", "sleep", seconds=1)


def test_select_expands_default_and_all_and_names_unknown_ones():
    table = policies.registry()
    assert [p.name for p in policies.select((), table)] == [
        p.name for p in BUILTIN_POLICIES if p.default
    ]
    assert len(policies.select(("all",), table)) == len(BUILTIN_POLICIES)
    with pytest.raises(PolicyError, match="unknown policy 'nope'; expected one of baseline, "):
        policies.select(("nope",), table)


def test_interpreter_bugs_are_matched_by_version_class_and_evidence():
    table = policies.registry()
    waiting = table["woken-while-waiting"]
    assert waiting.interpreter_bug((3, 9, 18), ("HANG",), "atexit_done").ref == "gh-96387"
    for version in ((3, 8, 18), (3, 10, 13), (3, 11, 7), (3, 13, 0)):
        assert waiting.interpreter_bug(version, ("HANG",), "atexit_done") is None
    # A hang before the runtime finalizes is the test's own, not gh-96387.
    assert waiting.interpreter_bug((3, 9, 18), ("HANG",), "threading_shutdown") is None
    # Native stacks, when taken, must show the hang in drop_gil.
    assert (
        waiting.interpreter_bug((3, 9, 18), ("HANG",), "gc", "", "#0 futex_wait\n#1 take_gil")
        is None
    )
    # A daemon thread's buffered-stdout abort is not the take_gil crash of bpo-39877.
    restore = table["restore-after-free"]
    buffered = "Fatal Python error: could not acquire lock for <_io.BufferedWriter"
    assert restore.interpreter_bug((3, 8, 18), ("FATAL_ERROR",), "finalizing", buffered) is None
    crash = "Fatal Python error: take_gil: NULL tstate"
    assert restore.interpreter_bug((3, 8, 18), ("FATAL_ERROR",), "finalizing", crash) is not None
    assert restore.interpreter_bug((3, 9, 0), ("FATAL_ERROR",), "finalizing", crash) is None


# --- from a user's side ----------------------------------------------------------------


def test_list_policies_describes_every_policy(run):
    result = run("--daemonexit-list-policies", policy=None)
    assert result.ret == 0
    for policy in BUILTIN_POLICIES:
        result.stdout.fnmatch_lines([f"{policy.name}*: {policy.description[:40]}*"])
    result.stdout.fnmatch_lines(
        [
            "woken-while-waiting: *",
            "    models: fix 4, bpo-39984 and bpo-40010*",
            "    phases: atexit_done, interpreter_clear",
            "    CPython: all versions",
            "    interpreter bug gh-96387 on 3.9.x: fixed in 3.11.0*",
        ]
    )
    assert "collected" not in result.stdout.str()


def test_unknown_policy_is_a_usage_error_listing_the_known_ones(run):
    run.write("def test_x(): pass\n")
    result = run("--daemonexit-policy=baseline,nope", policy=None)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*--daemonexit-policy=baseline,nope: unknown policy 'nope'; expected one of "
            "baseline, atexit-race, *acquire-at-finalize (or 'default', 'all')*"
        ]
    )


def test_unknown_policy_in_the_ini_file_names_the_ini_option(run, pytester):
    pytester.makeini("[pytest]\ndaemonexit_policy =\n    atexit-race\n    nope\n")
    run.write("def test_x(): pass\n")
    result = run(policy=None)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option daemonexit_policy=atexit-race,nope: unknown*"])


def test_unknown_policy_in_the_marker_is_a_collection_error(run):
    run.write(
        """
        import pytest

        @pytest.mark.daemon_exit(policies=["baseline", "nope"])
        def test_x():
            pass

        def test_y():
            pass
        """
    )
    result = run(policy=None)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*@pytest.mark.daemon_exit on test_it.py::test_x: policies=*unknown policy 'nope'*"]
    )


def test_marker_policies_override_the_command_line(run):
    run.write(
        """
        import pytest

        @pytest.mark.daemon_exit(policies="atexit-race")
        def test_x():
            import atexit, os
            atexit.register(os._exit, 3)
        """
    )
    result = run("--daemonexit-policy=baseline", policy=None)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*policy: atexit-race (run seed *", "*--daemonexit-policy=atexit-race *"]
    )


def test_conftest_adds_a_policy_and_the_child_carries_out_its_plan(run, pytester):
    # The plan delays the exit past the timeout: only a child that really carries it out
    # ends as a HANG.
    pytester.makeconftest(
        """
        from pytest_daemonexit import Policy, action

        def slow(rng, version):
            return [action("module_teardown", "sleep", seconds=3.0)]

        def pytest_daemonexit_policies(config):
            return [Policy("slow-teardown", "sleeps in module teardown", slow)]
        """
    )
    run.write(
        """
        import pytest

        @pytest.mark.daemon_exit(timeout=1)
        def test_x():
            pass
        """
    )
    result = run("--daemonexit-policy=baseline,slow-teardown", policy=None)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*daemon exit: HANG in phase module_teardown*",
            "*policy: slow-teardown (run seed *",
            "*perturbation: module_teardown: sleep(seconds=3)*",
            "*runs of this test:",
            "*baseline: 1 run, no failure",
            "*slow-teardown: 1 run, 1 failed (100%) HANG; first failing round 0 (run seed *",
        ]
    )
    listed = run("--daemonexit-list-policies", policy=None)
    listed.stdout.fnmatch_lines(
        ["slow-teardown: sleeps in module teardown", "    phases: module_teardown"]
    )


def test_policy_hook_reusing_a_builtin_name_is_a_usage_error(run, pytester):
    pytester.makeconftest(
        """
        from pytest_daemonexit import Policy

        def pytest_daemonexit_policies(config):
            return [Policy("baseline", "mine", lambda rng, version: ())]
        """
    )
    run.write("def test_x(): pass\n")
    result = run(policy=None)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*pytest_daemonexit_policies: policy name 'baseline' is already taken*"]
    )


def test_same_seed_same_schedule_and_the_header_shows_it(run):
    run.write(ALWAYS_FAILS_AT_EXIT)
    first = run("--daemonexit-policy=restore-after-free", "--daemonexit-seed=123", policy=None)
    again = run("--daemonexit-policy=restore-after-free", "--daemonexit-seed=123", policy=None)
    other = run("--daemonexit-policy=restore-after-free", "--daemonexit-seed=124", policy=None)
    first.stdout.fnmatch_lines(["daemonexit: seed=123 policies=restore-after-free *"])
    assert _perturbation(first.stdout.str()) == _perturbation(again.stdout.str())
    assert _perturbation(first.stdout.str()) != _perturbation(other.stdout.str())


def test_seed_last_reuses_the_previous_sessions_seed(run):
    run.write("def test_x(): pass\n")
    missing = run("--daemonexit-seed=last")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(["*--daemonexit-seed=last: no seed of an earlier session*"])
    first = run()
    seed = re.search(r"daemonexit: seed=(\d+)", first.stdout.str()).group(1)
    again = run("--daemonexit-seed=last")
    again.stdout.fnmatch_lines([f"daemonexit: seed={seed} *"])


def test_bad_seed_is_a_usage_error(run):
    run.write("def test_x(): pass\n")
    result = run("--daemonexit-seed=soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--daemonexit-seed='soon': expected a non-negative integer, 'random' or 'last'*"]
    )


def test_the_printed_replay_command_fails_the_same_way(run, pytester):
    run.write(
        """
        import atexit, threading, time, pytest

        @pytest.mark.daemon_exit
        def test_writer(tmp_path):
            f = open(tmp_path / "out", "w")

            def writer():
                while True:
                    f.write("x\\n")
                    time.sleep(0.5)

            threading.Thread(target=writer, daemon=True).start()
            atexit.register(f.close)
        """
    )
    result = run("--daemonexit-policy=atexit-race", policy=None)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    seed_line = next(line for line in out.splitlines() if "policy: atexit-race" in line)
    command = out.splitlines()[out.splitlines().index("reproduce with:") + 1].strip()
    assert "--daemonexit-policy=atexit-race --daemonexit-seed=" in command
    assert command.startswith("cd ")
    directory, _, rest = command[3:].partition(" && ")
    argv = shlex.split(rest)
    replay = subprocess.run(
        argv,
        cwd=shlex.split(directory)[0],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=120,
        check=False,
    )
    again = replay.stdout.decode()
    assert replay.returncode == 1, again
    assert seed_line in again
    assert "SHUTDOWN_EXCEPTION" in again
    assert re.search(r"ValueError: .*closed file", again)


def test_interpreter_bug_can_be_reported_as_xfail(run, pytester):
    # A policy whose known interpreter bug affects every version stands in for a real one
    # (tests/test_acceptance.py meets the real gh-96387 on 3.9).
    pytester.makeconftest(
        """
        from pytest_daemonexit import InterpreterBug, Policy, action

        BUG = InterpreterBug("gh-0", "demo bug", (((3, 0), (4, 0)),), "never",
                             ("EXIT_CODE",), ("atexit",))

        def pytest_daemonexit_policies(config):
            return [Policy("demo", "no perturbation", lambda rng, v: (), bugs=(BUG,))]
        """
    )
    run.write(ALWAYS_FAILS_AT_EXIT)
    failed = run("--daemonexit-policy=demo", policy=None)
    failed.assert_outcomes(failed=1)
    failed.stdout.fnmatch_lines(
        ["*interpreter bug: CPython gh-0 (demo bug); fixed in never; this interpreter lacks*"]
    )
    xfailed = run(
        "--daemonexit-policy=demo", "--daemonexit-interpreter-bugs=xfail", "-rx", policy=None
    )
    xfailed.assert_outcomes(xfailed=1)
    xfailed.stdout.fnmatch_lines(
        [
            "XFAIL *test_x* - daemon exit: EXIT_CODE in phase atexit under policy demo "
            "(CPython bug gh-0)*"
        ]
    )
    bad = run("--daemonexit-interpreter-bugs=maybe")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(
        ["*--daemonexit-interpreter-bugs='maybe': expected one of fail, xfail*"]
    )


def test_correct_background_thread_passes_under_every_policy(run):
    run.write(
        """
        import atexit, queue, threading, pytest

        @pytest.mark.daemon_exit
        def test_worker(tmp_path):
            q = queue.Queue()
            f = open(tmp_path / "out", "w")
            stop = threading.Event()

            def worker():
                while not stop.is_set():
                    try:
                        f.write(q.get(timeout=0.2))
                    except queue.Empty:
                        pass

            t = threading.Thread(target=worker, daemon=True)
            t.start()
            q.put("x\\n")

            def close():
                stop.set()
                t.join()
                f.close()

            atexit.register(close)
        """
    )
    result = run("--daemonexit-policy=all", "-rA", policy=None)
    result.assert_outcomes(passed=1)


def test_readme_policy_table_is_generated_from_the_policies():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert policies.policies_markdown() in readme, (
        "README's policy table is out of date: paste `python -m pytest_daemonexit.policies`"
    )
