"""Evidence + settings -> verdict.  Pure functions: no processes, no pytest."""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from pytest_daemonexit import faultdump, phases
from pytest_daemonexit.policies import InterpreterBug, Policy
from pytest_daemonexit.processes import signal_name
from pytest_daemonexit.runner import Evidence
from pytest_daemonexit.settings import Settings
from pytest_daemonexit.signatures import (
    BENIGN,
    BUILTIN_SIGNATURES,
    EXIT_CODE,
    FATAL_ERROR,
    HANG,
    LATE_THREAD,
    VERDICT_CLASSES,
    Signature,
)

#: Lines kept from one stderr block in a finding.
BLOCK_LINES = 40
_HEADERS_BEFORE_TRACEBACK = (
    "exception-in-thread",
    "exception-ignored",
    "atexit-error",
    "logging-error",
    "most-likely-shutdown",
)
_CHAINING = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)


@dataclasses.dataclass(frozen=True)
class Finding:
    verdict: str  # one of signatures.VERDICT_CLASSES
    summary: str
    lines: Tuple[str, ...] = ()
    signature: Optional[str] = None
    count: int = 1
    phase: Optional[str] = None  # the phase in which the child printed it, when known


@dataclasses.dataclass(frozen=True)
class Verdict:
    findings: Tuple[Finding, ...]
    phase: str  # last shutdown phase the child reported
    returncode: Optional[int]
    stacks: Tuple[faultdump.ThreadStack, ...] = ()
    stack_source: str = ""
    main_thread: Optional[str] = None
    #: Set when the failure is a known CPython defect on this interpreter (policies.py).
    interpreter_bug: Optional[InterpreterBug] = None

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def kind(self) -> Optional[str]:
        return self.findings[0].verdict if self.findings else None

    @property
    def classes(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(f.verdict for f in self.findings))


def describe_status(returncode: Optional[int]) -> str:
    if returncode is None:
        return "unknown"
    if returncode < 0:
        return f"killed by {signal_name(returncode)} (signal {-returncode})"
    return f"exit status {returncode}"


@dataclasses.dataclass
class _Block:
    signature: Signature
    lines: List[str]
    offset: int = -1  # byte offset of the first line in the text
    specific: Optional[Signature] = None  # a message signature found inside the block

    @property
    def cause(self) -> Signature:
        return self.specific or self.signature


def stderr_blocks(text: str, signatures: Sequence[Signature]) -> List[_Block]:
    """Split stderr into blocks, each starting at a line that matches a signature and
    holding what belongs to it: the traceback after an "Exception in thread" header,
    chained tracebacks, the adjacent lines of a fatal error.  A blank line ends a block
    unless a chained traceback follows."""
    blocks: List[_Block] = []
    current: Optional[_Block] = None
    blank_seen = False
    offset = 0
    for line in text.splitlines(keepends=True):
        line_offset = offset
        offset += len(line.encode("utf-8", "replace"))
        line = line.rstrip("\r\n")
        stripped = line.strip()
        if not stripped:
            blank_seen = current is not None
            continue
        after_chaining = current is not None and current.lines[-1].strip() in _CHAINING
        if (
            blank_seen
            and stripped not in _CHAINING
            and not (after_chaining and stripped.startswith("Traceback"))
        ):
            current = None
        blank_seen = False
        match = next((s for s in signatures if s.regex.search(line)), None)
        if match is not None and current is not None and match.message:
            current.specific = current.specific or match
        elif match is not None and not _continues(current, match):
            current = _Block(match, [], line_offset)
            blocks.append(current)
        if current is not None:
            current.lines.append(line)
    return blocks


def _continues(current: Optional[_Block], match: Signature) -> bool:
    if current is None:
        return False
    last = current.lines[-1].strip()
    if match.name == "traceback":
        return last in _CHAINING or (
            len(current.lines) == 1 and current.signature.name in _HEADERS_BEFORE_TRACEBACK
        )
    return match.verdict == FATAL_ERROR == current.signature.verdict


def _allowed(block: _Block, settings: Settings) -> bool:
    text = "\n".join(block.lines)
    return any(p.search(text) for p in settings.allow_stderr)


_LATE_KINDS = {
    "python": "a thread started with _thread.start_new_thread",
    "native": "a native thread calling back into Python (PyGILState_Ensure)",
    "spinner": "a CPU-bound daemon thread",
}


def _late_threads(evidence: Evidence) -> List[Finding]:
    findings = []
    seen = set()
    for record in evidence.events("late_thread"):
        kind = str(record.get("kind"))
        if kind in seen:
            continue
        seen.add(kind)
        what = _LATE_KINDS.get(kind, kind)
        where = record.get("phase")
        findings.append(
            Finding(
                LATE_THREAD,
                f"{what} ran Python code after the runtime was marked finalizing",
                phase=str(where) if where else None,
            )
        )
    return findings


def judge(
    evidence: Evidence,
    settings: Settings,
    signatures: Iterable[Signature] = BUILTIN_SIGNATURES,
    policy: Optional[Policy] = None,
) -> Verdict:
    """The verdict on one child's exit.  Findings are ordered most specific first.

    With the ``policy`` the child ran under, a failure that policy knows as a CPython
    defect of the child's interpreter is marked as such (``Verdict.interpreter_bug``)."""
    signatures = tuple(signatures)
    findings: List[Finding] = []
    rc = evidence.returncode
    phase = evidence.last_phase

    if evidence.stopped == "exit_timeout":
        findings.append(
            Finding(
                HANG,
                f"the child did not exit within {settings.timeout:g} s after the test "
                f"finished; it was stopped in phase {phases.describe(phase)}",
            )
        )
    elif evidence.stopped == "run_timeout":
        findings.append(
            Finding(
                HANG,
                f"the test did not finish within run_timeout={settings.run_timeout:g} s; "
                "the child was stopped",
            )
        )

    stderr = evidence.stderr_exit
    blocks = stderr_blocks(stderr.text, signatures)
    if not stderr.dropped:  # offsets are exact only when nothing was left out
        for block in blocks:
            block.offset += stderr.start
    else:
        for block in blocks:
            block.offset = -1
    fault_blocks = stderr_blocks(evidence.faults, signatures)
    for block in fault_blocks:
        block.offset = -1
    blocks += fault_blocks
    benign = [b for b in blocks if b.cause.verdict == BENIGN]
    grouped: Dict[str, Tuple[_Block, int]] = {}
    for block in blocks:
        if block.cause.verdict == BENIGN or _allowed(block, settings):
            continue
        key = block.cause.name
        if key in grouped:
            first, count = grouped[key]
            grouped[key] = (first, count + 1)
        else:
            grouped[key] = (block, 1)
    for block, count in grouped.values():
        sig = block.cause
        lines = tuple(block.lines[:BLOCK_LINES])
        if len(block.lines) > BLOCK_LINES:
            lines += (f"[... {len(block.lines) - BLOCK_LINES} more lines]",)
        times = f" ({count} times)" if count > 1 else ""
        where = evidence.phase_at(block.offset) if block.offset >= 0 else None
        findings.append(
            Finding(sig.verdict, f"{sig.description}{times}", lines, sig.name, count, where)
        )

    if evidence.stopped is None and rc is not None and rc != settings.exit_code:
        explained = any(b.cause.exit_code == rc for b in benign)
        if not explained:
            expected = describe_status(settings.exit_code)
            findings.append(
                Finding(
                    EXIT_CODE,
                    f"the child ended with {describe_status(rc)}, expected {expected}, "
                    f"in phase {phases.describe(phase)}",
                )
            )

    findings += _late_threads(evidence)
    findings.sort(key=lambda f: VERDICT_CLASSES.index(f.verdict))
    died = evidence.stopped is not None or (rc is not None and rc < 0)
    if not died and findings and findings[0].phase:
        # Exited by itself: the phase that matters is where the first error was printed.
        phase = findings[0].phase
    dumps = faultdump.parse(evidence.faults) or faultdump.parse(evidence.stderr_exit.text)
    stacks: Tuple[faultdump.ThreadStack, ...] = ()
    source = ""
    if dumps:
        stacks = tuple(faultdump.user_first(dumps[-1].threads, evidence.main_thread))
        source = dumps[-1].header or "faulthandler"
    bug = None
    if findings and policy is not None and evidence.version:
        classes = tuple(dict.fromkeys(f.verdict for f in findings))
        text = "\n".join(line for f in findings for line in (f.summary, *f.lines))
        bug = policy.interpreter_bug(evidence.version, classes, phase, text, evidence.native_stacks)
    return Verdict(tuple(findings), phase, rc, stacks, source, evidence.main_thread, bug)
