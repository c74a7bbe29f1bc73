"""Post-exit checks: user callables that look at what a child left behind.

A check runs in the parent after the child has exited, so it sees what really survived the
exit: the files a background writer flushed (or did not) in the test's ``tmp_path``, the
child's output, its verdict.  No pytest needed.
"""

from __future__ import annotations

import dataclasses
import traceback
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

from pytest_daemonexit.judge import Finding, Verdict
from pytest_daemonexit.runner import Evidence
from pytest_daemonexit.signatures import DATA_LOST

#: Lines of a check's traceback kept in its finding.
TRACEBACK_LINES = 25


@dataclasses.dataclass(frozen=True)
class ExitResult:
    """What a post-exit check gets: one run of one test, after the child exited."""

    evidence: Evidence
    verdict: Verdict
    tmp_path: Optional[Path]  # the test's tmp_path in the child, when it used one
    policy: str = ""
    seed: int = 0
    round: int = 0
    user_properties: Tuple[Tuple[str, Any], ...] = ()  # record_property() in the child

    @property
    def returncode(self) -> Optional[int]:
        return self.evidence.returncode

    @property
    def stdout(self) -> str:
        """Everything the child printed to stdout (head and tail when it was large)."""
        return self.evidence.stdout_test.text + self.evidence.stdout_exit.text

    @property
    def stderr(self) -> str:
        return self.evidence.stderr_test.text + self.evidence.stderr_exit.text

    @property
    def exit_stdout(self) -> str:
        """What the child printed to stdout after the test finished."""
        return self.evidence.stdout_exit.text

    def property(self, name: str, default: Any = None) -> Any:
        """The last value the test recorded with ``record_property(name, ...)``."""
        found = default
        for key, value in self.user_properties:
            if key == name:
                found = value
        return found


def _name(check: Callable[..., Any]) -> str:
    return getattr(check, "__qualname__", None) or getattr(check, "__name__", None) or repr(check)


def run_checks(checks: Sequence[Callable[..., Any]], result: ExitResult) -> List[Finding]:
    """Run each check; an AssertionError, ``False`` or a message string is lost data, any
    other exception a broken check.  Both become ``DATA_LOST`` findings."""
    findings = []
    for check in checks:
        name = _name(check)
        try:
            outcome = check(result)
        except AssertionError as exc:
            lines = tuple(str(exc).splitlines()) or ("assert failed",)
            findings.append(Finding(DATA_LOST, f"post-exit check {name} failed", lines))
            continue
        except Exception as exc:
            text = traceback.format_exception(type(exc), exc, exc.__traceback__)
            lines = tuple("".join(text).splitlines()[-TRACEBACK_LINES:])
            findings.append(
                Finding(
                    DATA_LOST,
                    f"post-exit check {name} raised {type(exc).__name__} (a bug in the "
                    "check itself, or what it read was not there)",
                    lines,
                )
            )
            continue
        if outcome is False:
            findings.append(Finding(DATA_LOST, f"post-exit check {name} returned False"))
        elif isinstance(outcome, str) and outcome:
            findings.append(Finding(DATA_LOST, f"post-exit check {name} failed", (outcome,)))
    return findings


def with_findings(verdict: Verdict, findings: Sequence[Finding]) -> Verdict:
    """``verdict`` with the checks' findings added after its own."""
    if not findings:
        return verdict
    return dataclasses.replace(verdict, findings=(*verdict.findings, *findings))
