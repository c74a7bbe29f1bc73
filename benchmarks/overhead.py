"""Per-run wall time of a trivial ``daemon_exit`` test, as ratios measured in one run.

Variants, interleaved round-robin so machine noise hits all of them alike:

  python -c pass   the interpreter's own start-up and exit
  pytest unmarked  ``python -m pytest -q -p daemonexit`` on an unmarked trivial test
  pytest marked    the same on a marked trivial test (the parent plus its child)
  child alone      one ``runner.run()`` call from this process: the cost of one child

Usage: python benchmarks/overhead.py [--runs N] [--python PATH] [--json PATH] [--autoload]

Every variant runs with PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 unless --autoload is given: other
installed plugins (hypothesis' alone adds ~0.5 s per interpreter) would swamp the numbers.

A script, not a test: it asserts nothing about timing, only that every run succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest_daemonexit
from pytest_daemonexit import runner

TEST_BODY = "def test_trivial():\n    pass\n"
MARKED_BODY = "import pytest\n\n\n@pytest.mark.daemon_exit\n" + TEST_BODY


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per variant (default 20)")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for the subprocess variants (default: this one)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the numbers here")
    parser.add_argument(
        "--autoload",
        action="store_true",
        help="let pytest load every installed plugin, not just daemonexit",
    )
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2 (percentiles need two samples)")
    return args


def make_project(root: Path) -> Dict[str, str]:
    """Two test files in a directory with its own ini file, so no config from the
    directories above (or this repository) changes what is measured."""
    (root / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (root / "test_unmarked.py").write_text(TEST_BODY, encoding="utf-8")
    (root / "test_marked.py").write_text(MARKED_BODY, encoding="utf-8")
    return {name: f"{root / f'test_{name}.py'}::test_trivial" for name in ("unmarked", "marked")}


def subprocess_variant(argv: List[str], cwd: Path, env: Dict[str, str]) -> Callable[[], float]:
    def once() -> float:
        start = time.perf_counter()
        done = subprocess.run(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False
        )
        elapsed = time.perf_counter() - start
        if done.returncode != 0:  # timing a failure would measure the wrong thing
            sys.exit(
                f"failed ({done.returncode}): {shlex.join(argv)}\n"
                + done.stdout.decode(errors="replace")
                + done.stderr.decode(errors="replace")
            )
        return elapsed

    return once


def child_variant(nodeid: str, cwd: Path, env: Dict[str, str]) -> Callable[[], float]:
    # A minimal version of what plugin._run_marked builds for one marked test.
    def once() -> float:
        request = runner.RunRequest(
            mode="pytest",
            args=(nodeid, "-q", "-p", "no:cacheprovider"),
            cwd=str(cwd),
            env=runner.child_environment(env),
            plugins=("daemonexit",),
        )
        start = time.perf_counter()
        evidence = runner.run(request)
        elapsed = time.perf_counter() - start
        status = [e.get("status") for e in evidence.events("pytest_exit")]
        if evidence.returncode != 0 or evidence.stopped or status != [0]:
            sys.exit(
                f"child run failed: returncode={evidence.returncode} "
                f"stopped={evidence.stopped} pytest_exit={status}\n"
                + evidence.stdout_test.text
                + evidence.stderr_test.text
                + evidence.stderr_exit.text
            )
        return elapsed

    return once


def measure(variants: Dict[str, Callable[[], float]], runs: int) -> Dict[str, List[float]]:
    for once in variants.values():  # warm-up round, not kept: .pyc files, page cache
        once()
    times: Dict[str, List[float]] = {name: [] for name in variants}
    names = list(variants)
    for i in range(runs):
        # Rotate the order too, so no variant always runs right after the heavy one.
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(variants[name]())
    return times


def summary(samples: List[float]) -> Dict[str, float]:
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    return {
        "median_ms": statistics.median(samples) * 1e3,
        "p10_ms": deciles[0] * 1e3,
        "p90_ms": deciles[-1] * 1e3,
        "min_ms": min(samples) * 1e3,
        "max_ms": max(samples) * 1e3,
    }


def paired(a: List[float], b: List[float], op: Callable[[float, float], float]) -> float:
    # Per round, then the median: the two runs of a round shared the same machine state.
    return statistics.median(op(x, y) for x, y in zip(a, b))


def describe_python(python: str) -> str:
    code = "import sys, pytest; print(sys.version.split()[0], 'pytest', pytest.__version__)"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{python} cannot import pytest:\n{out.stderr}")
    return f"{python}: Python {out.stdout.strip()}"


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(
        "benchmark:",
        describe_python(sys.executable),
        f"pytest-daemonexit {pytest_daemonexit.__version__}",
    )
    if os.path.abspath(args.python) != os.path.abspath(sys.executable):
        print(
            "subprocess variants:",
            describe_python(args.python),
            "(the child-alone variant still uses the benchmark interpreter)",
        )
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs; runs per variant: {args.runs}")
    env = dict(os.environ)
    if not args.autoload:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # -p daemonexit still loads this plugin
    print("plugin autoload:", "on" if args.autoload else "off (PYTEST_DISABLE_PLUGIN_AUTOLOAD=1)")

    with tempfile.TemporaryDirectory(prefix="daemonexit-bench-") as tmp:
        root = Path(tmp)
        nodes = make_project(root)
        pytest_cmd = [args.python, "-m", "pytest", "-q", "-p", "daemonexit"]
        commands = {
            "python -c pass": [args.python, "-c", "pass"],
            "pytest unmarked": [*pytest_cmd, nodes["unmarked"]],
            "pytest marked": [*pytest_cmd, nodes["marked"]],
        }
        variants = {name: subprocess_variant(cmd, root, env) for name, cmd in commands.items()}
        variants["child alone"] = child_variant(nodes["marked"], root, env)
        times = measure(variants, args.runs)

    stats = {name: summary(samples) for name, samples in times.items()}
    ratios = {
        "marked / unmarked pytest run": paired(
            times["pytest marked"], times["pytest unmarked"], lambda x, y: x / y
        ),
        "marked - unmarked per test (ms)": paired(
            times["pytest marked"], times["pytest unmarked"], lambda x, y: (x - y) * 1e3
        ),
        "child alone / python -c pass": paired(
            times["child alone"], times["python -c pass"], lambda x, y: x / y
        ),
    }

    print()
    print(f"{'variant':<18}{'median':>9}{'p10':>9}{'p90':>9}{'min':>9}{'max':>9}   (ms)")
    for name, s in stats.items():
        print(
            f"{name:<18}"
            + "".join(
                f"{s[k]:>9.1f}" for k in ("median_ms", "p10_ms", "p90_ms", "min_ms", "max_ms")
            )
        )
    print()
    print("paired per round, median over rounds:")
    for name, value in ratios.items():
        print(f"  {name:<34}{value:>8.2f}")

    if args.json:
        commands["child alone"] = ["runner.run(RunRequest(mode='pytest', ...))", nodes["marked"]]
        data = {
            "command": [sys.executable, *sys.argv],
            "python": sys.version,
            "subprocess_python": args.python,
            "pytest_daemonexit": pytest_daemonexit.__version__,
            "runs": args.runs,
            "plugin_autoload": args.autoload,
            "variants": {
                name: {
                    "command": commands[name],
                    **stats[name],
                    "samples_ms": [t * 1e3 for t in times[name]],
                }
                for name in times
            },
            "ratios": ratios,
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
