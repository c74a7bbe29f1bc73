"""The judge and the parsers on recorded evidence (pure functions, no child needed)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from pytest_daemonexit import channel, faultdump
from pytest_daemonexit.judge import judge, stderr_blocks
from pytest_daemonexit.runner import Evidence, Output, PhaseMark
from pytest_daemonexit.settings import Settings
from pytest_daemonexit.signatures import BUILTIN_SIGNATURES

BUFFERED_BUSY_39 = """\
Fatal Python error: _enter_buffered_busy: could not acquire lock for \
<_io.BufferedWriter name='<stdout>'> at interpreter shutdown, possibly due to daemon threads
Python runtime state: finalizing (tstate=0x00007f2207576ef8)

Current thread 0x00007f2207601b80 (most recent call first):
  <no Python frame>
"""
BUFFERED_BUSY_38 = """\
Fatal Python error: could not acquire lock for <_io.BufferedWriter name='<stdout>'> \
at interpreter shutdown, possibly due to daemon threads
Python runtime state: finalizing (tstate=0x55d0c0a0)

Thread 0x00007f1c2a7fc700 (most recent call first):
  File "/usr/lib/python3.8/threading.py", line 870 in run
"""
THREAD_EXCEPTIONS = """\
Exception in thread Thread-1 (flush):
Traceback (most recent call last):
  File "/usr/lib/python3.11/threading.py", line 1045, in _bootstrap_inner
    self.run()
  File "/app/metrics.py", line 12, in flush
    self.file.write(line)
ValueError: I/O operation on closed file.
Exception in thread Thread-2 (flush):
Traceback (most recent call last):
  File "/app/metrics.py", line 12, in flush
    self.file.write(line)
ValueError: I/O operation on closed file.
"""
CHAINED = """\
Exception ignored in: <function Pool.__del__ at 0x7f>
Traceback (most recent call last):
  File "/app/pool.py", line 3, in __del__
KeyError: 'a'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/app/pool.py", line 5, in __del__
RuntimeError: b
"""
HANG_DUMP = """\
Timeout (0:00:02)!
Thread 0x00007f53de6316c0 (most recent call first):
  File "/app/worker.py", line 5 in poll_forever
  File "/usr/lib/python3.11/threading.py", line 982 in run
  File "/usr/lib/python3.11/threading.py", line 1045 in _bootstrap_inner

Current thread 0x00007f53e0e3cb80 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 1590 in _shutdown
"""


def evidence(stderr: str = "", rc: int = 0, faults: str = "", stopped=None, phases=()) -> Evidence:
    return Evidence(
        argv=("python",),
        pid=1,
        returncode=rc,
        stopped=stopped,
        phases=tuple(PhaseMark(name, float(i), off) for i, (name, off) in enumerate(phases)),
        records=(),
        stdout_test=Output(),
        stdout_exit=Output(),
        stderr_test=Output(),
        stderr_exit=Output(stderr),
        faults=faults,
        native_stacks="",
        duration=0.1,
        exit_seconds=0.05,
    )


def test_buffered_busy_is_one_fatal_finding_on_38_and_39_plus():
    for text in (BUFFERED_BUSY_38, BUFFERED_BUSY_39):
        verdict = judge(evidence(text, rc=-6), Settings())
        assert verdict.classes == ("FATAL_ERROR", "EXIT_CODE")
        assert verdict.findings[0].signature == "buffered-busy"
        assert verdict.findings[0].lines[1].startswith("Python runtime state: finalizing")


def test_repeated_thread_exceptions_are_grouped_with_their_tracebacks():
    verdict = judge(evidence(THREAD_EXCEPTIONS), Settings())
    (finding,) = verdict.findings
    assert finding.verdict == "SHUTDOWN_EXCEPTION"
    assert finding.count == 2
    assert finding.lines[0] == "Exception in thread Thread-1 (flush):"
    assert finding.lines[-1] == "ValueError: I/O operation on closed file."


def test_chained_traceback_stays_in_one_block():
    (block,) = stderr_blocks(CHAINED, BUILTIN_SIGNATURES)
    assert block.signature.name == "exception-ignored"
    assert block.lines[-1] == "RuntimeError: b"


def test_allow_stderr_removes_only_matching_blocks():
    settings = Settings(allow_stderr=(re.compile("closed file"),))
    assert judge(evidence(THREAD_EXCEPTIONS), settings).ok
    assert not judge(evidence(THREAD_EXCEPTIONS + CHAINED), settings).ok


def test_broken_pipe_at_120_is_the_readers_doing():
    text = (
        "Exception ignored in: <_io.TextIOWrapper name='<stdout>' mode='w' encoding='utf-8'>\n"
        "BrokenPipeError: [Errno 32] Broken pipe\n"
    )
    verdict = judge(evidence(text, rc=120), Settings())
    assert "EXIT_CODE" not in verdict.classes


def test_finding_knows_the_phase_that_printed_it():
    text = "noise\n" + THREAD_EXCEPTIONS
    ev = evidence(text, phases=[("test_done", 0), ("atexit", 3), ("finalizing", 10_000)])
    verdict = judge(ev, Settings())
    assert verdict.findings[0].phase == "atexit"
    assert verdict.phase == "atexit"


def test_hang_dump_is_parsed_user_thread_first():
    verdict = judge(
        evidence(
            rc=-9, faults=HANG_DUMP, stopped="exit_timeout", phases=[("threading_shutdown", 0)]
        ),
        Settings(timeout=2),
    )
    assert verdict.kind == "HANG"
    assert verdict.phase == "threading_shutdown"
    assert verdict.stacks[0].frames[0] == faultdump.Frame("/app/worker.py", 5, "poll_forever")
    assert verdict.stack_source == "Timeout (0:00:02)!"


def test_faultdump_parses_headers_threads_and_truncation():
    text = (
        "garbage\n"
        + HANG_DUMP
        + '  ...\n\nStack (most recent call first):\n  File "x.py", line ??? in f\n'
    )
    dumps = faultdump.parse(text)
    assert [d.header for d in dumps] == ["Timeout (0:00:02)!"]
    threads = dumps[0].threads
    assert [t.current for t in threads] == [False, True, True]
    assert threads[1].truncated
    assert threads[2].frames == (faultdump.Frame("x.py", None, "f"),)


def test_library_frames_are_folded_in_the_display():
    frames = tuple(faultdump.Frame(f"/usr/lib/python3.11/lib{i}.py", i, "f") for i in range(10))
    stack = faultdump.ThreadStack("0x1", True, (faultdump.Frame("/app/a.py", 1, "g"), *frames))
    lines = faultdump.format_stack(stack)
    assert lines[1].strip().startswith('> File "/app/a.py"')
    assert any("library frames" in line for line in lines)


@given(st.text())
def test_parsers_never_raise_on_arbitrary_text(text):
    faultdump.parse(text)
    stderr_blocks(text, BUILTIN_SIGNATURES)
    judge(evidence(text, faults=text), Settings())


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_channel_reader_survives_arbitrary_bytes(chunks):
    reader = channel.Reader()
    for chunk in chunks:
        for record in reader.feed(chunk):
            assert isinstance(record["event"], str)
    good = channel.encode("phase", phase="atexit")
    assert reader.feed(b"\n" + good)[0]["phase"] == "atexit"
