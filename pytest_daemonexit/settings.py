"""Settings: every option described once, validated once, frozen per test.

Each setting can be given as a marker keyword, a command-line option and an ini value;
precedence is marker > command line > ini > default.  The same help text feeds ``--help``,
the ini description and the README table (``python -m pytest_daemonexit.settings``).
"""

from __future__ import annotations

import dataclasses
import re
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Mapping,
    Optional,
    Pattern,
    Sequence,
    Tuple,
    cast,
)

MARKER = "daemon_exit"


class SettingError(ValueError):
    """A bad setting value; the message says what was expected."""


def _shown(value: object) -> str:
    """repr() for a message: bounded, and never raising (repr() of an int past the int/str
    conversion limit raises ValueError, a user's __repr__ anything)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= 200 else text[:200] + "..."


def _seconds(value: object, allow_zero: bool) -> float:
    if isinstance(value, bool):
        raise SettingError("expected a number of seconds, not a boolean")
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise SettingError("expected a number of seconds") from None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise SettingError("expected a finite number of seconds")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise SettingError(
            "expected a number of seconds >= 0 (0 disables it)"
            if allow_zero
            else "expected a number of seconds > 0"
        )
    return seconds


def parse_timeout(value: object) -> float:
    return _seconds(value, allow_zero=False)


def parse_run_timeout(value: object) -> float:
    return _seconds(value, allow_zero=True)


def parse_exit_code(value: object) -> int:
    if isinstance(value, bool):
        raise SettingError("expected an integer exit status, not a boolean")
    if isinstance(value, float) and not value.is_integer():
        raise SettingError("expected an integer exit status")
    try:
        code = int(cast(Any, value))
    except (TypeError, ValueError, OverflowError):
        raise SettingError(
            "expected an integer exit status (0..255, or -N for death by signal N)"
        ) from None
    if not -64 <= code <= 255:
        raise SettingError("expected an exit status in 0..255, or -N for death by signal N")
    return code


def _strings(value: object) -> Tuple[str, ...]:
    if isinstance(value, str):
        items: Iterable[object] = [value]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise SettingError("expected a string or a list of strings")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise SettingError(f"expected strings, got {type(item).__name__} {_shown(item)}")
        if item.strip():
            out.append(item)
    return tuple(out)


def parse_patterns(value: object) -> Tuple[Pattern[str], ...]:
    patterns = []
    for text in _strings(value):
        try:
            patterns.append(re.compile(text, re.MULTILINE))
        except (re.error, OverflowError, RecursionError) as exc:
            # OverflowError: a repetition count too large; RecursionError: nested too deep.
            raise SettingError(f"{_shown(text)} is not a valid regular expression: {exc}") from None
    return tuple(patterns)


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise SettingError("expected true or false")


def parse_warnings(value: object) -> Tuple[str, ...]:
    filters = _strings(value)
    for text in filters:
        if text.count(":") > 4 or text.split(":", 1)[0] not in (
            "default",
            "error",
            "ignore",
            "always",
            "module",
            "once",
            "all",
            "d",
            "e",
            "i",
            "a",
            "m",
            "o",
        ):
            raise SettingError(
                f"{_shown(text)} is not a -W filter (action:message:category:module:lineno, "
                "action one of default, error, ignore, always, module, once)"
            )
    return filters


def parse_policies(value: object) -> Tuple[str, ...]:
    """Policy names, comma-separated or as a list; the names are checked against the
    registered policies where those are known (the plugin)."""
    names = []
    for text in _strings(value):
        for name in text.split(","):
            name = name.strip()
            if not name:
                continue
            if not all(c.isalnum() or c in "-_." for c in name):
                raise SettingError(f"{name!r} is not a policy name")
            if name not in names:
                names.append(name)
    return tuple(names)


SEED_WORDS = ("random", "last")


def parse_seed(value: object) -> str:
    """A session seed: a non-negative integer, ``random`` or ``last`` (kept as text)."""
    text = str(value).strip()
    if text in SEED_WORDS:
        return text
    try:
        seed = int(text, 0)
    except ValueError:
        raise SettingError("expected a non-negative integer, 'random' or 'last'") from None
    if not 0 <= seed < 2**64:
        raise SettingError("expected an integer from 0 to 2**64-1")
    return str(seed)


INTERPRETER_BUG_MODES = ("fail", "xfail")


def parse_interpreter_bugs(value: object) -> str:
    if value not in INTERPRETER_BUG_MODES:
        raise SettingError(f"expected one of {', '.join(INTERPRETER_BUG_MODES)}")
    return str(value)


def _count(value: object, minimum: int, what: str) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise SettingError(f"expected {what}")
    try:
        number = int(cast(Any, value))
    except (TypeError, ValueError, OverflowError):
        raise SettingError(f"expected {what}") from None
    if number < minimum:
        raise SettingError(f"expected {what}")
    return number


def parse_rounds(value: object) -> int:
    return _count(value, 1, "a whole number of runs >= 1")


def parse_until_fail(value: object) -> int:
    return _count(value, 0, "a whole number of runs >= 0 (0 turns it off)")


def parse_first_round(value: object) -> int:
    return _count(value, 0, "a round number >= 0")


def parse_checks(value: object) -> Tuple[Callable[..., Any], ...]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if not callable(item):
            raise SettingError(
                f"expected a callable (or a list of them) taking the run's ExitResult, got "
                f"{type(item).__name__} {_shown(item)}"
            )
    return tuple(cast(Callable[..., Any], item) for item in items)


def parse_native_stacks(value: object) -> str:
    if value not in NATIVE_STACK_TOOLS:
        raise SettingError(f"expected one of {', '.join(NATIVE_STACK_TOOLS)}")
    return str(value)


NATIVE_STACK_TOOLS = ("auto", "gdb", "py-spy", "off")


def parse_pythons(value: object) -> Tuple[str, ...]:
    """Interpreters, comma-separated or as a list; they are probed by the plugin."""
    names = []
    for text in _strings(value):
        for name in text.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return tuple(names)


START_MODES = ("auto", "forkserver", "spawn")


def parse_start(value: object) -> str:
    if value not in START_MODES:
        raise SettingError(f"expected one of {', '.join(START_MODES)}")
    return str(value)


def parse_jobs(value: object) -> int:
    """A number of concurrent child runs; 0 (or 'auto') means one per usable core."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return 0
    return _count(value, 0, "a whole number of concurrent runs >= 1, or auto")


def parse_report_path(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SettingError("expected a file path for the JSON report")
    return value.strip()


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One setting: its marker keyword, option, ini name, help and parser."""

    name: str
    default: Any
    parse: Callable[[object], Any]
    help: str
    metavar: str = ""
    kind: str = "value"  # "value", "list" (repeatable) or "flag"
    marker: bool = True  # settable per test with the marker
    cli: str = ""  # the option's and ini value's name when it differs from the keyword
    shown_default: str = ""  # how the README shows the default, when repr() would not do
    command_line: bool = True  # False: a marker keyword only (a Python object, say)

    @property
    def option(self) -> str:
        return "--daemonexit-" + (self.cli or self.name).replace("_", "-")

    @property
    def ini(self) -> str:
        return "daemonexit_" + (self.cli or self.name)

    @property
    def dest(self) -> str:
        return "daemonexit_" + self.name

    @property
    def ini_type(self) -> Optional[str]:
        return {"list": "linelist", "flag": "bool"}.get(self.kind)


OPTIONS: Tuple[OptionSpec, ...] = (
    OptionSpec(
        "timeout",
        10.0,
        parse_timeout,
        "Seconds a marked test's child may take from the end of the test's teardown to "
        "process exit before it is judged a HANG (default 10).",
        "SECONDS",
    ),
    OptionSpec(
        "exit_code",
        0,
        parse_exit_code,
        "Exit status the child must end with; -N expects death by signal N (default 0).",
        "N",
    ),
    OptionSpec(
        "allow_stderr",
        (),
        parse_patterns,
        "Regular expression; a stderr block it matches does not fail the test "
        "(repeatable; ini: one per line).",
        "REGEX",
        kind="list",
    ),
    OptionSpec(
        "run_timeout",
        300.0,
        parse_run_timeout,
        "Seconds the test itself (setup, call, teardown) may run in the child before the "
        "child is stopped and the test fails as a HANG; 0 means no limit (default 300).",
        "SECONDS",
    ),
    OptionSpec(
        "unbuffered",
        False,
        parse_bool,
        "Run the child with unbuffered std streams (-u). Off by default: PYTHONUNBUFFERED "
        "is removed from the child's environment because it hides the commonest "
        "daemon-thread crash.",
        kind="flag",
    ),
    OptionSpec(
        "dev_mode",
        False,
        parse_bool,
        "Run the child in Python's development mode (-X dev).",
        kind="flag",
    ),
    OptionSpec(
        "warnings",
        (),
        parse_warnings,
        "Warning filter passed to the child as -W (repeatable; ini: one per line). "
        "PYTHONWARNINGS is removed from the child's environment.",
        "FILTER",
        kind="list",
    ),
    OptionSpec(
        "policies",
        (),
        parse_policies,
        "Finalization policies to run each marked test under, comma-separated "
        "(repeatable; ini: one per line); 'default' for the default set, 'all' for every "
        "registered policy. See --daemonexit-list-policies (default: default).",
        "NAME[,NAME]",
        kind="list",
        cli="policy",
        shown_default="default",
    ),
    OptionSpec(
        "rounds",
        1,
        parse_rounds,
        "Runs per policy, each with its own seed; the summary gives each policy's failure "
        "rate (default 1).",
        "N",
    ),
    OptionSpec(
        "until_fail",
        0,
        parse_until_fail,
        "Hunt: keep running the test, cycling through its policies with new seeds, until "
        "it fails or N runs are done; 0 turns it off (default 0).",
        "N",
    ),
    OptionSpec(
        "check",
        (),
        parse_checks,
        "Callable (or list of them) run in the parent after the child exited, with a "
        "pytest_daemonexit.ExitResult (the child's tmp_path, output, verdict); an "
        "AssertionError, False or a message string is a DATA_LOST failure. Marker only.",
        command_line=False,
    ),
    OptionSpec(
        "seed",
        "random",
        parse_seed,
        "Session seed from which every run's perturbation is derived, and the children's "
        "PYTHONHASHSEED unless the environment sets one: an integer, 'random' (a new one "
        "per session, shown in the header) or 'last' (the previous session's, from "
        "pytest's cache) (default random).",
        "N",
        marker=False,
    ),
    OptionSpec(
        "interpreter_bugs",
        "fail",
        parse_interpreter_bugs,
        "What a failure that is a known CPython bug of the child's interpreter does to "
        "the test: fail, or xfail (reported as expected failure, naming the bug and the "
        "first fixed release) (default fail).",
        "fail|xfail",
    ),
    OptionSpec(
        "first_round",
        0,
        parse_first_round,
        "Number of the first round (replay commands use it to repeat one run) (default 0).",
        "N",
        marker=False,
    ),
    OptionSpec(
        "list_policies",
        False,
        parse_bool,
        "Print every registered policy (what it models, its phases, its CPython "
        "versions) and exit.",
        kind="flag",
        marker=False,
    ),
    OptionSpec(
        "native_stacks",
        "auto",
        parse_native_stacks,
        "Tool for native stacks of every thread when a child hangs: auto (gdb, else "
        "py-spy, when installed), gdb, py-spy or off (default auto).",
        "TOOL",
        marker=False,
    ),
    OptionSpec(
        "pythons",
        (),
        parse_pythons,
        "Interpreters to run each marked test's children under, comma-separated paths "
        "or commands on PATH (repeatable; ini: one per line); 'current' is the one "
        "running pytest. Each needs pytest and this plugin installed; verdicts are "
        "reported per interpreter (default: current).",
        "PATH[,PATH]",
        kind="list",
        marker=False,
        cli="python",
        shown_default="current",
    ),
    OptionSpec(
        "start",
        "auto",
        parse_start,
        "How children start: forkserver (forked from a server per interpreter that has "
        "imported pytest and parsed the command line once; Linux), spawn (a new "
        "interpreter per run), or auto (forkserver where it can run, else spawn) "
        "(default auto).",
        "MODE",
        marker=False,
    ),
    OptionSpec(
        "jobs",
        0,
        parse_jobs,
        "Child runs at once: the runs of a test (policies, rounds, interpreters) and of the "
        "tests after it; auto means one per usable core, shared between xdist workers "
        "(default auto).",
        "N",
        marker=False,
        shown_default="auto",
    ),
    OptionSpec(
        "report",
        "",
        parse_report_path,
        "Write a JSON report to PATH: one record per child run (test, interpreter, policy, "
        "seed, verdict, phase, exit status, stacks, replay command); rewritten atomically "
        "after each marked test, so an interrupted session leaves a valid file.",
        "PATH",
        marker=False,
        shown_default="none",
    ),
)
OPTIONS_BY_NAME: Dict[str, OptionSpec] = {spec.name: spec for spec in OPTIONS}
MARKER_KEYWORDS: Tuple[str, ...] = tuple(spec.name for spec in OPTIONS if spec.marker)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that decides how one marked test runs and is judged."""

    timeout: float = 10.0
    exit_code: int = 0
    allow_stderr: Tuple[Pattern[str], ...] = ()
    run_timeout: float = 300.0
    unbuffered: bool = False
    dev_mode: bool = False
    warnings: Tuple[str, ...] = ()
    policies: Tuple[str, ...] = ()
    rounds: int = 1
    until_fail: int = 0
    check: Tuple[Callable[..., Any], ...] = ()
    seed: str = "random"
    first_round: int = 0
    interpreter_bugs: str = "fail"
    list_policies: bool = False
    native_stacks: str = "auto"
    pythons: Tuple[str, ...] = ()
    report: str = ""
    start: str = "auto"
    jobs: int = 0

    def python_flags(self) -> Tuple[str, ...]:
        """Interpreter flags of the child, besides ``-X faulthandler``."""
        flags = []
        if self.unbuffered:
            flags.append("-u")
        if self.dev_mode:
            flags += ["-X", "dev"]
        for item in self.warnings:
            flags += ["-W", item]
        return tuple(flags)

    def describe(self) -> str:
        allowed = ", ".join(p.pattern for p in self.allow_stderr) or "none"
        return (
            f"timeout={self.timeout:g}s exit_code={self.exit_code} "
            f"run_timeout={self.run_timeout:g}s allow_stderr={allowed}"
        )


def marker_signature() -> str:
    args = ", ".join(f"{spec.name}={spec.default!r}" for spec in OPTIONS if spec.marker)
    return f"{MARKER}({args})"


def resolve(base: Settings, overrides: Mapping[str, object], where: str) -> Settings:
    """``base`` with ``overrides`` validated and applied; errors name ``where``."""
    values: Dict[str, Any] = {}
    for name, raw in overrides.items():
        spec = OPTIONS_BY_NAME.get(name)
        if spec is None or not spec.marker:
            raise SettingError(
                f"{where}: unknown argument {name!r}; expected one of {', '.join(MARKER_KEYWORDS)}"
            )
        try:
            values[name] = spec.parse(raw)
        except SettingError as exc:
            raise SettingError(f"{where}: {name}={_shown(raw)}: {exc}") from None
    return dataclasses.replace(base, **values)


def marker_overrides(marks: Sequence[Any], where: str) -> Dict[str, object]:
    """Merge ``daemon_exit`` marks, closest first: the closest mark setting a key wins."""
    merged: Dict[str, object] = {}
    for mark in marks:
        if mark.args:
            raise SettingError(
                f"{where}: @pytest.mark.{MARKER} takes keyword arguments only, got "
                f"positional {', '.join(_shown(a) for a in mark.args)}; signature: "
                f"{marker_signature()}"
            )
        for key, value in mark.kwargs.items():
            merged.setdefault(key, value)
    return merged


def options_markdown() -> str:
    """The README's options table, generated from :data:`OPTIONS`."""
    rows = [
        "| marker keyword | command line | ini | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for spec in OPTIONS:
        marker = f"`{spec.name}=`" if spec.marker else "—"
        option = (
            f"`{spec.option}`" + (f" `{spec.metavar}`" if spec.metavar else "")
            if spec.command_line
            else "—"
        )
        shown = spec.shown_default or ("none" if spec.default == () else repr(spec.default))
        default = f"`{shown}`"
        ini = f"`{spec.ini}`" if spec.command_line else "—"
        rows.append(f"| {marker} | {option} | {ini} | {default} | {spec.help} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # pragma: no cover - documentation helper
    print(options_markdown(), end="")
