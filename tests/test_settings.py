"""Marker arguments, options and ini values: precedence and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_daemonexit.settings import OPTIONS, options_markdown


@pytest.mark.parametrize(
    "args, message",
    [
        ("timout=3", "unknown argument 'timout'; expected one of timeout, exit_code*"),
        ("timeout=-1", "timeout=-1: expected a number of seconds > 0"),
        ("timeout='soon'", "timeout='soon': expected a number of seconds"),
        ("timeout=True", "timeout=True: expected a number of seconds, not a boolean"),
        ("exit_code='x'", "exit_code='x': expected an integer exit status*"),
        ("exit_code=999", "exit_code=999: expected an exit status in 0..255*"),
        ("allow_stderr='('", "allow_stderr='(': '(' is not a valid regular expression*"),
        ("allow_stderr=3", "allow_stderr=3: expected a string or a list of strings"),
        ("run_timeout=-2", "run_timeout=-2: expected a number of seconds >= 0*"),
        ("unbuffered='maybe'", "unbuffered='maybe': expected true or false"),
        ("warnings=['loud']", "warnings=*'loud' is not a -W filter*"),
        ("5", "*takes keyword arguments only, got positional 5; signature: daemon_exit(timeout=*"),
    ],
)
def test_bad_marker_is_a_collection_error_naming_it(run, args, message):
    run.write(
        f"""
        import pytest

        @pytest.mark.daemon_exit({args})
        def test_x():
            pass
        """
    )
    result = run()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            "*ERROR collecting test_it.py*",
            f"*@pytest.mark.daemon_exit on test_it.py::test_x: {message}",
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stdout.no_fnmatch_line("*pytest_daemonexit/*")


@pytest.mark.parametrize(
    "option, message",
    [
        ("--daemonexit-timeout=abc", "--daemonexit-timeout='abc': expected a number of seconds"),
        ("--daemonexit-timeout=0", "--daemonexit-timeout='0': expected a number of seconds > 0"),
        ("--daemonexit-exit-code=1.5", "--daemonexit-exit-code='1.5': expected an integer*"),
        ("--daemonexit-allow-stderr=[", "--daemonexit-allow-stderr='[': '[' is not a valid*"),
        ("--daemonexit-native-stacks=lldb", "*'lldb': expected one of auto, gdb, py-spy, off"),
    ],
)
def test_bad_option_is_a_usage_error_naming_it(run, option, message):
    run.write("def test_x(): pass\n")
    result = run(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    result.stderr.no_fnmatch_line("*Traceback*")


def test_bad_ini_value_is_a_usage_error_naming_it(run, pytester):
    pytester.makeini("[pytest]\ndaemonexit_timeout = never\n")
    run.write("def test_x(): pass\n")
    result = run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: ini option daemonexit_timeout='never': expected a number of seconds"]
    )


def test_precedence_marker_over_command_line_over_ini(run, pytester):
    pytester.makeini("[pytest]\ndaemonexit_exit_code = 4\n")
    run.write(
        """
        import atexit, os, pytest

        def leave(code):
            atexit.register(os._exit, code)

        @pytest.mark.daemon_exit
        def test_ini():
            leave(4)

        @pytest.mark.daemon_exit(exit_code=6)
        def test_marker():
            leave(6)
        """
    )
    run().assert_outcomes(passed=2)
    result = run("--daemonexit-exit-code=5")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*ended with exit status 4, expected exit status 5*"])


def test_closest_marker_wins_per_keyword(run):
    run.write(
        """
        import atexit, os, pytest

        pytestmark = pytest.mark.daemon_exit(exit_code=3, timeout=1)

        @pytest.mark.daemon_exit(timeout=20)
        def test_x():
            atexit.register(os._exit, 3)
        """
    )
    run().assert_outcomes(passed=1)


def test_allow_stderr_accepts_matching_blocks_only(run, pytester):
    source = """
        import atexit, sys, pytest

        def noisy():
            sys.stderr.write("Exception ignored in: <function Cache.__del__>\\\\n")
            sys.stderr.write("KeyError: 'known noise'\\\\n")

        @pytest.mark.daemon_exit{marker}
        def test_x():
            atexit.register(noisy)
        """
    run.write(source.format(marker=""))
    run().assert_outcomes(failed=1)
    run.write(source.format(marker="(allow_stderr=r\"KeyError: 'known noise'\")"))
    run().assert_outcomes(passed=1)
    run.write(source.format(marker="(allow_stderr=['unrelated'])"))
    run().assert_outcomes(failed=1)
    pytester.makeini("[pytest]\ndaemonexit_allow_stderr =\n    unrelated\n    known noise\n")
    run.write(source.format(marker=""))
    run().assert_outcomes(passed=1)


def test_timeout_lets_a_slow_but_finite_exit_pass(run):
    run.write(
        """
        import threading, time, pytest

        @pytest.mark.daemon_exit(timeout=10)
        def test_slow_worker():
            threading.Thread(target=time.sleep, args=(1.5,)).start()
        """
    )
    run().assert_outcomes(passed=1)


def test_help_lists_every_option_and_the_marker(run):
    result = run("--help")
    for spec in OPTIONS:
        if not spec.command_line:
            assert spec.option not in result.stdout.str()
            continue
        result.stdout.fnmatch_lines([f"*{spec.option}*"])
        result.stdout.fnmatch_lines([f"*{spec.ini}*"])
    marker = run("--markers")
    marker.stdout.fnmatch_lines(["@pytest.mark.daemon_exit(timeout=10.0, exit_code=0, *"])


def test_readme_options_table_is_generated_from_the_option_table():
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert options_markdown() in readme, (
        "README's options table is out of date: paste `python -m pytest_daemonexit.settings`"
    )
