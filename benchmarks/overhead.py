"""What a ``daemon_exit`` child run costs, in time and memory, per start mode, in one run.

Every number comes from one invocation on one machine: the variants run interleaved,
round-robin with a rotating order, so machine noise hits all of them alike, and the ratios
are taken per round (the variants of a round shared the machine's state), then the median
over rounds.

By default the script builds a throwaway virtualenv with this repository installed as a
user installs it (``pip install .``, not ``-e``: an editable install's import hook runs in
every interpreter the venv starts, ``python -c pass`` included, which made it 2.5 times
slower here and the ratios look better than they are), pytest and hypothesis, so pytest's
plugin autoload loads both
daemonexit and hypothesis' plugin, as in a real project; everything runs from it with
autoload on. PYTEST_DISABLE_PLUGIN_AUTOLOAD, PYTEST_ADDOPTS and PYTEST_PLUGINS are removed
from the environment, and so is PYTHONDONTWRITEBYTECODE: a warm-up round writes the
bytecode caches, including pytest's assert-rewritten plugin modules. ``--python PATH``
uses an existing interpreter (or venv) instead.
Each test project has its own ``pytest.ini``, so no configuration from the directories
above changes what is measured, and every pytest command has ``-q``. pytest's cache is on,
as in a user's project: the warm-up round fills it (the fork server keeps there which
modules a session imports lazily, and learns them again, 0.1 to 0.2 s, without it). The
sessions without marked tests have a cache of their own (``cache_dir``): the plugin's
record that the last session had marked tests would otherwise have them launch a fork
server that they never use, which made them slower and the per-run overhead look lower.

The variants, one subprocess each (wall time on this process's clock):

  python -c pass         the interpreter's own start and exit: the unit of the ratios.
  pytest, 1 unmarked     ``python -m pytest`` on one trivial unmarked test.
  N unmarked             a session of N trivial unmarked tests with the daemonexit options
                         below (they change nothing for unmarked tests).
  N marked, spawn        the same N tests marked ``daemon_exit`` (module ``pytestmark``),
                         with ``--daemonexit-policy=baseline`` (exactly one child run per
                         test), ``--daemonexit-jobs=1``, ``--daemonexit-native-stacks=off``
                         and ``--daemonexit-start=spawn``: a new ``python ... pytest`` per run.
  N marked, forkserver   the same with ``--daemonexit-start=forkserver``: runs are forked
                         from a server that imported pytest and parsed the command line once
                         (its start is paid once per session, so it is in the per-run
                         overhead divided by N).
  N marked, forkserver,  the same with ``-p no:cacheprovider``, as in a fresh checkout: the
  no cache               server learns again which modules a session imports lazily (and
                         starts with the first marked test, not with the session).
  N marked, forkserver,  the same with ``--daemonexit-jobs=auto``, the default: one child
  default jobs           per usable core, what a user's session gets (wall time per run).

  Per-run overhead = (N marked - N unmarked) / N, per round. It is compared with
  ``python -c pass``; the project's target is a median <= 3x ``python -c pass`` in a venv
  with the plugin, pytest and hypothesis and autoload on. The table also gives the median
  ``duration`` of the child runs from ``--daemonexit-report`` (the parent's clock, from the
  child's start to its exit: no session start, no server start).

  peak: pytest unmarked  a spawned ``python -m pytest`` running one test that registers an
                         atexit handler; the handler reads VmHWM (peak resident set) from
                         /proc/self/status and writes it to a file.
  peak: spawn child,     the same test marked, in each start mode: the handler runs in the
  peak: forkserver child child, during its real finalization. The target is a forkserver
                         child's peak <= the spawned pytest's. A forked child's resident set
                         counts the pages it shares with the server (copy-on-write), so the
                         table also shows its private memory at exit (smaps_rollup).

  N --forked (pytest-forked) and N --isolate (pytest-isolate), each minus the same session
  without the option, divided by N: other plugins' per-test isolation. They are installed
  into a second throwaway venv (the same packages plus both plugins; each variant blocks
  the other plugin with ``-p no:``) so the first venv stays exactly what the target names;
  a plugin that does not install is skipped with the reason, and one that fails a probe run
  with that pytest is tried with the previous minor release of pytest in that venv (the
  output says so, and skips it if that fails too). Both fork the pytest process
  per test and end the child with ``os._exit``: it never finalizes, so they cannot see
  what daemonexit is for, and their cost is not the cost of a real exit.

Throughput, after the rounds above (``--throughput-rounds``, interleaved too): a session of
T (default 200) trivial marked tests, policy baseline, forkserver, with
``--daemonexit-jobs=1`` and ``--daemonexit-jobs=<usable cores>`` (and spawn with
``--throughput-spawn``): runs per second over the whole session, over its excess above T
unmarked tests, and the speedup of the parallel session (target >= 1.7x on 2 cores).

With ``--keep-dont-write-bytecode``, PYTHONDONTWRITEBYTECODE stays when the environment
sets it, as many CI images do: every pytest process then compiles the test modules and
rewrites its plugin modules again, and the children keep theirs in pytest's cache.

Usage: python benchmarks/overhead.py [--runs N] [--tests N] [--python PATH] [--json PATH]
                                     [--venv DIR [--reuse-venv]] [--no-compare]
                                     [--keep-dont-write-bytecode]
                                     [--throughput-runs T] [--throughput-rounds R]
                                     [--throughput-spawn]

A script, not a test: it asserts nothing about timing, only that every run succeeded
(exit status 0, every test passed, one report record per marked test with verdict ok and
the start mode asked for).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
HWM_ENV = "DAEMONEXIT_BENCH_PEAK_DIR"
#: Options of every session that has N (or T) tests, marked or not.
DAEMONEXIT_OPTIONS = (
    "--daemonexit-policy=baseline",
    "--daemonexit-jobs=1",
    "--daemonexit-native-stacks=off",
)
PYTEST = ("-m", "pytest", "-q")
#: The sessions that run no marked test keep their own pytest cache: the plugin's record
#: of the marked sessions would have them launch a fork server early that they never use.
UNMARKED_CACHE = ("-o", "cache_dir=.pytest_cache_unmarked")
#: Environment variables that would change which plugins load or which options apply.
DROPPED_ENV = (
    "PYTEST_DISABLE_PLUGIN_AUTOLOAD",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "COVERAGE_PROCESS_START",
    "PYTHONSTARTUP",
    # Without cached bytecode every interpreter compiles again, and pytest rewrites the
    # asserts of every plugin module again (hypothesis': ~1 s per pytest start here).
    "PYTHONDONTWRITEBYTECODE",
)

PEAK_HELPER = """import atexit
import os


def _write_peak():
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.split()
    private = 0
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    private += int(line.split()[1])
    except OSError:
        private = -1
    path = os.path.join(os.environ["{env}"], "peak-%d.txt" % os.getpid())
    with open(path, "w") as f:
        f.write("%s %s %d\\n" % (status["VmHWM"][0], status["VmRSS"][0], private))


""".replace("{env}", HWM_ENV)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="rounds of the variants (10)")
    parser.add_argument(
        "--tests", type=int, default=20, help="N: tests per session for per-run overhead (20)"
    )
    parser.add_argument(
        "--python",
        metavar="PATH",
        help="an existing interpreter or venv (its bin/python) instead of the throwaway venv",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every number here")
    parser.add_argument(
        "--venv",
        metavar="DIR",
        help="keep the venvs in DIR (bench/ and compare/) instead of a temporary directory "
        "removed at the end",
    )
    parser.add_argument(
        "--reuse-venv",
        action="store_true",
        help="reuse the venvs already in --venv DIR (made by an earlier run) as they are",
    )
    parser.add_argument(
        "--no-compare", action="store_true", help="skip pytest-forked and pytest-isolate"
    )
    parser.add_argument(
        "--throughput-runs", type=int, default=200, help="T: marked tests per session (200)"
    )
    parser.add_argument(
        "--throughput-rounds",
        type=int,
        default=3,
        help="rounds of the throughput sessions (3; 0 skips them)",
    )
    parser.add_argument(
        "--keep-dont-write-bytecode",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE when the environment sets it (as CI images do), "
        "to measure what such a job gets, instead of removing it",
    )
    parser.add_argument(
        "--throughput-spawn",
        action="store_true",
        help="also measure throughput with --daemonexit-start=spawn (slow)",
    )
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2 (percentiles need two samples)")
    if args.tests < 1 or args.throughput_runs < 1 or args.throughput_rounds < 0:
        parser.error("--tests and --throughput-runs must be >= 1, --throughput-rounds >= 0")
    if args.reuse_venv and not args.venv:
        parser.error("--reuse-venv needs --venv DIR")
    if not sys.platform.startswith("linux"):
        parser.error("this benchmark reads /proc and uses the fork server: Linux only")
    return args


# -- environments ---------------------------------------------------------------------


def run_checked(argv: Sequence[str], what: str) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{what} failed ({done.returncode}): {shlex.join(argv)}\n{done.stderr[-3000:]}")


def venv_python(directory: Path) -> Path:
    return directory / "bin" / "python"


def make_venv(directory: Path, base: str, reuse: bool) -> Tuple[str, bool]:
    """A venv at ``directory`` with this repository, pytest and hypothesis; (python, made)."""
    python = venv_python(directory)
    check = "import pytest, hypothesis, pytest_daemonexit"
    if reuse and python.exists():
        done = subprocess.run([str(python), "-c", check], capture_output=True, check=False)
        if done.returncode == 0:
            # The repository may have changed since: install this checkout again.
            pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            run_checked([*pip, "--no-deps", "--force-reinstall", str(REPO)], "reinstalling")
            return str(python), False
    if directory.exists():
        shutil.rmtree(directory)
    run_checked([base, "-m", "venv", str(directory)], "creating a venv")
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run_checked([*pip, str(REPO), "pytest", "hypothesis"], f"installing into {directory}")
    return str(python), True


def try_install(python: str, package: str, module: str) -> Optional[str]:
    """Install ``package`` into ``python``'s venv; None, or why it is not there."""
    if subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0:
        return None
    done = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", package],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        return f"pip install {package} failed: " + (lines[-1] if lines else done.stderr[-300:])
    return None


def describe(python: str, env: Dict[str, str]) -> Dict[str, Any]:
    code = (
        "import sys, json, pytest\n"
        "from importlib import metadata\n"
        "def v(name):\n"
        "    try:\n"
        "        return metadata.version(name)\n"
        "    except metadata.PackageNotFoundError:\n"
        "        return None\n"
        "print(json.dumps({'python': sys.version.split()[0], 'prefix': sys.prefix,"
        " 'pytest': pytest.__version__, 'hypothesis': v('hypothesis'),"
        " 'pytest-daemonexit': v('pytest-daemonexit')}))\n"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{python} cannot import pytest:\n{done.stderr}")
    info: Dict[str, Any] = json.loads(done.stdout)
    # What autoload registers (pytest -VV lists the third-party plugins).
    done = subprocess.run(
        [python, "-m", "pytest", "-VV"], capture_output=True, text=True, env=env, check=False
    )
    out = done.stdout + done.stderr
    info["autoloaded"] = [
        line.split(" at ")[0].strip()
        for line in out.splitlines()
        if line.startswith("  ") and " at " in line
    ]
    return info


OTHERS = {
    # package: (module, option, the other plugin's name for -p no:)
    "pytest-forked": ("pytest_forked", "--forked", "pytest_isolate"),
    "pytest-isolate": ("pytest_isolate", "--isolate", "pytest_forked"),
}


def probe(python: str, package: str, env: Dict[str, str]) -> Optional[str]:
    """None if ``package``'s option runs one trivial test; else why not."""
    _module, option, blocked = OTHERS[package]
    with tempfile.TemporaryDirectory(prefix="dx-probe-") as tmp:
        Path(tmp, "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
        Path(tmp, "test_probe.py").write_text(trivial_tests(1, marked=False), encoding="utf-8")
        argv = [python, *PYTEST, "-p", f"no:{blocked}", "-rf", option, "test_probe.py"]
        wide = {**env, "COLUMNS": "300"}  # the short summary line, not cut
        done = subprocess.run(argv, cwd=tmp, env=wide, capture_output=True, text=True)
    if done.returncode == 0 and "1 passed" in done.stdout:
        return None
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    return (failed[-1] if failed else (done.stdout + done.stderr)[-300:]).strip()


def setup_compare(
    directory: Path, base: str, reuse: bool, env: Dict[str, str]
) -> Tuple[str, Dict[str, str], Dict[str, Any]]:
    """The comparison venv: the bench venv's packages plus pytest-forked and pytest-isolate.
    A plugin that fails its probe with this pytest is tried once more with the newest pytest
    of the previous minor release (noted); one that still fails is skipped."""
    python, _made = make_venv(directory, base, reuse)
    skipped: Dict[str, str] = {}
    notes: List[str] = []
    for package, (module, _option, _blocked) in OTHERS.items():
        why = try_install(python, package, module)
        if why:
            skipped[package] = why
    broken: Dict[str, str] = {}
    for package in OTHERS:
        why = None if package in skipped else probe(python, package, env)
        if why:
            broken[package] = why
    if broken:
        version = describe(python, env)["pytest"]
        major, minor = (int(x) for x in version.split(".")[:2])
        pin = f"pytest<{major}.{minor}" if minor else f"pytest<{major}"
        for package, why in broken.items():
            notes.append(f"{package} fails with pytest {version}: {why}")
        done = subprocess.run(
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", pin],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            skipped.update(broken)
            notes.append(f"pip install '{pin}' failed; skipped")
        else:
            older = describe(python, env)["pytest"]
            notes.append(f"so the comparison venv has pytest {older} ('{pin}')")
            for package in broken:
                why = probe(python, package, env)
                if why:
                    skipped[package] = f"fails with pytest {version} and {older}: {why}"
    info = describe(python, env)
    info["notes"] = notes
    return python, skipped, info


def clean_env(keep: Sequence[str] = ()) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV or k in keep}
    env.pop("VIRTUAL_ENV", None)
    return env


# -- the test projects ----------------------------------------------------------------


def trivial_tests(count: int, marked: bool) -> str:
    head = "import pytest\n\npytestmark = pytest.mark.daemon_exit\n\n" if marked else ""
    return head + "".join(f"\ndef test_{n}():\n    pass\n\n" for n in range(count))


def make_project(root: Path, tests: int, throughput: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    files = {
        "test_one.py": trivial_tests(1, marked=False),
        "test_unmarked.py": trivial_tests(tests, marked=False),
        "test_marked.py": trivial_tests(tests, marked=True),
        "test_many_unmarked.py": trivial_tests(throughput, marked=False),
        "test_many_marked.py": trivial_tests(throughput, marked=True),
        "test_peak_unmarked.py": PEAK_HELPER
        + "def test_peak():\n    atexit.register(_write_peak)\n",
        "test_peak_marked.py": "import pytest\n"
        + PEAK_HELPER
        + "@pytest.mark.daemon_exit\ndef test_peak():\n    atexit.register(_write_peak)\n",
    }
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")


# -- measuring ------------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    wall: float  # seconds
    durations: List[float]  # the report's child run durations, seconds
    peak: Optional[Tuple[int, int, int]]  # VmHWM, VmRSS, private at exit (KiB)


@dataclasses.dataclass
class Variant:
    name: str
    argv: List[str]
    cwd: Path
    env: Dict[str, str]
    passed: int = 0  # tests that must pass (0: not pytest)
    report: Optional[Path] = None  # --daemonexit-report path; runs checked
    start: Optional[str] = None  # the start mode every run must report
    peak_dir: Optional[Path] = None  # where the atexit handler writes the peak

    def once(self) -> Sample:
        for stale in [self.report] if self.report else []:
            stale.unlink(missing_ok=True)
        if self.peak_dir is not None:
            shutil.rmtree(self.peak_dir, ignore_errors=True)
            self.peak_dir.mkdir(parents=True)
        started = time.perf_counter()
        done = subprocess.run(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        wall = time.perf_counter() - started
        out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")

        def fail(why: str) -> None:  # timing a failure would measure the wrong thing
            sys.exit(f"{self.name}: {why}\n$ {shlex.join(self.argv)}\n{out[-5000:]}")

        if done.returncode != 0:
            fail(f"exit status {done.returncode}")
        if self.passed and f"{self.passed} passed" not in out:
            fail(f"expected '{self.passed} passed' in the output")
        durations: List[float] = []
        if self.report is not None:
            runs = json.loads(self.report.read_text(encoding="utf-8"))["runs"]
            bad = [
                r
                for r in runs
                if r["verdict"] != "ok" or r["test_outcome"] != "passed" or r["start"] != self.start
            ]
            if len(runs) != self.passed or bad:
                fail(
                    f"expected {self.passed} runs, all ok, passed and started by {self.start}; "
                    f"got {len(runs)}, not so: {json.dumps(bad[:2])[:2000]}"
                )
            durations = [float(r["duration"]) for r in runs]
        peak = None
        if self.peak_dir is not None:
            files = list(self.peak_dir.iterdir())
            if len(files) != 1:
                fail(f"expected one peak file, found {len(files)}")
            hwm, rss, private = (int(x) for x in files[0].read_text().split())
            peak = (hwm, rss, private)
        return Sample(wall, durations, peak)


def measure(variants: Sequence[Variant], rounds: int, warm_up: bool) -> Dict[str, List[Sample]]:
    if warm_up:
        for variant in variants:  # not kept: .pyc files, page cache
            variant.once()
    samples: Dict[str, List[Sample]] = {v.name: [] for v in variants}
    for i in range(rounds):
        # Rotate the order too, so no variant always runs right after the heavy one.
        shift = i % len(variants)
        for variant in [*variants[shift:], *variants[:shift]]:
            samples[variant.name].append(variant.once())
        print(f"  round {i + 1}/{rounds} done", file=sys.stderr, flush=True)
    return samples


# -- statistics -----------------------------------------------------------------------


def spread(values: Sequence[float]) -> Dict[str, float]:
    if len(values) == 1:
        return {"median": values[0], "p10": values[0], "p90": values[0]}
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return {"median": statistics.median(values), "p10": deciles[0], "p90": deciles[-1]}


def paired(a: Sequence[float], b: Sequence[float], op: Callable[[float, float], float]) -> float:
    """Per round, then the median over rounds."""
    return statistics.median(op(x, y) for x, y in zip(a, b))


def walls(samples: Dict[str, List[Sample]], name: str) -> List[float]:
    return [s.wall for s in samples[name]]


def per_run(samples: Dict[str, List[Sample]], marked: str, unmarked: str, n: int) -> List[float]:
    return [(m - u) / n for m, u in zip(walls(samples, marked), walls(samples, unmarked))]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    n = args.tests
    cores = len(os.sched_getaffinity(0))
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, {cores} usable; "
        f"rounds: {args.runs}, N = {n} tests per session"
    )
    holder = Path(args.venv).resolve() if args.venv else Path(tempfile.mkdtemp(prefix="dx-venv-"))
    holder.mkdir(parents=True, exist_ok=True)
    keep = ["PYTHONDONTWRITEBYTECODE"] if args.keep_dont_write_bytecode else []
    env = clean_env(keep)
    dropped = [name for name in DROPPED_ENV if name in os.environ and name not in keep]
    print("removed from the environment:", ", ".join(dropped) or "nothing")
    try:
        if args.python:
            python = args.python
            print(f"interpreter: {python} (--python)")
        else:
            print(f"setting up the bench venv in {holder / 'bench'} ...", file=sys.stderr)
            python, made = make_venv(holder / "bench", sys.executable, args.reuse_venv)
            print(f"bench venv: {holder / 'bench'} ({'new' if made else 'reused'})")
        info = describe(python, env)
        print(
            f"  Python {info['python']}, pytest {info['pytest']}, "
            f"hypothesis {info['hypothesis']}, pytest-daemonexit {info['pytest-daemonexit']}; "
            f"autoload on, registers: {', '.join(info['autoloaded']) or 'nothing'}"
        )
        compare_python: Optional[str] = None
        skipped: Dict[str, str] = {}
        if args.no_compare:
            skipped = {"pytest-forked": "--no-compare", "pytest-isolate": "--no-compare"}
        else:
            print(f"setting up the comparison venv in {holder / 'compare'} ...", file=sys.stderr)
            base = python if args.python else sys.executable
            compare_python, skipped, compare_info = setup_compare(
                holder / "compare", base, args.reuse_venv, env
            )
            print(
                f"comparison venv: {holder / 'compare'}; Python {compare_info['python']}, "
                f"pytest {compare_info['pytest']}; registers: "
                f"{', '.join(compare_info['autoloaded'])}"
            )
            for note in compare_info["notes"]:
                print(f"  {note}")
            info["compare"] = compare_info
        for package, why in skipped.items():
            print(f"  skipped {package}: {why}")
        with tempfile.TemporaryDirectory(prefix="dx-bench-") as tmp:
            results = bench(args, python, compare_python, skipped, env, Path(tmp), cores, info)
    finally:
        if not args.venv:
            shutil.rmtree(holder, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


def bench(
    args: argparse.Namespace,
    python: str,
    compare_python: Optional[str],
    skipped: Dict[str, str],
    env: Dict[str, str],
    tmp: Path,
    cores: int,
    info: Dict[str, Any],
) -> Dict[str, Any]:
    n = args.tests
    root = tmp / "project"
    make_project(root, n, args.throughput_runs)
    peak_dir = tmp / "peak"
    env = {**env, HWM_ENV: str(peak_dir)}
    pytest = [python, *PYTEST]

    def session(
        name: str, extra: Sequence[str], file: str, passed: int, start: str = ""
    ) -> Variant:
        slug = "".join(c if c.isalnum() else "-" for c in name)
        report = tmp / f"report-{slug}.json" if start else None
        argv = [*pytest, *DAEMONEXIT_OPTIONS, *extra]
        if start:
            argv += [f"--daemonexit-start={start}", f"--daemonexit-report={report}"]
        else:
            argv += UNMARKED_CACHE
        return Variant(name, [*argv, file], root, env, passed, report, start or None)

    variants = [
        Variant("python -c pass", [python, "-c", "pass"], root, env),
        Variant("pytest, 1 unmarked", [*pytest, *UNMARKED_CACHE, "test_one.py"], root, env, 1),
        session("N unmarked", [], "test_unmarked.py", n),
        session("N marked, spawn", [], "test_marked.py", n, "spawn"),
        session("N marked, forkserver", [], "test_marked.py", n, "forkserver"),
        session(
            "N marked, forkserver, default jobs",
            ["--daemonexit-jobs=auto"],
            "test_marked.py",
            n,
            "forkserver",
        ),
        session(
            "N marked, forkserver, no cache",
            ["-p", "no:cacheprovider"],
            "test_marked.py",
            n,
            "forkserver",
        ),
        Variant(
            "peak: pytest unmarked",
            [*pytest, *UNMARKED_CACHE, "test_peak_unmarked.py"],
            root,
            env,
            1,
            peak_dir=peak_dir,
        ),
    ]
    for start in ("spawn", "forkserver"):
        peak = session(f"peak: {start} child", [], "test_peak_marked.py", 1, start)
        peak.peak_dir = peak_dir
        variants.append(peak)
    for package, (_module, option, blocked) in OTHERS.items():
        if package in skipped or compare_python is None:
            continue
        base = [compare_python, *PYTEST, *UNMARKED_CACHE, "-p", f"no:{blocked}"]
        variants.append(
            Variant(f"N unmarked ({package} venv)", [*base, "test_unmarked.py"], root, env, n)
        )
        variants.append(Variant(f"N {option}", [*base, option, "test_unmarked.py"], root, env, n))

    print(f"\nmeasuring {len(variants)} variants, {args.runs} rounds ...", file=sys.stderr)
    samples = measure(variants, args.runs, warm_up=True)

    throughput: Dict[str, List[Sample]] = {}
    t = args.throughput_runs
    if args.throughput_rounds:
        starts = ["forkserver", *(["spawn"] if args.throughput_spawn else [])]
        heavy = [session("T unmarked", [], "test_many_unmarked.py", t)]
        for start in starts:
            for jobs in sorted({1, cores}):
                heavy.append(
                    session(
                        f"T marked, {start}, jobs={jobs}",
                        [f"--daemonexit-jobs={jobs}"],
                        "test_many_marked.py",
                        t,
                        start,
                    )
                )
        print(
            f"measuring throughput: {len(heavy)} sessions, {args.throughput_rounds} rounds ...",
            file=sys.stderr,
        )
        throughput = measure(heavy, args.throughput_rounds, warm_up=False)

    return report(args, samples, throughput, variants, skipped, cores, info, python)


def report(
    args: argparse.Namespace,
    samples: Dict[str, List[Sample]],
    throughput: Dict[str, List[Sample]],
    variants: Sequence[Variant],
    skipped: Dict[str, str],
    cores: int,
    info: Dict[str, Any],
    python: str,
) -> Dict[str, Any]:
    n = args.tests
    unit = walls(samples, "python -c pass")
    out: Dict[str, Any] = {
        "command": [sys.executable, *sys.argv],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "usable": cores},
        "interpreter": {"path": python, **info},
        "rounds": args.runs,
        "tests_per_session": n,
        "skipped": skipped,
        "variants": {},
        "per_run_overhead": {},
        "peak_memory_kib": {},
        "throughput": {},
    }

    print("\n1. wall time per process or session (ms; x pass: paired per round, median)")
    rows = []
    for v in variants:
        w = walls(samples, v.name)
        s = spread(w)
        ratio = paired(w, unit, lambda x, y: x / y)
        rows.append([v.name, ms(s["median"]), ms(s["p10"]), ms(s["p90"]), f"{ratio:.2f}"])
        out["variants"][v.name] = {
            "argv": v.argv,
            **{f"{k}_ms": x * 1e3 for k, x in s.items()},
            "x_python_c_pass": ratio,
            "samples_ms": [x * 1e3 for x in w],
        }
    print(table(["variant", "median", "p10", "p90", "x pass"], rows))

    print(
        f"\n2. per-run overhead of a trivial marked test:"
        f" (session of N={n} marked - N unmarked) / N;"
        "\n   duration: the child run's median 'duration' in --daemonexit-report"
        "\n   (target: median per-run overhead <= 3x python -c pass)"
    )
    rows = []
    for start in ("spawn", "forkserver", "forkserver, no cache", "forkserver, default jobs"):
        over = per_run(samples, f"N marked, {start}", "N unmarked", n)
        ratio = paired(over, unit, lambda x, y: x / y)
        durations = [statistics.median(s.durations) for s in samples[f"N marked, {start}"]]
        every = [d for s in samples[f"N marked, {start}"] for d in s.durations]
        dratio = paired(durations, unit, lambda x, y: x / y)
        met = "met" if ratio <= 3 else "not met"
        rows.append(
            [
                f"daemonexit, {start}",
                ms(statistics.median(over)),
                f"{ratio:.2f}",
                ms(statistics.median(every)),
                f"{dratio:.2f}",
                met,
            ]
        )
        out["per_run_overhead"][f"daemonexit {start}"] = {
            "overhead_ms": statistics.median(over) * 1e3,
            "overhead_x_python_c_pass": ratio,
            "duration_median_ms": statistics.median(every) * 1e3,
            "duration_x_python_c_pass": dratio,
            "per_round_overhead_ms": [x * 1e3 for x in over],
            "target_3x_met": ratio <= 3,
        }
    for package, (_module, option, _blocked) in OTHERS.items():
        if package in skipped:
            rows.append([f"{package} {option}", "skipped", "", "", "", ""])
            continue
        over = per_run(samples, f"N {option}", f"N unmarked ({package} venv)", n)
        ratio = paired(over, unit, lambda x, y: x / y)
        rows.append(
            [f"{package} {option} *", ms(statistics.median(over)), f"{ratio:.2f}", "-", "-", ""]
        )
        out["per_run_overhead"][package] = {
            "overhead_ms": statistics.median(over) * 1e3,
            "overhead_x_python_c_pass": ratio,
            "per_round_overhead_ms": [x * 1e3 for x in over],
        }
    print(table(["per run", "overhead ms", "x pass", "duration ms", "x pass", "3x target"], rows))
    print(
        "   * forks the pytest process per test and ends the child with os._exit:"
        " it never finalizes."
    )
    for package, why in skipped.items():
        print(f"   {package} skipped: {why}")

    print("\n3. peak memory of one run's process (MiB, median over rounds; VmHWM read at atexit)")
    rows = []
    reference = None
    for name in ("peak: pytest unmarked", "peak: spawn child", "peak: forkserver child"):
        peaks = [s.peak for s in samples[name] if s.peak is not None]
        hwm = statistics.median(p[0] for p in peaks)
        rss = statistics.median(p[1] for p in peaks)
        private = statistics.median(p[2] for p in peaks)
        reference = reference or hwm
        rows.append(
            [
                name,
                f"{hwm / 1024:.1f}",
                f"{hwm / reference:.2f}",
                f"{rss / 1024:.1f}",
                f"{private / 1024:.1f}",
            ]
        )
        out["peak_memory_kib"][name] = {
            "VmHWM": hwm,
            "VmRSS_at_exit": rss,
            "private_at_exit": private,
        }
    print(table(["process", "VmHWM", "x pytest", "VmRSS at exit", "private at exit"], rows))
    fork_hwm = out["peak_memory_kib"]["peak: forkserver child"]["VmHWM"]
    pytest_hwm = out["peak_memory_kib"]["peak: pytest unmarked"]["VmHWM"]
    print(
        "   target forkserver child VmHWM <= spawned pytest's: "
        + ("met" if fork_hwm <= pytest_hwm else "not met")
        + " (a forked child's resident set includes pages shared with the server)"
    )

    if throughput:
        t = args.throughput_runs
        print(
            f"\n4. throughput: sessions of T={t} trivial marked tests, policy baseline"
            f" ({len(throughput['T unmarked'])} rounds, medians)"
        )
        rows = []
        base = walls(throughput, "T unmarked")
        for name in throughput:
            if name == "T unmarked":
                continue
            w = walls(throughput, name)
            rate = statistics.median(t / x for x in w)
            excess = statistics.median(t / (x - b) for x, b in zip(w, base))
            start, jobs = name.split(", ")[1], int(name.rsplit("=", 1)[1])
            if jobs == 1:
                speedup = "1.00"
            else:
                single = walls(throughput, f"T marked, {start}, jobs=1")
                speedup = f"{paired(w, single, lambda x, y: y / x):.2f}"
            rows.append(
                [
                    f"{start}, jobs={jobs}",
                    f"{statistics.median(w):.2f}",
                    f"{rate:.1f}",
                    f"{excess:.1f}",
                    speedup,
                ]
            )
            out["throughput"][name] = {
                "wall_s": statistics.median(w),
                "runs_per_s": rate,
                "runs_per_s_excess": excess,
                "speedup_vs_jobs_1": float(speedup),
                "samples_s": w,
            }
        print(table(["mode", "session s", "runs/s", "runs/s excess", "speedup"], rows))
        print(
            f"   T unmarked: {statistics.median(base):.2f} s; runs/s excess = T / (session - T"
            f" unmarked); speedup: paired per round, target >= 1.7x with jobs={cores}"
        )
    return out


if __name__ == "__main__":
    main()
