"""Which runs a marked test gets (policies x rounds, or a hunt), and their tally.

Pure: no pytest, no processes.  The plugin runs what :func:`schedule` yields, adds each
verdict to a :class:`Tally` per policy, and prints the tallies in the failure report and in
the terminal summary.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from pytest_daemonexit.judge import Verdict
from pytest_daemonexit.policies import Policy


def schedule(
    policies: Sequence[Policy], rounds: int, until_fail: int = 0, first_round: int = 0
) -> Iterator[Tuple[Policy, int]]:
    """(policy, round) pairs in the order they run.

    Normally each policy runs ``rounds`` times, one policy after the other.  A hunt
    (``until_fail`` > 0) cycles through the policies, one round each, for at most
    ``until_fail`` runs; the caller stops at the first failure.
    """
    if until_fail:
        for i in range(until_fail):
            yield policies[i % len(policies)], first_round + i // len(policies)
        return
    for policy in policies:
        for round_ in range(first_round, first_round + rounds):
            yield policy, round_


@dataclasses.dataclass
class Tally:
    """The runs of one test under one policy (on one interpreter)."""

    policy: str
    interpreter: str = ""  # the child's Python version, e.g. "3.12.1"
    runs: int = 0
    failures: int = 0
    classes: List[str] = dataclasses.field(default_factory=list)
    first_failing_round: Optional[int] = None
    first_failing_seed: Optional[int] = None
    interpreter_bug: Optional[str] = None

    def add(self, round_: int, seed: int, verdict: Verdict) -> None:
        self.runs += 1
        if verdict.ok:
            return
        self.failures += 1
        for name in verdict.classes:
            if name not in self.classes:
                self.classes.append(name)
        if self.first_failing_round is None:
            self.first_failing_round, self.first_failing_seed = round_, seed
        if verdict.interpreter_bug is not None:
            self.interpreter_bug = verdict.interpreter_bug.ref

    @property
    def rate(self) -> float:
        return self.failures / self.runs if self.runs else 0.0

    def describe(self) -> str:
        where = f" on Python {self.interpreter}" if self.interpreter else ""
        text = f"{self.policy}{where}: {self.runs} run{'s' if self.runs != 1 else ''}, "
        if not self.failures:
            return text + "no failure"
        text += f"{self.failures} failed ({self.rate:.0%}) {', '.join(self.classes)}"
        text += f"; first failing round {self.first_failing_round}"
        text += f" (run seed {self.first_failing_seed})"
        if self.interpreter_bug:
            text += f"; CPython bug {self.interpreter_bug}"
        return text

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> Tally:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def summary_rows(nodeid: str, tallies: Sequence[Tally]) -> List[Tuple[str, ...]]:
    """Rows of the terminal summary table for one test."""
    rows: List[Tuple[str, ...]] = []
    for tally in tallies:
        first = (
            f"{tally.first_failing_seed} (round {tally.first_failing_round})"
            if tally.first_failing_seed is not None
            else ""
        )
        rows.append(
            (
                nodeid,
                tally.policy,
                tally.interpreter,
                str(tally.runs),
                str(tally.failures),
                f"{tally.rate:.0%}",
                ",".join(tally.classes)
                + (f" [{tally.interpreter_bug}]" if tally.interpreter_bug else ""),
                first,
            )
        )
    return rows


SUMMARY_HEADER = (
    "test",
    "policy",
    "python",
    "runs",
    "failed",
    "rate",
    "verdicts",
    "first failing seed",
)


def format_table(rows: Sequence[Tuple[str, ...]]) -> List[str]:
    """Rows as aligned text, with the header; a column empty in every row is left out
    (the python column when children ran under one interpreter)."""
    keep = [
        i for i in range(len(SUMMARY_HEADER)) if i < 2 or any(row[i] for row in rows) or not rows
    ]
    table = [tuple(row[i] for i in keep) for row in (SUMMARY_HEADER, *rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(keep))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
