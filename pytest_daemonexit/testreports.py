"""Rebuild the child's test reports in the parent and fold the exit verdict into them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

import pytest

from pytest_daemonexit.runner import Evidence


class _Crash:
    """What pytest's short summary and junitxml read from ``longrepr.reprcrash``."""

    def __init__(self, message: str, path: str, lineno: int) -> None:
        self.message = message
        self.path = path
        self.lineno = lineno


class ExitFailureRepr:
    """A failure at exit, optionally after the test's own failure (both are shown)."""

    def __init__(self, text: str, summary: str, item: pytest.Item, original: Any = None) -> None:
        self.text = text
        self.original = original
        path, lineno = str(item.location[0]), (item.location[1] or 0) + 1
        crash = getattr(original, "reprcrash", None)
        self.reprcrash = crash if crash is not None else _Crash(summary, path, lineno)

    def toterminal(self, tw: Any) -> None:
        if self.original is not None:
            if hasattr(self.original, "toterminal"):
                self.original.toterminal(tw)
            else:
                tw.line(str(self.original))
            tw.line("")
            tw.sep("-", "daemon exit")
        for line in self.text.splitlines():
            tw.line(line)

    def __str__(self) -> str:
        parts = []
        if self.original is not None:
            parts.append(str(self.original))
        parts.append(self.text)
        return "\n\n".join(parts)


def synthetic(
    item: pytest.Item,
    when: Literal["setup", "call", "teardown"],
    outcome: Literal["passed", "failed", "skipped"],
    longrepr: Any,
) -> pytest.TestReport:
    """A report for a phase the child did not report itself."""
    return pytest.TestReport(item.nodeid, item.location, {}, outcome, longrepr, when, [], 0.0)


def _child_reports(item: pytest.Item, evidence: Evidence) -> Dict[str, pytest.TestReport]:
    by_when: Dict[str, pytest.TestReport] = {}
    for record in evidence.events("report"):
        data = record.get("report")
        if not isinstance(data, dict):
            continue
        if isinstance(data.get("longrepr"), list):
            # A skip's (path, lineno, reason) tuple came through JSON as a list.
            data = {**data, "longrepr": tuple(data["longrepr"])}
        report = item.config.hook.pytest_report_from_serializable(config=item.config, data=data)
        if isinstance(report, pytest.TestReport) and report.when in ("setup", "call", "teardown"):
            report.nodeid, report.location = item.nodeid, item.location
            by_when.setdefault(report.when, report)
    return by_when


def child_outcome(evidence: Evidence) -> str:
    """ "failed" or "skipped" when the child reported that for the test, else "passed"."""
    outcomes = [(r.get("report") or {}).get("outcome") for r in evidence.events("report")]
    if "failed" in outcomes or not outcomes:
        return "failed"
    if "skipped" in outcomes:
        return "skipped"
    return "passed"


def child_tmp_path(evidence: Evidence) -> Optional[Path]:
    """The test's tmp_path in the child, when it used one."""
    for record in evidence.events("tmp_path"):
        if isinstance(record.get("path"), str):
            return Path(record["path"])
    return None


def child_user_properties(evidence: Evidence) -> Tuple[Tuple[str, Any], ...]:
    """What the test recorded with ``record_property`` in the child."""
    found: List[Tuple[str, Any]] = []
    for record in evidence.events("report"):
        data = record.get("report") or {}
        for pair in data.get("user_properties") or ():
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                found.append((str(pair[0]), pair[1]))
    return tuple(found)


def _why_silent(evidence: Evidence) -> str:
    """A child that exited by itself without a word after the test's setup: it left
    without pytest, or it cut its own channel to pytest."""
    if evidence.returncode is None or evidence.returncode < 0 or evidence.test_finished:
        return ""
    return (
        "\nnothing more came from the child after the test's setup: the test ended the"
        " process (os._exit),\nor closed the descriptor the child reports on (closing"
        " descriptors it did not open, os.closerange(3, ...) for one, closes it)"
    )


def _why_missing(evidence: Evidence) -> str:
    errors = evidence.events("collect_error")
    if errors:
        texts = [str((e.get("report") or {}).get("longrepr", "")) for e in errors]
        return "the child could not collect this test:\n" + "\n".join(texts)
    collected = evidence.events("collected")
    if collected and not collected[-1].get("nodeids"):
        out = evidence.stdout_exit.text or evidence.stdout_test.text
        tail = "\n".join(out.splitlines()[-15:])
        return f"the child collected no test for this node id; its output ended with:\n{tail}"
    # Nothing reported: pytest in the child refused its command line, or the child died.
    text = "the child ended before it reported this phase"
    for name, part in (
        ("stderr", evidence.stderr_test.text + evidence.stderr_exit.text),
        ("stdout", evidence.stdout_test.text + evidence.stdout_exit.text),
    ):
        lines = [line for line in part.splitlines() if line.strip()]
        if lines:
            text += f"; its {name} ended with:\n" + "\n".join(lines[-15:])
    return text


def build(
    item: pytest.Item,
    evidence: Evidence,
    failure_text: Optional[str],
    failure_summary: str,
) -> List[pytest.TestReport]:
    """Setup, call and teardown reports as if the test had run in-process, with the exit
    verdict (``failure_text``, None when the exit was clean) folded in."""
    by_when = _child_reports(item, evidence)
    crash = _Crash(
        failure_summary or "the child could not run this test",
        str(item.location[0]),
        (item.location[1] or 0) + 1,
    )
    placed = failure_text is None
    extra = "" if failure_text is None else "\n\n" + failure_text

    if "setup" not in by_when:
        text = _why_missing(evidence) + extra
        by_when["setup"] = synthetic(item, "setup", "failed", _TextRepr(text, crash))
        placed = True
    setup = by_when["setup"]
    if setup.passed and "call" not in by_when:
        text = "the child did not finish the test's call phase" + _why_silent(evidence) + extra
        by_when["call"] = synthetic(item, "call", "failed", _TextRepr(text, crash))
        placed = True
    if "teardown" not in by_when:
        if placed:
            by_when["teardown"] = synthetic(item, "teardown", "passed", None)
        else:
            text = "the child did not finish the test's teardown" + extra
            by_when["teardown"] = synthetic(item, "teardown", "failed", _TextRepr(text, crash))
            placed = True

    if not placed and failure_text is not None:
        target = by_when.get("call") or (setup if setup.failed else by_when["teardown"])
        original = target.longrepr if target.failed else None
        # pytest accepts any object with toterminal() as a longrepr (as xdist's do).
        target.longrepr = ExitFailureRepr(  # type: ignore[assignment]
            failure_text, failure_summary, item, original
        )
        target.outcome = "failed"
        if hasattr(target, "wasxfail"):
            del target.wasxfail
    return [by_when[w] for w in ("setup", "call", "teardown") if w in by_when]


class _TextRepr:
    def __init__(self, text: str, crash: _Crash) -> None:
        self.text = text
        self.reprcrash = crash

    def toterminal(self, tw: Any) -> None:
        for line in self.text.splitlines():
            tw.line(line)

    def __str__(self) -> str:
        return self.text
