"""How fast the default policies find each example's bug, against plain repetition.

For every buggy example in ``examples/`` (and, as a control, every fixed twin), with the
plugin as a user runs it:

  natural    ``--daemonexit-policy=baseline --daemonexit-rounds=N``: the failure rate of
             the natural run (the same child, no perturbation)
  default    R separate default pytest runs of the test: how many of them fail
  hunt       ``--daemonexit-until-fail=CAP`` under baseline (plain repetition) and under the
             default policies: child runs and wall time until the first failure, median
             over H hunts; the ratio says how many times faster the default policies find
             the bug

Usage: python benchmarks/detection.py [--natural N] [--sessions R] [--hunts H] [--cap CAP]
       [--only NAME] [--json PATH]

A script, not a test: it prints measurements and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_SUMMARY = re.compile(r"(\d+) marked tests?, (\d+) child runs?, (\d+) failed")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--natural", type=int, default=30, help="natural rounds (30)")
    parser.add_argument("--sessions", type=int, default=10, help="default runs (10)")
    parser.add_argument("--hunts", type=int, default=3, help="hunts per mode (3)")
    parser.add_argument("--cap", type=int, default=60, help="runs per hunt at most (60)")
    parser.add_argument("--only", help="only examples whose file name contains this")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers here")
    return parser.parse_args(argv)


def pytest_run(test: str, *options: str) -> Tuple[int, int, int, float]:
    """(runs, failed runs, exit status, seconds) of one pytest session on one test file."""
    start = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "daemonexit",
            "-p",
            "no:cacheprovider",
            "-q",
            "--daemonexit-native-stacks=off",
            *options,
            test,
        ],
        cwd=EXAMPLES,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=3600,
        check=False,
    )
    elapsed = time.monotonic() - start
    out = done.stdout.decode("utf-8", "replace")
    found = _SUMMARY.search(out)
    if found is None:
        raise SystemExit(f"no daemonexit summary for {test}:\n{out[-3000:]}")
    return int(found.group(2)), int(found.group(3)), done.returncode, elapsed


def hunt(test: str, policy: str, cap: int, hunts: int) -> Dict[str, Any]:
    runs: List[int] = []
    seconds: List[float] = []
    found = 0
    for i in range(hunts):
        n, failed, _, elapsed = pytest_run(
            test,
            f"--daemonexit-policy={policy}",
            f"--daemonexit-until-fail={cap}",
            f"--daemonexit-seed={1000 + i}",
        )
        runs.append(n)
        seconds.append(elapsed)
        found += bool(failed)
    return {
        "found": found,
        "hunts": hunts,
        "runs": statistics.median(runs),
        "seconds": statistics.median(seconds),
    }


def measure(test: str, args: argparse.Namespace) -> Dict[str, Any]:
    fixed = test.endswith("_fixed.py")
    n, natural_failed, _, natural_seconds = pytest_run(
        test, "--daemonexit-policy=baseline", f"--daemonexit-rounds={args.natural}"
    )
    caught = 0
    default_seconds = []
    for i in range(args.sessions):
        _, failed, _, elapsed = pytest_run(test, f"--daemonexit-seed={i}")
        caught += bool(failed)
        default_seconds.append(elapsed)
    return {
        "test": test,
        "natural": [natural_failed, n],
        "natural_seconds_per_run": natural_seconds / max(n, 1),
        "default": [caught, args.sessions],
        "default_session_seconds": statistics.median(default_seconds),
        # A correct twin has nothing to find: hunting it would only burn the cap.
        "hunt_baseline": None if fixed else hunt(test, "baseline", args.cap, args.hunts),
        "hunt_default": None if fixed else hunt(test, "default", args.cap, args.hunts),
    }


def _hunt_text(h: Optional[Dict[str, Any]], cap: int) -> str:
    if h is None:
        return "—"
    if not h["found"]:
        return f">{cap} runs"
    text = f"{h['runs']:g} runs, {h['seconds']:.1f} s"
    if h["found"] < h["hunts"]:
        text += f" ({h['found']}/{h['hunts']} found)"
    return text


def ratio(result: Dict[str, Any], cap: int) -> str:
    base, default = result["hunt_baseline"], result["hunt_default"]
    if base is None or default is None or not default["found"]:
        return "-"
    if not base["found"]:
        return f">{cap / default['runs']:.0f}x runs"
    runs = base["runs"] / default["runs"]
    return f"{runs:.1f}x runs, {base['seconds'] / default['seconds']:.1f}x time"


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    tests = sorted(p.name for p in EXAMPLES.glob("test_*.py"))
    if args.only:
        tests = [t for t in tests if args.only in t]
    results = []
    for test in tests:
        result = measure(test, args)
        results.append(result)
        print(f"measured {test}", file=sys.stderr, flush=True)
    header = (
        "| test | natural failures | default runs failing | hunt, plain repetition | "
        "hunt, default policies | default vs plain |"
    )
    print(header)
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        nf, nn = r["natural"]
        dc, dn = r["default"]
        print(
            f"| `{r['test']}` | {nf}/{nn} | {dc}/{dn} | "
            f"{_hunt_text(r['hunt_baseline'], args.cap)} | "
            f"{_hunt_text(r['hunt_default'], args.cap)} | {ratio(r, args.cap)} |"
        )
    print(
        f"\nPython {sys.version.split()[0]}; natural = {args.natural} baseline rounds; "
        f"default = {args.sessions} default pytest runs; hunts: median of {args.hunts}, "
        f"at most {args.cap} runs each."
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
