"""Turn a verdict into the text a user reads when a marked test fails at exit."""

from __future__ import annotations

from typing import List, Optional, Sequence

from pytest_daemonexit import faultdump, phases
from pytest_daemonexit.judge import Verdict, describe_status
from pytest_daemonexit.runner import Evidence

_OWN_FLUSH = "pytest_daemonexit/injection.py"
_AFTER_THREADS_STOPPED = ("finalizing", "gc", "module_teardown", "interpreter_clear")
#: Threads shown in full; the others are summarised.
MAX_THREADS = 8
STDERR_TAIL_LINES = 30


def _where(verdict: Verdict) -> Optional[str]:
    for stack in verdict.stacks:
        frame = faultdump.innermost_user_frame(stack)
        if frame is not None:
            line = "?" if frame.line is None else frame.line
            return f"{frame.function} at {frame.file}:{line} (thread {stack.thread_id})"
    return None


def format_verdict(
    verdict: Verdict,
    evidence: Evidence,
    reproduce: Optional[str] = None,
    policy: Optional[str] = None,
    passed: Sequence[str] = (),
) -> str:
    """The failure message: class, phase, policy and seed, exit status, stderr, stacks,
    replay command."""
    lines: List[str] = []
    classes = ", ".join(verdict.classes)
    lines.append(f"daemon exit: {classes} in phase {phases.describe(verdict.phase)}")
    bug = verdict.interpreter_bug
    if bug is not None:
        lines.append(
            f"  interpreter bug: {bug.describe()}; this interpreter lacks the fix "
            "(--daemonexit-interpreter-bugs=xfail reports it as an expected failure)"
        )
    if policy is not None:
        lines.append(f"  policy: {policy} (run seed {evidence.seed})")
        if evidence.plan:
            lines.append("  perturbation: " + "; ".join(str(a) for a in evidence.plan))
        for note in evidence.events("note"):
            lines.append(f"  note: {note.get('text')}")
        if passed:
            lines.append("  runs of this test:")
            lines.extend(f"    {text}" for text in passed)
    status = describe_status(evidence.returncode)
    if evidence.stopped:
        status += " (stopped by pytest-daemonexit)"
    lines.append(f"  exit: {status}")
    for record in evidence.events("reaped"):
        lines.append(
            f"  note: {record.get('count')} process(es) the test started were still running "
            "at interpreter clear and were killed"
        )
    if evidence.exit_seconds is not None:
        lines.append(f"  time from the end of the test to exit: {evidence.exit_seconds:.3f} s")
    if evidence.version:
        lines.append(
            f"  interpreter: {evidence.argv[0]} (Python {'.'.join(map(str, evidence.version))})"
        )
    for finding in verdict.findings:
        printed = f" (printed in phase {finding.phase})" if finding.phase else ""
        lines.append(f"- {finding.verdict}{printed}: {finding.summary}")
        for text in finding.lines:
            lines.append(f"    {text}")
    where = _where(verdict)
    if where:
        lines.append(f"  innermost user frame: {where}")
    if verdict.stacks:
        lines.append("")
        lines.append(f"stacks ({verdict.stack_source}), user code marked with '>':")
        for stack in verdict.stacks[:MAX_THREADS]:
            lines.extend(faultdump.format_stack(stack, main=verdict.main_thread))
        if any(_OWN_FLUSH in str(f) for s in verdict.stacks for f in s.frames):
            lines.append(
                "  (the frame in pytest_daemonexit/injection.py is the interpreter's "
                "final flush of sys.stdout, wrapped to mark the phase)"
            )
        if verdict.phase in _AFTER_THREADS_STOPPED:
            lines.append(
                "  (daemon threads no longer appear in Python stacks once the "
                "runtime is finalizing; see the native stacks when there are any)"
            )
        if len(verdict.stacks) > MAX_THREADS:
            lines.append(f"  ... {len(verdict.stacks) - MAX_THREADS} more threads")
    elif evidence.stopped:
        lines.append("")
        lines.append(
            "stacks: faulthandler produced no dump (it is off once the interpreter "
            "state is being cleared, or the test disabled it)"
        )
    if evidence.native_stacks:
        lines.append("")
        lines.append("native stacks (every OS thread, innermost frame first):")
        lines.extend("  " + line for line in evidence.native_stacks.splitlines())
    shown = {text for finding in verdict.findings for text in finding.lines}
    rest = [
        line
        for line in evidence.stderr_exit.text.splitlines()
        if line not in shown and not (verdict.stacks and faultdump.is_dump_line(line))
    ]
    if rest and any(line.strip() for line in rest):
        lines.append("")
        lines.append("stderr after the test (last lines):")
        lines.extend("  " + line for line in rest[-STDERR_TAIL_LINES:])
    if reproduce:
        lines.append("")
        lines.append("reproduce with:")
        lines.append(f"  {reproduce}")
    return "\n".join(lines)
