"""Rounds, hunting, the summary table and post-exit checks, from a user's side."""

from __future__ import annotations

import re

import pytest

# Each run appends to a counter file outside the child's temporary directories; the exit
# fails on the runs listed in FAIL_ON, so the outcome of every round is known in advance.
COUNTED = """
    import atexit, os, pytest

    COUNTER = {counter!r}
    FAIL_ON = {fail_on!r}

    @pytest.mark.daemon_exit
    def test_x():
        with open(COUNTER, "a") as f:
            f.write("run\\n")
        with open(COUNTER) as f:
            n = len(f.readlines())
        if n in FAIL_ON:
            atexit.register(os._exit, 3)
"""


def _counted(run, pytester, fail_on):
    # The counter numbers runs in the order they start: tests using it run one job at a
    # time (with more, runs start concurrently and in any order).
    counter = pytester.path / "counter.txt"
    run.write(COUNTED.format(counter=str(counter), fail_on=tuple(fail_on)))
    return counter


def test_rounds_give_each_policy_a_failure_rate(run, pytester):
    counter = _counted(run, pytester, fail_on=(2, 4))
    result = run("--daemonexit-rounds=4", "--daemonexit-jobs=1")
    result.assert_outcomes(failed=1)
    assert len(counter.read_text().splitlines()) == 4
    result.stdout.fnmatch_lines(
        [
            "*runs of this test:",
            "*baseline: 4 runs, 2 failed (50%) EXIT_CODE; first failing round 1 (run seed *",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*= daemonexit =*",
            "test *policy*runs*failed*rate*verdicts*first failing seed",
            "test_it.py::test_x*baseline*4*2*50%*EXIT_CODE*(round 1)",
            "1 marked test, 4 child runs, 2 failed; session seed *",
        ]
    )
    # The replay command repeats the failing round alone.
    replay = result.stdout.lines[result.stdout.lines.index("reproduce with:") + 1]
    assert "--daemonexit-rounds=1 --daemonexit-first-round=1" in replay


def test_a_failing_policy_stops_the_policies_after_it(run, pytester):
    counter = _counted(run, pytester, fail_on=(1,))
    # One job: with more, the later policy's run may already have started (and its result
    # is discarded); the counter counts started runs.
    result = run(
        "--daemonexit-policy=baseline,atexit-race", "-v", "--daemonexit-jobs=1", policy=None
    )
    result.assert_outcomes(failed=1)
    assert len(counter.read_text().splitlines()) == 1
    result.stdout.fnmatch_lines(["1 marked test, 1 child run, 1 failed; session seed *"])


def test_until_fail_hunts_across_policies_and_stops_at_the_first_failure(run, pytester):
    counter = _counted(run, pytester, fail_on=(5,))
    result = run(
        "--daemonexit-until-fail=10",
        "--daemonexit-policy=baseline,atexit-race",
        "--daemonexit-jobs=1",
        policy=None,
    )
    result.assert_outcomes(failed=1)
    assert len(counter.read_text().splitlines()) == 5
    result.stdout.fnmatch_lines(
        [
            "*baseline: 3 runs, 1 failed (33%) EXIT_CODE; first failing round 2 (run seed *",
            "*atexit-race: 2 runs, no failure",
        ]
    )
    result.stdout.fnmatch_lines(["1 marked test, 5 child runs, 1 failed; session seed *"])


def test_until_fail_passes_when_the_hunt_finds_nothing(run, pytester):
    counter = _counted(run, pytester, fail_on=(5,))
    result = run("--daemonexit-until-fail=3", "--daemonexit-jobs=1")
    result.assert_outcomes(passed=1)
    assert len(counter.read_text().splitlines()) == 3
    result.stdout.fnmatch_lines(["test_it.py::test_x*baseline*3*0*0%*"])


def test_summary_lists_failing_tests_only_unless_verbose(run):
    run.write(
        """
        import atexit, os, pytest

        @pytest.mark.daemon_exit
        def test_clean():
            pass

        @pytest.mark.daemon_exit
        def test_bad():
            atexit.register(os._exit, 3)
        """
    )
    quiet = run()
    quiet.assert_outcomes(passed=1, failed=1)
    assert "test_it.py::test_clean  " not in quiet.stdout.str()
    quiet.stdout.fnmatch_lines(
        ["test_it.py::test_bad*baseline*1*1*100%*EXIT_CODE*", "2 marked tests, 2 child runs, *"]
    )
    verbose = run("-v")
    verbose.stdout.fnmatch_lines(["test_it.py::test_clean*baseline*1*0*0%*"])


def test_rounds_under_xdist_reach_the_summary(run):
    run.write(
        """
        import pytest

        @pytest.mark.daemon_exit
        @pytest.mark.parametrize("n", range(3))
        def test_x(n):
            pass
        """
    )
    result = run("-n", "2", "--daemonexit-rounds=2")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["3 marked tests, 6 child runs, 0 failed; session seed *"])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--daemonexit-rounds=0", "expected a whole number of runs >= 1"),
        ("--daemonexit-until-fail=-1", "expected a whole number of runs >= 0"),
        ("--daemonexit-first-round=x", "expected a round number >= 0"),
    ],
)
def test_bad_round_options_are_usage_errors(run, option, message):
    run.write("def test_x(): pass\n")
    result = run(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    name, value = option.split("=")
    result.stderr.fnmatch_lines([f"*{name}='{value}': {message}*"])


# --- post-exit checks ----------------------------------------------------------------------

WRITER = """
    import atexit, queue, threading, time, pytest

    class BatchWriter:
        def __init__(self, path, flush_at_exit):
            self.path = path
            self.queue = queue.Queue()
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
            if flush_at_exit:
                atexit.register(self.close)

        def write(self, record):
            self.queue.put(record)

        def _run(self):
            while True:
                time.sleep(30)  # longer than any run: only close() flushes in time
                self._drain()

        def _drain(self):
            batch = []
            while not self.queue.empty():
                batch.append(self.queue.get())
            with open(self.path, "a") as f:
                f.writelines(batch)

        def close(self):
            self._drain()

    def all_records_arrived(result):
        lines = (result.tmp_path / "out.txt").read_text().splitlines()
        sent = result.property("sent")
        lost = sent - len(lines)
        assert not lost, f"{{lost}} of {{sent}} records never reached the file"

    @pytest.mark.daemon_exit(check=all_records_arrived)
    def test_writer(tmp_path, record_property):
        (tmp_path / "out.txt").write_text("")
        writer = BatchWriter(tmp_path / "out.txt", flush_at_exit={flush})
        for i in range(100):
            writer.write(f"record {{i}}\\n")
        record_property("sent", 100)
"""


def test_a_check_finds_records_a_background_writer_never_flushed(run):
    run.write(WRITER.format(flush=False))
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*daemon exit: DATA_LOST*",
            "*- DATA_LOST: post-exit check all_records_arrived failed",
            "*100 of 100 records never reached the file",
        ]
    )


def test_a_check_passes_when_the_writer_flushes_at_exit(run):
    run.write(WRITER.format(flush=True))
    result = run("--daemonexit-policy=default", policy=None)
    result.assert_outcomes(passed=1)


def test_check_messages_false_and_broken_checks(run):
    run.write(
        """
        import pytest

        def says_why(result):
            return "the journal is empty"

        def says_no(result):
            return result.returncode == 42

        def broken(result):
            return {}["missing"]

        def fine(result):
            assert result.tmp_path is None
            assert result.returncode == 0
            return None

        @pytest.mark.daemon_exit(check=[says_why, says_no, broken, fine])
        def test_x():
            print("hello")
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "- DATA_LOST: post-exit check says_why failed" in out
    assert "the journal is empty" in out
    assert "- DATA_LOST: post-exit check says_no returned False" in out
    assert "- DATA_LOST: post-exit check broken raised KeyError" in out
    assert "check fine" not in out
    assert re.search(r"KeyError: 'missing'", out)


def test_check_that_is_not_callable_is_a_collection_error(run):
    run.write(
        """
        import pytest

        @pytest.mark.daemon_exit(check="records.txt")
        def test_x():
            pass
        """
    )
    result = run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*test_x: check='records.txt': expected a callable (or a list of them) taking *"]
    )
