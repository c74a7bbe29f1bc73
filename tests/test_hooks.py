"""The hooks pytest-daemonexit offers: extra signatures, verdict override."""

from __future__ import annotations

import pytest


def test_conftest_adds_a_signature(run, pytester):
    pytester.makeconftest(
        """
        from pytest_daemonexit import Signature

        def pytest_daemonexit_signatures(config):
            return [Signature("mylib-lost", r"mylib: \\d+ records dropped", "SHUTDOWN_EXCEPTION",
                              "mylib dropped buffered records at exit")]
        """
    )
    run.write(
        """
        import atexit, sys, pytest

        @pytest.mark.daemon_exit
        def test_x():
            atexit.register(lambda: sys.stderr.write("mylib: 12 records dropped\\\\n"))
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*SHUTDOWN_EXCEPTION*mylib dropped buffered records at exit*",
            "*mylib: 12 records dropped*",
        ]
    )


def test_signature_hook_returning_garbage_is_a_usage_error(run, pytester):
    pytester.makeconftest(
        """
        def pytest_daemonexit_signatures(config):
            return ["not a signature"]
        """
    )
    run.write(
        """
        import pytest

        @pytest.mark.daemon_exit
        def test_x():
            pass
        """
    )
    result = run()
    result.stderr.fnmatch_lines(
        ["*pytest_daemonexit_signatures returned 'not a signature'; expected *Signature objects*"]
    )


def test_bad_signature_pattern_names_itself():
    from pytest_daemonexit import Signature

    with pytest.raises(ValueError, match=r"signature 'x': pattern '\(' is not a valid"):
        Signature("x", "(", "FATAL_ERROR")
    with pytest.raises(ValueError, match=r"signature 'x': verdict 'BAD' is not one of HANG"):
        Signature("x", "y", "BAD")


def test_verdict_override(run, pytester):
    pytester.makeconftest(
        """
        import dataclasses

        def pytest_daemonexit_verdict(item, verdict, evidence, settings):
            if item.name == "test_forgiven":
                assert evidence.returncode == 9
                return dataclasses.replace(verdict, findings=())
        """
    )
    run.write(
        """
        import atexit, os, pytest

        @pytest.mark.daemon_exit
        def test_forgiven():
            atexit.register(os._exit, 9)

        @pytest.mark.daemon_exit
        def test_judged():
            atexit.register(os._exit, 9)
        """
    )
    result = run()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_it.py::test_judged - daemon exit: EXIT_CODE*"])
