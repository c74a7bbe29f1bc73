"""The test suite on every supported CPython: ``nox`` (all), ``nox -s tests-3.8``, ``nox -s lint``,
``nox -s coverage``.

Interpreters come from PATH; pyenv's installed versions are added to it, so a machine with
pyenv needs no shims.  A version that is not installed is skipped by nox, not failed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import nox

PYTHONS = ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]
nox.options.sessions = ["tests", "lint"]
nox.options.error_on_missing_interpreters = False


def _pyenv_bins() -> list[str]:
    try:
        root = subprocess.run(
            ["pyenv", "root"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        root = str(Path.home() / ".pyenv")
    return sorted(str(p) for p in Path(root, "versions").glob("3.*/bin"))


os.environ["PATH"] = os.pathsep.join([*_pyenv_bins(), os.environ.get("PATH", "")])


def _suite(session: nox.Session, *options: str) -> None:
    session.run(
        "python", "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", *options,
        *session.posargs, "tests/",
    )  # fmt: skip


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    # The acceptance tests drive every installed interpreter themselves: once is enough.
    _suite(session, *([] if session.python == "3.11" else ["-m", "not acceptance"]))


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("ruff", "check", "pytest_daemonexit", "tests", "benchmarks", "noxfile.py")
    session.run("mypy")


@nox.session(python="3.13")
def coverage(session: nox.Session) -> None:
    """Coverage of the plugin, the code its children run included, on the newest CPython."""
    session.install("-e", ".[test]")
    # sys.monitoring (3.12+) measures the same lines in three quarters of the time.
    session.env["COVERAGE_CORE"] = "sysmon"
    _suite(session, "-m", "not acceptance", "--cov", "--cov-report=term")
