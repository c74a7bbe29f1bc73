"""The floor of a faithful forked run: fork a prepared interpreter and finalize the child.

A fork server's child cannot cost less than the fork itself plus a real finalization of
everything the server imported.  This script measures that floor on this machine, next to
``python -c pass`` (the unit of the project's per-run target) and to a fork that ends with
``os._exit`` (no finalization, what pytest-forked does), interleaved round by round:

  python -c pass      a new interpreter that starts and exits.
  fork + os._exit     a child forked from this process, ending without finalization.
  fork + finalize     a child forked from this process, returning through the interpreter's
                      real finalization (``sys.exit(0)``), heap frozen as the server does.

Before forking, this process does what the fork server does before its first fork: it
imports pytest and prepares pytest's configuration with plugin autoload as the environment
says (so installed plugins' modules, hypothesis' plugin included, are imported), with the
collector off, then ``gc.freeze()`` and the collector on again.  ``--with-hypothesis``
also imports ``hypothesis``, as the server did while a child's session still ran
hypothesis' terminal summary.  A pytest session in the child comes on top of this floor;
``benchmarks/overhead.py`` measures whole runs.

Usage: python benchmarks/floor.py [--rounds N] [--forks N] [--with-hypothesis]

Run it with the interpreter of the venv to measure (the one that has pytest and the
plugins installed).  A script, not a test: it asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List


def _fork(finalize: bool) -> float:
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        if finalize:
            sys.exit(0)  # through Py_FinalizeEx
        os._exit(0)
    os.waitpid(pid, 0)
    return time.perf_counter() - start


def _pass() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


def prepare(with_hypothesis: bool = False) -> int:
    """Import what a fork server imports; returns how many modules are loaded."""
    gc.disable()
    from _pytest.config import _prepareconfig

    _prepareconfig(["-q", "-p", "no:cacheprovider"], [])
    if with_hypothesis and importlib.util.find_spec("hypothesis") is not None:
        import hypothesis  # noqa: F401
    gc.freeze()
    gc.enable()
    return len(sys.modules)


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--forks", type=int, default=10, help="samples per variant per round")
    parser.add_argument(
        "--with-hypothesis", action="store_true", help="also import hypothesis before forking"
    )
    args = parser.parse_args(argv)
    if not hasattr(os, "fork"):
        parser.error("this benchmark forks: POSIX only")
    if args.rounds < 1 or args.forks < 1:
        parser.error("--rounds and --forks must be at least 1")
    modules = prepare(args.with_hypothesis)
    print(f"interpreter: {sys.executable} ({sys.version.split()[0]}), {modules} modules loaded")
    variants: Dict[str, Callable[[], float]] = {
        "python -c pass": _pass,
        "fork + os._exit": lambda: _fork(False),
        "fork + finalize": lambda: _fork(True),
    }
    samples: Dict[str, List[float]] = {name: [] for name in variants}
    ratios: Dict[str, List[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        medians = {}
        order = list(variants)[round_ % 3 :] + list(variants)[: round_ % 3]
        for name in order:
            taken = [variants[name]() for _ in range(args.forks)]
            samples[name] += taken
            medians[name] = statistics.median(taken)
        for name in variants:
            ratios[name].append(medians[name] / medians["python -c pass"])
    print(f"{'variant':<18} {'median ms':>9} {'x pass':>7}  (ratios paired per round)")
    for name in variants:
        median_ms = statistics.median(samples[name]) * 1000
        print(f"{name:<18} {median_ms:>9.1f} {statistics.median(ratios[name]):>7.2f}")


if __name__ == "__main__":
    main()
