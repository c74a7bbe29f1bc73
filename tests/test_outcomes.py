"""A marked test reports as if it had run in-process: every outcome, fixture, structure."""

from __future__ import annotations

import sys


def test_every_outcome_is_reported_as_in_process(run):
    run.write(
        """
        import pytest

        pytestmark = pytest.mark.daemon_exit

        @pytest.fixture
        def broken():
            raise RuntimeError("fixture broke")

        @pytest.fixture
        def bad_teardown():
            yield
            raise RuntimeError("teardown broke")

        def test_pass():
            pass

        def test_fail():
            assert 0

        def test_skip():
            pytest.skip("not today")

        @pytest.mark.xfail(reason="known")
        def test_xfail():
            assert 0

        @pytest.mark.xfail(reason="fixed", strict=False)
        def test_xpass():
            pass

        def test_setup_error(broken):
            pass

        def test_teardown_error(bad_teardown):
            pass
        """
    )
    in_process = run("-p", "no:daemonexit", "-rA")
    result = run("-rA")
    expected = dict(passed=2, failed=1, skipped=1, xfailed=1, xpassed=1, errors=2)
    in_process.assert_outcomes(**expected)
    result.assert_outcomes(**expected)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_setup_error*",
            "*RuntimeError: fixture broke*",
            "*ERROR at teardown of test_teardown_error*",
            "*RuntimeError: teardown broke*",
        ]
    )
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] test_it.py:*: not today"])
    result.stdout.fnmatch_lines(["XFAIL test_it.py::test_xfail - known"])


def test_strict_xpass_fails(run):
    run.write(
        """
        import pytest

        @pytest.mark.daemon_exit
        @pytest.mark.xfail(strict=True)
        def test_xpass():
            pass
        """
    )
    run().assert_outcomes(failed=1)


def test_bad_exit_fails_an_xfail_test(run):
    run.write(
        """
        import atexit, os, pytest

        @pytest.mark.daemon_exit
        @pytest.mark.xfail(reason="expected body failure")
        def test_x():
            atexit.register(os._exit, 2)
            assert 0
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*daemon exit: EXIT_CODE*"])


def test_fixtures_params_classes_and_unittest(run, pytester):
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def service():
            return {"name": "svc"}
        """
    )
    run.write(
        """
        import sys, unittest, pytest

        def in_child():
            return "pytest_daemonexit.child" in sys.modules

        @pytest.mark.daemon_exit
        @pytest.mark.parametrize("n", [1, 2, "a b"])
        def test_param(n, service, tmp_path):
            assert in_child()
            assert service["name"] == "svc"
            (tmp_path / "f").write_text(str(n))

        @pytest.mark.daemon_exit
        class TestGroup:
            def test_method(self):
                assert in_child()

        class TestCase(unittest.TestCase):
            @pytest.mark.daemon_exit
            def test_unittest(self):
                self.assertTrue(in_child())

        def test_unmarked_runs_in_process():
            assert not in_child()
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*test_param?a b? PASSED*"])


def test_disabled_plugin_runs_marked_tests_in_process(run):
    run.write(
        """
        import sys, pytest

        @pytest.mark.daemon_exit
        def test_marked():
            assert "pytest_daemonexit.child" not in sys.modules
        """
    )
    result = run("-p", "no:daemonexit", "-W", "ignore::pytest.PytestUnknownMarkWarning")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("daemonexit:*")


def test_child_environment_is_pinned(run):
    run.write(
        """
        import os, sys, pytest

        @pytest.mark.daemon_exit
        def test_default():
            assert "PYTHONUNBUFFERED" not in os.environ
            assert type(sys.__stdout__.buffer).__name__ == "BufferedWriter"
            assert sys.flags.dev_mode is False

        @pytest.mark.daemon_exit(unbuffered=True, dev_mode=True, warnings=["error::UserWarning"])
        def test_chosen():
            assert type(sys.__stdout__.buffer).__name__ == "FileIO"
            assert sys.flags.dev_mode is True
            assert "error::UserWarning" in sys.warnoptions
        """
    )
    result = run()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["daemonexit child: * -X faulthandler; removed from its environment: PYTHONUNBUFFERED*"]
    )


def test_header_shows_settings(run, pytester):
    pytester.makeini("[pytest]\ndaemonexit_timeout = 3\n")
    run.write("def test_x(): pass\n")
    result = run("--daemonexit-exit-code=0", "--daemonexit-rounds=2")
    result.stdout.fnmatch_lines(
        [
            "daemonexit: seed=* policies=baseline rounds=2 start=* jobs=* timeout=3s exit_code=0 "
            "run_timeout=300s *",
            f"daemonexit child: {sys.executable} ({'.'.join(map(str, sys.version_info[:3]))}) "
            "-X faulthandler; *",
        ]
    )


def test_maxfail_stops_after_a_bad_exit(run):
    run.write(
        """
        import atexit, os, pytest

        @pytest.mark.daemon_exit
        def test_first():
            atexit.register(os._exit, 1)

        @pytest.mark.daemon_exit
        def test_second():
            pass
        """
    )
    result = run("-x")
    result.assert_outcomes(failed=1)


def test_mixed_marked_and_unmarked_module_fixtures(run):
    # The parent sets up no fixture for a marked test, but still tears down earlier
    # tests' fixtures the way pytest would.
    run.write(
        """
        import pytest

        torn_down = []

        @pytest.fixture(scope="module")
        def resource():
            yield
            torn_down.append(1)

        def test_a(resource):
            pass

        @pytest.mark.daemon_exit
        def test_b(resource):
            pass
        """,
        name="test_a_mod",
    )
    run.write(
        """
        import test_a_mod

        def test_c():
            assert test_a_mod.torn_down == [1]
        """,
        name="test_b_mod",
    )
    run("-p", "no:randomly").assert_outcomes(passed=3)
