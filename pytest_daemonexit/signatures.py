"""Known stderr signatures of bugs that show while an interpreter shuts down.

The table is data: downstream suites add their own through the
``pytest_daemonexit_signatures`` hook.  Patterns are searched line by line in what the child
wrote to stderr after its test finished, and in its faulthandler dumps.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional, Pattern, Tuple

#: Verdict classes, from the most to the least specific cause of a failed exit.
HANG = "HANG"
FATAL_ERROR = "FATAL_ERROR"
EXIT_CODE = "EXIT_CODE"
SHUTDOWN_EXCEPTION = "SHUTDOWN_EXCEPTION"
#: A thread ran Python code after the runtime was marked finalizing (a policy's probe saw it).
LATE_THREAD = "LATE_THREAD"
#: A post-exit check found that data the test handed over did not survive the exit.
DATA_LOST = "DATA_LOST"
VERDICT_CLASSES: Tuple[str, ...] = (
    HANG,
    FATAL_ERROR,
    LATE_THREAD,
    EXIT_CODE,
    SHUTDOWN_EXCEPTION,
    DATA_LOST,
)
#: Matching stderr that is not a bug (only used with the exit status it explains).
BENIGN = "BENIGN"


@dataclasses.dataclass(frozen=True)
class Signature:
    """One recognisable line on stderr.

    ``pattern`` is a regular expression searched in each line; ``verdict`` is the class a
    match produces (one of :data:`VERDICT_CLASSES`, or :data:`BENIGN`); ``exit_code``, when
    set, restricts a benign signature to the exit status it explains; ``message`` marks
    an exception's message line (see the field).
    """

    name: str
    pattern: str
    verdict: str
    description: str = ""
    exit_code: Optional[int] = None
    #: The line is an exception's message: inside an open block (a thread's traceback,
    #: say) it names what went wrong there instead of starting a block of its own.
    message: bool = False

    def __post_init__(self) -> None:
        if self.verdict not in (*VERDICT_CLASSES, BENIGN):
            raise ValueError(
                f"signature {self.name!r}: verdict {self.verdict!r} is not one of "
                f"{', '.join((*VERDICT_CLASSES, BENIGN))}"
            )
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(
                f"signature {self.name!r}: pattern {self.pattern!r} is not a valid "
                f"regular expression: {exc}"
            ) from None

    @property
    def regex(self) -> Pattern[str]:
        return _compiled(self.pattern)


_CACHE: dict[str, Pattern[str]] = {}


def _compiled(pattern: str) -> Pattern[str]:
    regex = _CACHE.get(pattern)
    if regex is None:
        regex = _CACHE[pattern] = re.compile(pattern)
    return regex


BUILTIN_SIGNATURES: Tuple[Signature, ...] = (
    Signature(
        "buffered-busy",
        r"(_enter_buffered_busy: )?could not acquire lock for <_io\.Buffered\w+.*?> "
        r"at interpreter shutdown, possibly due to daemon threads",
        FATAL_ERROR,
        "a daemon thread was stopped while holding a buffered stream's lock (bpo-23309)",
    ),
    Signature(
        "gil-exit-path",
        r"Fatal Python error: (PyEval_RestoreThread|PyEval_AcquireThread|take_gil|drop_gil"
        r"|PyThreadState_Get|_PyMem_DebugMalloc|PyInterpreterState_Delete)",
        FATAL_ERROR,
        "a thread touched freed runtime state while the interpreter finalized (bpo-39877)",
    ),
    Signature(
        "fatal-error",
        r"^Fatal Python error: ",
        FATAL_ERROR,
        "CPython aborted or faulthandler caught a fatal signal",
    ),
    Signature(
        "runtime-finalizing",
        r"Python runtime state: finalizing",
        FATAL_ERROR,
        "a fatal error raised while the runtime was finalizing",
    ),
    Signature(
        "cxx-unwind",
        r"terminate called without an active exception|FATAL: exception not rethrown",
        FATAL_ERROR,
        "a native thread was unwound by pthread_exit at shutdown (gh-87135)",
    ),
    Signature(
        "most-likely-shutdown",
        r"\(most likely raised during interpreter shutdown\)",
        SHUTDOWN_EXCEPTION,
        "a daemon thread raised after sys.stderr was torn down",
    ),
    Signature(
        "exception-in-thread",
        r"^Exception in thread [^\n]*:\s*$",
        SHUTDOWN_EXCEPTION,
        "a thread raised while the interpreter shut down (exit status stays 0)",
    ),
    Signature(
        "new-thread-at-shutdown",
        r"can't create new thread at interpreter shutdown",
        SHUTDOWN_EXCEPTION,
        "code started a thread during finalization (refused on 3.12+)",
        message=True,
    ),
    Signature(
        "futures-after-shutdown",
        r"cannot schedule new futures after (interpreter )?shutdown",
        SHUTDOWN_EXCEPTION,
        "work submitted to an executor that was shut down at exit",
        message=True,
    ),
    Signature(
        "finalization-error",
        r"PythonFinalizationError",
        SHUTDOWN_EXCEPTION,
        "an operation refused because the interpreter is finalizing (3.13+)",
        message=True,
    ),
    Signature(
        "meta-path-none",
        r"sys\.meta_path is None, Python is likely shutting down",
        SHUTDOWN_EXCEPTION,
        "an import during module teardown",
        message=True,
    ),
    Signature(
        "atexit-error",
        r"^(Error in atexit\._run_exitfuncs:|Exception ignored in atexit callback)",
        SHUTDOWN_EXCEPTION,
        "an atexit callback raised",
    ),
    Signature(
        "exception-ignored",
        r"^Exception ignored (in|on)\b",
        SHUTDOWN_EXCEPTION,
        "an exception was swallowed during shutdown (finalizer, flush, thread join)",
    ),
    Signature(
        "logging-error",
        r"^--- Logging error ---$",
        SHUTDOWN_EXCEPTION,
        "a logging handler failed, typically writing to a stream closed at exit",
    ),
    Signature(
        "traceback",
        r"^Traceback \(most recent call last\):$",
        SHUTDOWN_EXCEPTION,
        "an unhandled traceback was printed after the test finished",
    ),
    Signature(
        "broken-pipe",
        r"BrokenPipeError",
        BENIGN,
        "the reader of stdout went away: the final flush failed (CPython exits with 120)",
        exit_code=120,
        message=True,
    ),
)
