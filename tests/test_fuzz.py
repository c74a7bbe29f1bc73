"""Bad input: random marker arguments at the validation code and random child output at the
parsing code.  Either a clean result or a SettingError that names the argument; never
another exception (in the plugin that would be an INTERNALERROR and lost results)."""

from __future__ import annotations

import math
import os
import re
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any, Dict, List
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pytest_daemonexit import channel, faultdump, runner
from pytest_daemonexit.judge import judge, stderr_blocks
from pytest_daemonexit.runner import Evidence, Output, PhaseMark
from pytest_daemonexit.settings import (
    MARKER_KEYWORDS,
    OPTIONS,
    SettingError,
    Settings,
    marker_overrides,
    resolve,
)
from pytest_daemonexit.signatures import BUILTIN_SIGNATURES, EXIT_CODE, HANG

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WHERE = "@pytest.mark.daemon_exit on test_it.py::test_x"

#: Values a user could plausibly (or implausibly) put in a marker.
EDGES = [
    0,
    -1,
    -64,
    -65,
    255,
    256,
    2**64,
    10**400,  # too large for a float
    -(10**400),
    "",
    " ",
    "1e309",
    "inf",
    "nan",
    "0x10",
    "default",
    "ignore::DeprecationWarning",
    "error:::::",
    "baseline,atexit-race",
    "baseline, ,",
    "fail",
    "xfail",
    "a{4294967296}",  # a repetition count re.compile cannot hold
    "(" * 2000 + ")" * 2000,  # nested deeper than the regex compiler recurses
    "(?P<",
    "\\",
    Decimal("Infinity"),
    Decimal("-Infinity"),
    Decimal("NaN"),
    Decimal("1e400"),
    float("inf"),
    float("nan"),
    b"5",
    len,
    print,
]


def _past_the_digit_limit() -> int:
    # Past the int/str conversion limit of 3.11+ (4300 digits): even repr() of it raises.
    # Built by a function, so that hypothesis can still show its strategies.
    return 10**5000


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.decimals(),
    st.fractions(),
    st.complex_numbers(),
    st.text(max_size=20),
    st.text(alphabet="()[]{}*+?|\\^$.-,: 0123456789aZ", max_size=30),
    st.binary(max_size=10),
    st.sampled_from(EDGES),
    st.builds(_past_the_digit_limit),
    st.builds(object),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=5), inner, max_size=3),
        st.frozensets(st.integers(), max_size=3),
    ),
    max_leaves=8,
)
KEYS = st.one_of(
    st.sampled_from(MARKER_KEYWORDS),
    st.sampled_from([spec.name for spec in OPTIONS if not spec.marker]),
    st.text(max_size=12),
)


def _well_formed(result: Settings) -> None:
    """What the rest of the plugin relies on after validation."""
    assert isinstance(result.timeout, float)
    assert math.isfinite(result.timeout) and result.timeout > 0
    assert isinstance(result.run_timeout, float)
    assert math.isfinite(result.run_timeout) and result.run_timeout >= 0
    assert type(result.exit_code) is int and -64 <= result.exit_code <= 255
    assert all(isinstance(p, re.Pattern) for p in result.allow_stderr)
    assert type(result.unbuffered) is bool and type(result.dev_mode) is bool
    assert all(isinstance(w, str) for w in result.warnings)
    assert all(isinstance(p, str) and p for p in result.policies)
    assert type(result.rounds) is int and result.rounds >= 1
    assert type(result.until_fail) is int and result.until_fail >= 0
    assert all(callable(c) for c in result.check)
    assert result.interpreter_bugs in ("fail", "xfail")


@FUZZ
@given(overrides=st.dictionaries(KEYS, VALUES, max_size=4))
@example(overrides={"timeout": 10**400})
@example(overrides={"exit_code": Decimal("Infinity")})
@example(overrides={"rounds": Decimal("Infinity")})
@example(overrides={"allow_stderr": "a{4294967296}"})
@example(overrides={"allow_stderr": ["(" * 2000 + ")" * 2000]})
def test_marker_arguments_give_settings_or_an_error_naming_them(overrides: Dict[str, Any]):
    try:
        result = resolve(Settings(), overrides, WHERE)
    except SettingError as exc:
        message = str(exc)
        assert message.startswith(WHERE + ": "), message
        # Names the argument: "timeout=...: expected ..." or "unknown argument 'x'".
        assert any(
            f": {name}=" in message or f"unknown argument {name!r}" in message for name in overrides
        ), message
        assert len(message) < 2000, "the message quotes the whole value"
    else:
        assert set(overrides) <= set(MARKER_KEYWORDS)
        _well_formed(result)


@FUZZ
@given(
    marks=st.lists(
        st.tuples(
            st.lists(VALUES, max_size=2),
            # "self" would clash with with_args' own parameter.
            st.dictionaries(KEYS.filter(lambda k: k != "self"), VALUES, max_size=3),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_marks_merge_closest_first_or_refuse_positional_arguments(marks):
    built = [pytest.mark.daemon_exit.with_args(*args, **kwargs).mark for args, kwargs in marks]
    try:
        merged = marker_overrides(built, WHERE)
    except SettingError as exc:
        assert any(args for args, _ in marks)
        assert "takes keyword arguments only" in str(exc)
        return
    assert not any(args for args, _ in marks)
    expected: Dict[str, Any] = {}
    for _, kwargs in marks:
        for key, value in kwargs.items():
            expected.setdefault(key, value)
    assert list(merged) == list(expected)
    assert all(merged[key] is expected[key] for key in expected)
    try:
        _well_formed(resolve(Settings(), merged, WHERE))
    except SettingError as exc:
        assert str(exc).startswith(WHERE + ": ")


COMMAND_LINE = [spec for spec in OPTIONS if spec.command_line]


@FUZZ
@given(
    spec=st.sampled_from(COMMAND_LINE),
    raw=st.one_of(
        st.text(max_size=30),
        st.sampled_from([e for e in EDGES if isinstance(e, str)]),
        st.lists(st.text(max_size=15), max_size=3),  # an ini linelist
    ),
)
def test_command_line_and_ini_values_parse_or_raise_a_setting_error(spec, raw):
    try:
        spec.parse(raw)
    except SettingError as exc:
        assert str(exc)


# Child output: lines that look like what the parsers look for, mixed with garbage.
FRAGMENTS = [
    "",
    "Traceback (most recent call last):",
    '  File "/app/worker.py", line 12, in run',
    '  File "/app/worker.py", line 12 in run',
    '  File "/usr/lib/python3.11/threading.py", line ??? in _bootstrap',
    "    self.file.write(line)",
    "ValueError: I/O operation on closed file.",
    "Exception in thread Thread-1 (flush):",
    "Exception ignored in: <function Client.__del__ at 0x7f>",
    "Exception ignored in atexit callback: <function stop at 0x7f>",
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
    "Fatal Python error: _enter_buffered_busy: could not acquire lock for "
    "<_io.BufferedWriter name='<stdout>'> at interpreter shutdown, possibly due to daemon threads",
    "Fatal Python error: Segmentation fault",
    "Python runtime state: finalizing (tstate=0x55d0c0a0)",
    "Timeout (0:00:01)!",
    "Current thread 0x00007f2207601b80 (most recent call first):",
    "Thread 0x00007f1c2a7fc700 [worker] (most recent call first):",
    "Thread 0x00007f1c2a7fc700 (most recent call first):",
    "Stack (most recent call first):",
    "  <no Python frame>",
    "  ...",
    "Extension modules: _cffi_backend (total: 1)",
    "--- Logging error ---",
    "RuntimeError: can't create new thread at interpreter shutdown",
    "BrokenPipeError: [Errno 32] Broken pipe",
    "Exception ignored in: <_io.TextIOWrapper name='<stdout>' mode='w' encoding='utf-8'>",
]
GARBAGE = st.binary(max_size=80).map(lambda b: b.decode("utf-8", "replace"))
LINES = st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=40), GARBAGE)
TEXT = st.lists(LINES, max_size=30).map("\n".join) | GARBAGE
# How runner.py turns bytes into text.
BYTES_AS_TEXT = st.binary(max_size=400).map(lambda b: b.decode("utf-8", "replace"))


@FUZZ
@given(text=TEXT | BYTES_AS_TEXT)
def test_stderr_blocks_are_made_of_the_texts_own_lines(text):
    # Split as the judge does: str.splitlines() also ends lines at \x1c-\x1e, \x85, ...
    lines = [line.rstrip("\r\n") for line in text.splitlines(keepends=True)]
    size = len(text.encode("utf-8", "replace"))
    for block in stderr_blocks(text, BUILTIN_SIGNATURES):
        assert block.lines and all(line in lines for line in block.lines)
        assert block.signature.regex.search(block.lines[0])
        assert 0 <= block.offset < size


@FUZZ
@given(text=TEXT | BYTES_AS_TEXT)
def test_faulthandler_dumps_are_read_from_the_texts_own_lines(text):
    for dump in faultdump.parse(text):
        assert dump.threads
        for thread in dump.threads:
            assert thread.thread_id == "0x0" or thread.thread_id in text
            for frame in thread.frames:
                assert frame.file in text and frame.function in text
            faultdump.format_stack(thread)


@FUZZ
@given(
    stderr=TEXT | BYTES_AS_TEXT,
    faults=TEXT,
    returncode=st.none() | st.integers(min_value=-64, max_value=255),
    stopped=st.sampled_from([None, "exit_timeout", "run_timeout"]),
    phases=st.lists(
        st.builds(
            PhaseMark,
            st.sampled_from(["test", "test_done", "atexit", "finalizing", "x"]),
            st.floats(allow_nan=False),
            st.integers(min_value=-1, max_value=10**6),
        ),
        max_size=5,
    ),
    dropped=st.integers(min_value=0, max_value=10**6),
    exit_code=st.integers(min_value=-64, max_value=255),
)
def test_judge_gives_a_verdict_on_any_output(
    stderr, faults, returncode, stopped, phases, dropped, exit_code
):
    evidence = Evidence(
        argv=("python",),
        pid=1,
        returncode=returncode,
        stopped=stopped,
        phases=tuple(phases),
        records=(),
        stdout_test=Output(),
        stdout_exit=Output(stderr),
        stderr_test=Output(),
        stderr_exit=Output(stderr, dropped, 17),
        faults=faults,
        native_stacks="",
        duration=1.0,
        exit_seconds=None,
    )
    verdict = judge(evidence, Settings(exit_code=exit_code))
    assert verdict.ok == (not verdict.findings)
    if stopped is not None:
        assert HANG in verdict.classes
    elif returncode is not None and returncode not in (exit_code, 120):
        assert EXIT_CODE in verdict.classes


RECORDS = st.lists(
    st.fixed_dictionaries(
        {"phase": st.text(max_size=10), "n": st.integers(), "x": st.none() | st.text()}
    ),
    max_size=5,
)
CHANNEL_GARBAGE = st.one_of(
    st.binary(max_size=60),
    st.sampled_from(
        [
            b"[" * 100000,  # valid JSON so far, deeper than the decoder recurses
            b'{"event": 1}',
            b'{"event": "phase", "a": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            b"[1, 2]",
            b'"event"',
            b"\xff\xfe\x00",
        ]
    ),
)


@FUZZ
@given(
    records=RECORDS,
    garbage=st.lists(CHANNEL_GARBAGE, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=8),
)
def test_channel_keeps_every_record_between_garbage_however_it_is_chunked(records, garbage, cuts):
    good = [channel.encode("phase", **record) for record in records]
    # Garbage on lines of its own, between the records.
    stream = b"".join(g.replace(b"\n", b" ") + b"\n" + r for g, r in zip(garbage, good))
    stream += b"".join(good[len(garbage) :]) + b"".join(
        g.replace(b"\n", b" ") + b"\n" for g in garbage[len(good) :]
    )
    positions = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *positions], [*positions, len(stream)])]
    reader = channel.Reader()
    got: List[Dict[str, Any]] = []
    for chunk in chunks:
        got += reader.feed(chunk)
    wanted = [r for r in got if r.get("event") == "phase" and "n" in r]
    assert [(r["phase"], r["n"], r["x"]) for r in wanted] == [
        (r["phase"], r["n"], r["x"]) for r in records
    ]
    assert all(isinstance(r["event"], str) for r in got)


@FUZZ
@given(
    piece=st.text(min_size=1, max_size=5),
    size=st.integers(min_value=0, max_value=3 * channel.KEEP_CHARS),
)
def test_channel_records_carry_the_head_and_tail_of_long_strings(piece, size):
    # What pytest captured in the child travels in its reports; the parent gets at most
    # both ends of it, with how much was left out.
    keep = channel.KEEP_CHARS
    text = (piece * (size // len(piece) + 1))[:size]
    line = channel.encode("report", report={"sections": [["Captured stdout call", text]]})
    # At most 12 bytes a character (a surrogate pair as \uXXXX\uXXXX), whatever the size.
    assert len(line) < 12 * 2 * keep + 1000
    (record,) = channel.Reader().feed(line)
    got = record["report"]["sections"][0][1]
    if size <= 2 * keep:
        assert got == text
    else:
        assert got.startswith(text[:keep]) and got.endswith(text[-keep:])
        assert f"[... {size - 2 * keep} characters left out by pytest-daemonexit ...]" in got


@FUZZ
@given(
    data=st.binary(max_size=200),
    start=st.integers(min_value=-50, max_value=250),
    end=st.none() | st.integers(min_value=-50, max_value=250),
    offset=st.none() | st.integers(min_value=-50, max_value=250),
    keep=st.integers(min_value=1, max_value=40),
)
def test_output_files_are_read_head_and_tail_with_what_was_left_out(data, start, end, offset, keep):
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(runner, "KEEP_BYTES", keep):
        path = Path(tmp, "stdout")
        path.write_bytes(data)
        stop = len(data) if end is None else max(0, min(end, len(data)))
        first = max(0, min(start, stop))
        part = runner._read_range(path, start, end)
        assert part.start == first
        length = stop - first
        if length <= 2 * keep:
            assert part.dropped == 0
            assert part.text == data[first:stop].decode("utf-8", "replace")
        else:
            assert part.dropped == length - 2 * keep
            assert part.text.startswith(data[first : first + keep].decode("utf-8", "replace"))
            assert part.text.endswith(data[stop - keep : stop].decode("utf-8", "replace"))
            assert f"[... {part.dropped} bytes left out by pytest-daemonexit ...]" in part.text
        test, after = runner._split(path, offset)
        if offset is None:
            assert test == Output() and after == runner._read_range(path, 0, None)
        else:
            assert test == runner._read_range(path, 0, offset)
            assert after.start == max(0, min(offset, len(data)))
        assert runner._read_range(Path(tmp, "missing"), start, end) == Output()


# End to end: binary output from a real child, and bad marker arguments.

GARBAGE_SUITE = r"""
    import atexit, os, sys, pytest

    JUNK = bytes(range(256)) * 3 + b"\xff\xfe\xc3(\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc\x00\n"

    @pytest.mark.daemon_exit
    def test_garbage_during_the_test():
        os.write(1, JUNK)
        os.write(2, JUNK)
        sys.stdout.buffer.write(JUNK)
        sys.stderr.buffer.write(JUNK)

    @pytest.mark.daemon_exit
    def test_garbage_at_exit():
        def junk():
            os.write(1, JUNK * 100)
            os.write(2, JUNK * 100)
        atexit.register(junk)

    @pytest.mark.daemon_exit
    def test_garbage_then_an_error_at_exit():
        def fail():
            raise ValueError("after the garbage")
        def junk():
            os.write(2, JUNK)
        atexit.register(fail)
        atexit.register(junk)

    @pytest.mark.daemon_exit
    def test_garbage_then_the_test_fails():
        os.write(1, JUNK)
        os.write(2, JUNK)
        assert "garbage" == "clean"

    @pytest.mark.daemon_exit
    def test_garbage_in_a_flood_at_exit():
        def junk():
            for _ in range(200):
                os.write(2, JUNK * 10)
            os._exit(3)
        atexit.register(junk)
"""


def test_binary_output_from_the_child_gives_clean_verdicts(run):
    run.write(GARBAGE_SUITE)
    result = run("-rA")
    result.assert_outcomes(passed=2, failed=3)
    out = result.stdout.str()
    assert "INTERNALERROR" not in out and "UnicodeDecodeError" not in out
    result.stdout.fnmatch_lines(
        [
            "PASSED test_it.py::test_garbage_during_the_test",
            "PASSED test_it.py::test_garbage_at_exit",
            "FAILED test_it.py::test_garbage_then_an_error_at_exit - daemon exit: SHUTDOWN*",
            "FAILED test_it.py::test_garbage_then_the_test_fails - AssertionError*",
            "FAILED test_it.py::test_garbage_in_a_flood_at_exit - daemon exit: EXIT_CODE*",
        ],
        consecutive=False,
    )
    # The traceback after the garbage is found and shown as written.
    assert "ValueError: after the garbage" in out
    assert "the child ended with exit status 3, expected exit status 0" in out


BAD_MARKERS = """
    import pytest

    @pytest.mark.daemon_exit(timeout="soon")
    def test_bad_timeout():
        pass

    @pytest.mark.daemon_exit(exit_code=10**400)
    def test_bad_exit_code():
        pass

    @pytest.mark.daemon_exit(allow_stderr=["a{4294967296}"])
    def test_bad_pattern():
        pass

    @pytest.mark.daemon_exit(rounds=float("inf"))
    def test_bad_rounds():
        pass

    @pytest.mark.daemon_exit(polices="baseline")
    def test_misspelt():
        pass
"""


def test_bad_marker_arguments_are_collection_errors_naming_them(run, pytester):
    run.write(BAD_MARKERS, name="test_bad")
    run.write(
        """
        import pytest

        @pytest.mark.daemon_exit
        def test_good():
            pass

        def test_unmarked():
            pass
        """,
        name="test_good",
    )
    result = run("--continue-on-collection-errors", "-rA")
    # The module with the bad markers is an error; nothing else is lost.
    result.assert_outcomes(passed=2, errors=1)
    where = "@pytest.mark.daemon_exit on test_bad.py::"
    result.stdout.fnmatch_lines(
        [
            "*ERROR collecting test_bad.py*",
            f"{where}test_bad_timeout: timeout='soon': expected a number of seconds",
            f"{where}test_bad_exit_code: exit_code=1000*...: expected an exit status in 0..255*",
            f"{where}test_bad_rounds: rounds=inf: expected a whole number of runs >= 1",
            f"{where}test_misspelt: unknown argument 'polices'; expected one of timeout*",
        ],
        consecutive=False,
    )
    out = result.stdout.str()
    # A plain substring: "[" is special to fnmatch.
    assert (
        f"{where}test_bad_pattern: allow_stderr=['a{{4294967296}}']: 'a{{4294967296}}' is not a "
        "valid regular expression: the repetition number is too large"
    ) in result.outlines
    assert "PASSED test_good.py::test_good" in out and "PASSED test_good.py::test_unmarked" in out
    assert "INTERNALERROR" not in out and "Traceback" not in out
    assert not any(os.sep + "pytest_daemonexit" + os.sep in line for line in result.outlines)
