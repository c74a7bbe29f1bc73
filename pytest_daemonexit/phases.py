"""The shutdown phases a child reports, in the order CPython goes through them.

The child writes a marker when it enters each phase (see ``injection.py``); the last marker
the parent received says where a crash or a hang happened.  Step numbers refer to
``Py_FinalizeEx`` as described in the project's reference notes.
"""

from __future__ import annotations

from typing import Dict, Tuple

#: (name, description), in the order a clean exit reaches them.
PHASES: Tuple[Tuple[str, str], ...] = (
    ("test", "running the test (setup, call, teardown) in the child"),
    ("session_end", "the test finished; the child's pytest session is ending"),
    ("test_done", "the test finished; the main module is returning"),
    ("threading_shutdown", "threading._shutdown(): joining non-daemon threads"),
    ("atexit", "running atexit callbacks"),
    ("atexit_done", "last atexit callback; the runtime is about to be marked finalizing"),
    ("finalizing", "runtime finalizing: flushing std streams, daemon threads are stopped"),
    ("gc", "garbage collection during finalization"),
    ("module_teardown", "module teardown: sys.modules is being cleared"),
    ("interpreter_clear", "interpreter state cleared (faulthandler is already off)"),
)

PHASE_NAMES: Tuple[str, ...] = tuple(name for name, _ in PHASES)
_DESCRIPTIONS: Dict[str, str] = dict(PHASES)
_ORDER: Dict[str, int] = {name: i for i, name in enumerate(PHASE_NAMES)}


def describe(phase: str) -> str:
    """``"name (what happens there)"`` for a phase name."""
    text = _DESCRIPTIONS.get(phase)
    return f"{phase} ({text})" if text else phase


def order(phase: str) -> int:
    """Position of a phase in the shutdown sequence; unknown names sort last."""
    return _ORDER.get(phase, len(_ORDER))
