"""Finalization policies: how a child's shutdown is perturbed, decided from a seed.

A policy turns a seeded random generator into a *plan*: a tuple of :class:`Action` s, each
"at this shutdown phase, do this".  The parent computes the plan, so the same seed gives the
same plan whatever happens in the child; the child only carries it out (``perturb.py``).
Pure data and functions: no pytest, no processes.

The built-in policies are modelled on the CPython fixes for daemon threads at finalization
(see the project's reference notes, section D).  Each knows which CPython releases carry its
fix: a failure the fix prevents, on an interpreter without it, is an interpreter bug.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from pytest_daemonexit.signatures import EXIT_CODE, FATAL_ERROR, HANG, LATE_THREAD

Version = Tuple[int, ...]

#: Where a plan can act, in shutdown order.  All but the last are phases the child reports
#: (``phases.py``); ``after_finalize`` is a C-level exit handler (glibc ``__cxa_atexit``),
#: after ``Py_FinalizeEx`` returned, where only C functions can run.
INJECTION_PHASES: Tuple[str, ...] = (
    "test_done",
    "threading_shutdown",
    "atexit",
    "atexit_done",
    "finalizing",
    "gc",
    "module_teardown",
    "interpreter_clear",
    "after_finalize",
)
#: From here on the runtime is finalizing: no thread but the main one may run Python code.
AFTER_FLAG: Tuple[str, ...] = INJECTION_PHASES[4:]

#: action -> (its arguments, what it does).  ``perturb.py`` carries them out.
ACTIONS: Dict[str, Tuple[Tuple[str, ...], str]] = {
    "sleep": (("seconds",), "the main thread sleeps, releasing the GIL"),
    "spin": (("seconds",), "the main thread runs a busy Python loop (GIL switches honoured)"),
    "hold": (
        ("seconds",),
        "the main thread runs C code that holds the GIL without bytecode; at atexit_done it "
        "is the very last atexit callback",
    ),
    "wake": ((), "interrupt every other thread's blocking system call with a no-op signal"),
    "warp": (
        (),
        "timed waits of daemon threads return now, as if their timeout had elapsed, and "
        "from then on at once without releasing the GIL (periodic workers become tight "
        "loops until the runtime stops them)",
    ),
    "starve": (
        ("share", "low", "high", "cap"),
        "delay a share of the daemon threads after each timed wait, log-uniformly between "
        "low and high seconds, at most cap seconds in all",
    ),
    "switch": (("seconds",), "sys.setswitchinterval(seconds)"),
    "spinners": (("count",), "start count CPU-bound daemon threads (GIL pressure)"),
    "late_threads": (
        (),
        "start a Python thread and a native thread that calls back into Python, and wait "
        "(0.5 s at most) until both have tried; either running Python code after "
        "finalization began is a LATE_THREAD failure",
    ),
    "c_delay": (("seconds",), "C exit handler that sleeps (only at after_finalize)"),
    "quiet": (
        (),
        "run no Python code from the flag until interpreter clear (the finalizing, gc "
        "and module_teardown markers are left out)",
    ),
    "storm": (
        ("seconds", "interval"),
        "the parent keeps interrupting the child's threads with signals for a while",
    ),
}


class PolicyError(ValueError):
    """A malformed policy or action."""


@dataclasses.dataclass(frozen=True)
class Action:
    """At ``phase``, do ``do`` with ``args`` (name, number pairs)."""

    phase: str
    do: str
    args: Tuple[Tuple[str, float], ...] = ()

    def arg(self, name: str, default: float = 0.0) -> float:
        return dict(self.args).get(name, default)

    def to_json(self) -> Dict[str, Any]:
        return {"phase": self.phase, "do": self.do, "args": dict(self.args)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Action:
        return action(str(data["phase"]), str(data["do"]), **dict(data.get("args") or {}))

    def __str__(self) -> str:
        args = ", ".join(f"{k}={_num(v)}" for k, v in self.args)
        return f"{self.phase}: {self.do}({args})"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def action(phase: str, do: str, **args: float) -> Action:
    """A validated :class:`Action`."""
    if phase not in INJECTION_PHASES:
        raise PolicyError(f"unknown phase {phase!r}; expected one of {', '.join(INJECTION_PHASES)}")
    if do not in ACTIONS:
        raise PolicyError(f"unknown action {do!r}; expected one of {', '.join(ACTIONS)}")
    allowed = ACTIONS[do][0]
    for name, value in args.items():
        if name not in allowed:
            raise PolicyError(
                f"action {do!r} takes {', '.join(allowed) or 'no arguments'}, not {name!r}"
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise PolicyError(f"action {do!r}: {name}={value!r} must be a finite number >= 0")
    if do == "c_delay" and phase != "after_finalize":
        raise PolicyError("c_delay only acts at after_finalize")
    if phase == "after_finalize" and do != "c_delay":
        raise PolicyError("only c_delay can act at after_finalize (no Python code runs there)")
    if do in ("late_threads", "spinners") and phase == "interpreter_clear":
        # Thread creation from the interpreter-clear audit hook crashes CPython 3.8/3.9.
        raise PolicyError(f"{do} cannot act at interpreter_clear; use module_teardown or earlier")
    return Action(phase, do, tuple((k, float(v)) for k, v in args.items()))


@dataclasses.dataclass(frozen=True)
class InterpreterBug:
    """A CPython defect a policy provokes: which releases have it, and what it looks like.

    ``affected`` holds half-open version ranges ``(first, first_fixed)``; a failure counts
    as this bug when the child's interpreter is in one, the verdict's classes are among
    ``classes``, it happened in ``phases``, the findings' text matches ``pattern`` (when
    set) and, when native stacks were taken, they match ``native`` (when set).
    """

    ref: str
    title: str
    affected: Tuple[Tuple[Version, Version], ...]
    fixed_in: str
    classes: Tuple[str, ...]
    phases: Tuple[str, ...] = AFTER_FLAG
    pattern: str = ""
    native: str = ""

    def affects(self, version: Sequence[int]) -> bool:
        v = tuple(version)
        return any(low <= v < high for low, high in self.affected)

    def matches(
        self,
        version: Sequence[int],
        classes: Sequence[str],
        phase: str,
        text: str = "",
        native_stacks: str = "",
    ) -> bool:
        return (
            self.affects(version)
            and bool(classes)
            and all(c in self.classes for c in classes)
            and phase in self.phases
            and (not self.pattern or re.search(self.pattern, text) is not None)
            and (
                not self.native
                or not native_stacks
                or re.search(self.native, native_stacks) is not None
            )
        )

    def describe(self) -> str:
        return f"CPython {self.ref} ({self.title}); fixed in {self.fixed_in}"


Builder = Callable[[random.Random, Version], Sequence[Action]]


@dataclasses.dataclass(frozen=True)
class Policy:
    """A named way to perturb shutdown.

    ``build(rng, version)`` returns the plan for one run; it must draw every random choice
    from ``rng`` so that a seed reproduces the plan.  ``versions`` is the range of CPython
    versions ``(first, last)`` the policy is meaningful for (``None``: no bound); outside it
    the policy is not run.  ``bugs`` are the interpreter bugs its failures can be.
    """

    name: str
    description: str
    build: Builder
    models: str = ""
    versions: Tuple[Optional[Version], Optional[Version]] = (None, None)
    bugs: Tuple[InterpreterBug, ...] = ()
    default: bool = False

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise PolicyError(
                f"policy name {self.name!r}: expected letters, digits, '-', '_' or '.'"
            )

    def applies_to(self, version: Sequence[int]) -> bool:
        low, high = self.versions
        v = tuple(version[:2])
        return (low is None or v >= tuple(low[:2])) and (high is None or v <= tuple(high[:2]))

    def plan(self, seed: int, version: Sequence[int]) -> Tuple[Action, ...]:
        actions = tuple(self.build(random.Random(seed), tuple(version)))
        for act in actions:
            if not isinstance(act, Action):
                raise PolicyError(f"policy {self.name!r} built {act!r}; expected Action objects")
        return actions

    def phases(self, version: Sequence[int] = (3, 13, 0)) -> Tuple[str, ...]:
        """The phases the policy acts at (over a few seeds: plans may leave some out)."""
        seen = {a.phase for seed in range(8) for a in self.plan(seed, version)}
        return tuple(p for p in INJECTION_PHASES if p in seen)

    def interpreter_bug(
        self,
        version: Sequence[int],
        classes: Sequence[str],
        phase: str,
        text: str = "",
        native_stacks: str = "",
    ) -> Optional[InterpreterBug]:
        for bug in self.bugs:
            if bug.matches(version, classes, phase, text, native_stacks):
                return bug
        return None

    def describe(self) -> List[str]:
        """Lines for ``--daemonexit-list-policies``."""
        low, high = self.versions
        span = (
            "all versions"
            if low is None and high is None
            else f"{_ver(low) if low else ''}..{_ver(high) if high else ''}"
        )
        lines = [f"{self.name}{' (default)' if self.default else ''}: {self.description}"]
        if self.models:
            lines.append(f"    models: {self.models}")
        lines.append(f"    phases: {', '.join(self.phases()) or 'none'}")
        lines.append(f"    CPython: {span}")
        for bug in self.bugs:
            affected = ", ".join(_span(a, b) for a, b in bug.affected)
            lines.append(f"    interpreter bug {bug.ref} on {affected}: fixed in {bug.fixed_in}")
        return lines


def _ver(version: Optional[Version]) -> str:
    return ".".join(map(str, version or ()))


def _span(low: Version, high: Version) -> str:
    """A half-open version range as people say it: "3.9.x", "before 3.9"."""
    if tuple(low) <= (3, 0):
        return f"before {_ver(high)}"
    if len(low) == len(high) == 2 and high == (low[0], low[1] + 1):
        return f"{_ver(low)}.x"
    return f"{_ver(low)} to before {_ver(high)}"


def run_seed(session_seed: int, nodeid: str, policy: str, round_: int = 0) -> int:
    """The seed of one run: the same session seed, test, policy and round give the same."""
    text = f"{session_seed}\0{nodeid}\0{policy}\0{round_}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "big")


def log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


# --- built-in policies ---------------------------------------------------------------


def _baseline(rng: random.Random, version: Version) -> Sequence[Action]:
    return ()


def _spinner_phase(version: Version, wanted: str) -> str:
    """Where spinner threads can start: 3.12.0 to 3.12.2 refuse new threads as soon as
    the interpreter starts finalizing (gh-113964), so there they start with the exit."""
    return "test_done" if (3, 12, 0) <= tuple(version) < (3, 12, 3) else wanted


def _atexit_race(rng: random.Random, version: Version) -> Sequence[Action]:
    # E12: a delay after the last atexit callback, with the daemon threads woken, turns a
    # latent "closed file under a daemon writer" bug into a failure on every run.
    return (
        action("threading_shutdown", "warp"),
        action("threading_shutdown", "wake"),
        action("threading_shutdown", "sleep", seconds=round(log_uniform(rng, 0.001, 0.02), 4)),
        action("atexit_done", "warp"),
        action("atexit_done", "wake"),
        action("atexit_done", "sleep", seconds=round(log_uniform(rng, 0.02, 0.1), 4)),
        # Busy at the very end: a warped daemon thread (a tight loop now) that released the
        # GIL inside a write, holding the stream's lock, waits for it when the flag comes.
        action("atexit_done", "spin", seconds=round(rng.uniform(0.005, 0.02), 4)),
    )


def _late_wakes(rng: random.Random) -> List[Action]:
    """Wake the other threads at some of the phases after the flag, each time followed by
    a GIL-releasing sleep, so the woken threads try to take the GIL back there."""
    late = ["finalizing", "gc", "module_teardown", "interpreter_clear"]
    chosen = [p for p in late if rng.random() < 0.7] or [rng.choice(late)]
    out: List[Action] = []
    for phase in chosen:
        out.append(action(phase, "wake"))
        out.append(action(phase, "sleep", seconds=round(log_uniform(rng, 0.001, 0.02), 4)))
    return out


def _restore_after_free(rng: random.Random, version: Version) -> Sequence[Action]:
    # The article's reproducer: daemon threads that sleep 0 to 1 s, a delay at exit, and
    # wake-ups as late as possible in finalization.
    return (
        action("test_done", "starve", share=1.0, low=0.001, high=1.0, cap=2.0),
        action("atexit_done", "sleep", seconds=round(rng.uniform(0.0, 0.05), 4)),
        *_late_wakes(rng),
        action("after_finalize", "c_delay", seconds=round(log_uniform(rng, 0.001, 0.05), 4)),
    )


def _gil_handoff(rng: random.Random, version: Version) -> Sequence[Action]:
    # Daemon threads queue for the GIL while the main thread releases it inside
    # finalization (flush, GC, module teardown): none may run bytecode after the flag.
    # The GIL pressure starts after the last atexit callback: earlier it would slow down
    # the program's own exit work (every GIL release costing a switch interval) and turn
    # a correct but busy exit into a false hang.
    start = _spinner_phase(version, "atexit_done")
    return (
        action(start, "switch", seconds=round(log_uniform(rng, 1e-5, 1e-3), 6)),
        action(start, "spinners", count=rng.randint(2, 4)),
        action("atexit_done", "warp"),
        action("atexit_done", "wake"),
        action("atexit_done", "spin", seconds=round(rng.uniform(0.002, 0.01), 4)),
        action("finalizing", "sleep", seconds=round(log_uniform(rng, 0.001, 0.01), 4)),
        action("gc", "sleep", seconds=round(log_uniform(rng, 0.001, 0.01), 4)),
        action("module_teardown", "sleep", seconds=round(log_uniform(rng, 0.001, 0.01), 4)),
    )


def _woken_while_waiting(rng: random.Random, version: Version) -> Sequence[Action]:
    # E13/E14: threads queued for the GIL, C code holding it at the very end of atexit
    # while signals arrive, then Python code late in finalization (gh-96387 on 3.9).
    # As in gil-handoff, the pressure only starts once the program's atexit work is done.
    start = _spinner_phase(version, "atexit_done")
    return (
        action(start, "switch", seconds=0.001),
        action(start, "spinners", count=rng.randint(2, 4)),
        action("atexit_done", "wake"),
        action("atexit_done", "storm", seconds=0.1, interval=0.002),
        action("atexit_done", "hold", seconds=round(rng.uniform(0.03, 0.08), 4)),
        action("atexit_done", "quiet"),
        action("interpreter_clear", "spin", seconds=0.002),
    )


def _acquire_at_finalize(rng: random.Random, version: Version) -> Sequence[Action]:
    # Threads that start, or re-enter from native code, just as finalization begins.
    out = [
        action("atexit_done", "wake"),
        action("atexit_done", "late_threads"),
        action("finalizing", "late_threads"),
        action("finalizing", "sleep", seconds=round(log_uniform(rng, 0.001, 0.02), 4)),
        action("module_teardown", "late_threads"),
        action("module_teardown", "wake"),
        action("module_teardown", "sleep", seconds=round(log_uniform(rng, 0.001, 0.02), 4)),
    ]
    if rng.random() < 0.5:
        out.insert(2, action("atexit_done", "sleep", seconds=round(rng.uniform(0.0, 0.01), 4)))
    return out


#: What a crash in the GIL/thread-state code looks like (the fixed paths of fixes 2-4).
_GIL_CRASH = (
    r"Fatal Python error: (PyEval_RestoreThread|PyEval_AcquireThread|take_gil|drop_gil|"
    r"PyThreadState_Get|_PyMem_DebugMalloc|PyInterpreterState_Delete)|SIGSEGV|SIGBUS"
)
BPO_36475 = InterpreterBug(
    "bpo-36475",
    "a thread entered the interpreter after finalization began",
    (((3, 0), (3, 8)),),
    "3.8.0",
    (LATE_THREAD,),
)
BPO_39877 = InterpreterBug(
    "bpo-39877",
    "a daemon thread woke in take_gil and used its freed thread state",
    (((3, 0), (3, 9)),),
    "3.9.0",
    (FATAL_ERROR, EXIT_CODE),
    pattern=_GIL_CRASH,
)
GIL_HANDOFF = InterpreterBug(
    "bpo-39877 (commit 9229eeee)",
    "a daemon thread took the GIL during finalization and ran bytecode",
    (((3, 0), (3, 9)),),
    "3.9.0",
    (LATE_THREAD,),
)
BPO_40010 = InterpreterBug(
    "bpo-39984/bpo-40010",
    "a thread waiting for the GIL was not told to exit while finalizing",
    (((3, 0), (3, 9)),),
    "3.9.0",
    (FATAL_ERROR, EXIT_CODE),
    pattern=_GIL_CRASH,
)
GH_96387 = InterpreterBug(
    "gh-96387",
    "the main thread waits forever in drop_gil after a daemon thread left take_gil "
    "through the finalizing exit path",
    (((3, 9), (3, 10)),),
    "3.11.0 (3.10 does not have it; 3.9 was never fixed)",
    (HANG,),
    # The hang comes at the first bytecode after the flag, before any later marker.
    ("atexit_done", *AFTER_FLAG),
    native=r"drop_gil",
)

BUILTIN_POLICIES: Tuple[Policy, ...] = (
    Policy(
        "baseline",
        "no perturbation: the natural run",
        _baseline,
        default=True,
    ),
    Policy(
        "atexit-race",
        "after the last atexit callback (and after threading's exit callbacks), wake the "
        "daemon threads, make their timed waits return and delay the exit, so they run "
        "into what atexit callbacks closed: files, logging, executors",
        _atexit_race,
        models="the commonest user bug: cleanup at exit racing a background thread",
        default=True,
    ),
    Policy(
        "restore-after-free",
        "daemon threads sleep for random 1 ms to 1 s stretches; after the runtime is "
        "marked finalizing they are woken out of their system calls at random phases "
        "while the main thread releases the GIL; a C exit handler delays the end",
        _restore_after_free,
        models="fix 2, bpo-39877 (CPython 3.9): daemon threads woken in take_gil late in "
        "finalization",
        bugs=(BPO_39877,),
        default=True,
    ),
    Policy(
        "gil-handoff",
        "CPU-bound daemon threads and a tiny switch interval keep threads queued for the "
        "GIL while the main thread releases it during finalization (flush, GC, module "
        "teardown); no other thread may run bytecode then",
        _gil_handoff,
        models="fix 3, bpo-39877 follow-up 9229eeee (CPython 3.9): exit check before and "
        "after taking the GIL",
        bugs=(GIL_HANDOFF,),
    ),
    Policy(
        "woken-while-waiting",
        "CPU-bound daemon threads queue for the GIL, C code holds it at the very end of "
        "atexit while signals keep arriving, then Python code runs late in finalization",
        _woken_while_waiting,
        models="fix 4, bpo-39984 and bpo-40010 (CPython 3.9), and its follow-up gh-96387 "
        "(drop_gil hang, CPython 3.9)",
        bugs=(BPO_40010, GH_96387),
    ),
    Policy(
        "acquire-at-finalize",
        "threads start, and native threads call back into Python, just as the runtime is "
        "marked finalizing and during module teardown",
        _acquire_at_finalize,
        models="fix 1, bpo-36475 (CPython 3.8): threads entering through "
        "PyEval_AcquireThread / PyGILState_Ensure while finalizing must exit",
        bugs=(BPO_36475,),
    ),
)


def registry(extra: Sequence[Policy] = ()) -> Dict[str, Policy]:
    """Name -> policy; ``extra`` (from plugins) may not reuse a name."""
    table: Dict[str, Policy] = {}
    for policy in (*BUILTIN_POLICIES, *extra):
        if not isinstance(policy, Policy):
            raise PolicyError(f"{policy!r} is not a pytest_daemonexit.Policy")
        if policy.name in table or policy.name in ("all", "default"):
            raise PolicyError(f"policy name {policy.name!r} is already taken")
        table[policy.name] = policy
    return table


def select(names: Sequence[str], table: Mapping[str, Policy]) -> Tuple[Policy, ...]:
    """Policies by name, in order; ``default`` and ``all`` expand.  Empty: the defaults."""
    out: Dict[str, Policy] = {}
    for name in names or ("default",):
        if name == "all":
            out.update(table)
        elif name == "default":
            out.update((p.name, p) for p in table.values() if p.default)
        elif name in table:
            out[name] = table[name]
        else:
            raise PolicyError(
                f"unknown policy {name!r}; expected one of {', '.join(table)} (or 'default', 'all')"
            )
    return tuple(out.values())


def policies_markdown(table: Optional[Mapping[str, Policy]] = None) -> str:
    """The README's table of built-in policies, generated from the policies themselves."""
    rows = [
        "| policy | default | models | what it does | phases | interpreter bugs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for policy in (table or registry()).values():
        bugs = "; ".join(
            f"{b.ref} on "
            + ", ".join(_span(a, z) for a, z in b.affected)
            + f", fixed in {b.fixed_in}"
            for b in policy.bugs
        )
        rows.append(
            f"| `{policy.name}` | {'yes' if policy.default else 'no'} | "
            f"{policy.models or '—'} | {policy.description} | "
            f"{', '.join(policy.phases()) or '—'} | {bugs or '—'} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # pragma: no cover - documentation helper
    print(policies_markdown(), end="")
