"""One JSON record per child run, and the report file that holds them.

Pure: no pytest.  The schema is versioned (:data:`SCHEMA_VERSION`) and documented in the
README; :func:`write_report` replaces the file atomically, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import pytest_daemonexit
from pytest_daemonexit import faultdump
from pytest_daemonexit.judge import Verdict, describe_status
from pytest_daemonexit.processes import signal_name
from pytest_daemonexit.runner import Evidence

SCHEMA = "pytest-daemonexit/report"
SCHEMA_VERSION = 1
#: Bytes of the child's stderr (from the end of the test) kept in a record.
STDERR_EXCERPT = 4096
#: Threads and frames per thread kept in a record.
MAX_THREADS = 16
MAX_FRAMES = 64


def _stack(stack: faultdump.ThreadStack, main: Optional[str]) -> Dict[str, Any]:
    return {
        "thread_id": stack.thread_id,
        "name": stack.name,
        "current": stack.current,
        "main": main is not None and stack.thread_id == main,
        "truncated": stack.truncated or len(stack.frames) > MAX_FRAMES,
        "frames": [
            {"file": f.file, "line": f.line, "function": f.function, "user": is_user}
            for f, is_user in ((f, faultdump.is_user_frame(f)) for f in stack.frames[:MAX_FRAMES])
        ],
    }


def innermost_user_frame(verdict: Verdict) -> Optional[faultdump.Frame]:
    """The innermost frame of the user's code in the failing stacks (threads running
    user code first, as the report shows them)."""
    for stack in verdict.stacks:
        frame = faultdump.innermost_user_frame(stack)
        if frame is not None:
            return frame
    return None


def _excerpt(text: str) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= STDERR_EXCERPT:
        return text
    return "...\n" + data[-STDERR_EXCERPT:].decode("utf-8", "replace")


def run_record(
    *,
    nodeid: str,
    evidence: Evidence,
    verdict: Verdict,
    policy: str,
    round_: int,
    session_seed: int,
    interpreter: Mapping[str, Any],
    test_outcome: str,
    replay: str,
    start: str = "spawn",
) -> Dict[str, Any]:
    """The JSON record of one child run (see the README's schema)."""
    code = evidence.returncode
    frame = innermost_user_frame(verdict)
    bug = verdict.interpreter_bug
    return {
        "nodeid": nodeid,
        "interpreter": dict(interpreter),
        "policy": policy,
        "start": start,
        "seed": evidence.seed,
        "session_seed": session_seed,
        "round": round_,
        "verdict": verdict.kind or "ok",
        "classes": list(verdict.classes),
        "phase": verdict.phase,
        "findings": [
            {
                "verdict": f.verdict,
                "summary": f.summary,
                "phase": f.phase,
                "signature": f.signature,
                "count": f.count,
            }
            for f in verdict.findings
        ],
        "interpreter_bug": None if bug is None else bug.ref,
        "test_outcome": test_outcome,
        "exit": {
            "returncode": code,
            "signal": signal_name(code) if code is not None and code < 0 else None,
            "status": describe_status(code),
            "stopped": evidence.stopped,
        },
        "duration": round(evidence.duration, 6),
        "exit_seconds": None if evidence.exit_seconds is None else round(evidence.exit_seconds, 6),
        "plan": [str(a) for a in evidence.plan],
        "stderr_excerpt": _excerpt(evidence.stderr_exit.text),
        "stack_source": verdict.stack_source or None,
        "stacks": [_stack(s, verdict.main_thread) for s in verdict.stacks[:MAX_THREADS]],
        "user_frame": None
        if frame is None
        else {"file": frame.file, "line": frame.line, "function": frame.function},
        "replay": replay,
    }


def document(
    runs: Sequence[Mapping[str, Any]],
    *,
    session_seed: Optional[int],
    policies: Sequence[str],
    interpreters: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    complete: bool,
    interrupted: bool,
    started: float,
) -> Dict[str, Any]:
    """The whole report file."""
    tests = {r["nodeid"] for r in runs}
    failed_tests = {r["nodeid"] for r in runs if r["verdict"] != "ok"}
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "plugin_version": pytest_daemonexit.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "complete": complete,
        "interrupted": interrupted,
        "session_seed": session_seed,
        "policies": list(policies),
        "interpreters": [dict(i) for i in interpreters],
        "settings": dict(settings),
        "summary": {
            "tests": len(tests),
            "failed_tests": len(failed_tests),
            "runs": len(runs),
            "failed_runs": sum(1 for r in runs if r["verdict"] != "ok"),
        },
        "runs": list(runs),
    }


def write_report(path: str, data: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically (write a sibling, then rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".daemonexit-report-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)
            f.write("\n")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp's 0600 would make the report private
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def check_writable(path: str) -> Optional[str]:
    """Why ``path`` cannot be written, or None."""
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    if os.path.isdir(target):
        return "is a directory"
    if not os.path.isdir(directory):
        return f"its directory {directory} does not exist"
    if not os.access(directory, os.W_OK):
        return f"its directory {directory} is not writable"
    if os.path.exists(target) and not os.access(target, os.W_OK):
        return "is not writable"
    return None


def load_runs(path: str) -> List[Dict[str, Any]]:
    """The run records of a report file (for tools and tests)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a pytest-daemonexit report")
    return list(data["runs"])
