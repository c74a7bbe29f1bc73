"""--daemonexit-python: children under other interpreters, verdicts per interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import List, Tuple

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Interpreters with pytest and this plugin installed, os.pathsep-separated (CI sets it
#: to the venvs it builds anyway); without it the test builds its own venvs.
ENV_VAR = "DAEMONEXIT_TEST_PYTHONS"


def _pyenv_pythons() -> List[Path]:
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    try:
        root = subprocess.run(
            ["pyenv", "root"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    found = {}
    for python in Path(root, "versions").glob("3.*/bin/python"):
        parts = python.parent.parent.name.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            version = tuple(int(p) for p in parts)
            if (3, 8) <= version[:2] <= (3, 13):
                found[version] = python
    return [found[v] for v in sorted(found)]


def _version(python: str) -> Tuple[int, ...]:
    out = subprocess.run(
        [python, "-c", "import sys; print(*sys.version_info[:3])"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return tuple(int(p) for p in out.split())


@pytest.fixture(scope="module")
def lowest_and_highest(tmp_path_factory: pytest.TempPathFactory) -> List[str]:
    given = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    if given:
        ordered = sorted(given, key=_version)
        if len(ordered) < 2:
            pytest.skip(f"{ENV_VAR} names fewer than two interpreters")
        return [ordered[0], ordered[-1]]
    pythons = _pyenv_pythons()
    if len(pythons) < 2:
        pytest.skip(f"needs two CPython versions installed with pyenv; found {len(pythons)}")
    built = []
    base = tmp_path_factory.mktemp("venvs")
    for python in (pythons[0], pythons[-1]):
        venv = base / python.parent.parent.name
        steps = [
            [str(python), "-m", "venv", str(venv)],
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "pytest>=8",
                "-e",
                str(REPO),
            ],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                pytest.skip(f"cannot build a venv for {python}: {done.stderr[-500:]}")
        built.append(str(venv / "bin" / "python"))
    return built


def test_each_interpreter_runs_the_test_and_gets_its_own_verdict(run, pytester, lowest_and_highest):
    low, high = lowest_and_highest
    low_v, high_v = (".".join(map(str, _version(p))) for p in (low, high))
    run.write(
        f"""
        import atexit, os, sys, pytest

        @pytest.mark.daemon_exit
        def test_newest_exits_badly():
            with open("ran-" + ".".join(map(str, sys.version_info[:3])), "w") as f:
                f.write(sys.executable)
            if sys.version_info[:3] == {_version(high)!r}:
                atexit.register(os._exit, 3)
        """
    )
    result = run(
        f"--daemonexit-python={low},{high}",
        "--daemonexit-report=report.json",
        "--junitxml=junit.xml",
        "-v",
    )
    result.assert_outcomes(failed=1)
    assert Path(pytester.path, f"ran-{low_v}").read_text() == low
    assert Path(pytester.path, f"ran-{high_v}").read_text() == high
    result.stdout.fnmatch_lines(
        [
            f"daemonexit child: {low} ({low_v}), {high} ({high_v}) -X faulthandler*",
            "daemon exit: EXIT_CODE in phase atexit *",
            f"    baseline on Python {low_v}: 1 run, no failure",
            f"    baseline on Python {high_v}: 1 run, 1 failed (100%) EXIT_CODE;*",
            f"  interpreter: {high} (Python {high_v})",
            "test * policy * python * runs * failed*",
            f"test_it.py::test_newest_exits_badly * baseline * {low_v} * 1 * 0 *",
            f"test_it.py::test_newest_exits_badly * baseline * {high_v} * 1 * 1 *",
        ]
    )
    runs = json.loads((pytester.path / "report.json").read_text())["runs"]
    by_version = {r["interpreter"]["version"]: r for r in runs}
    assert set(by_version) == {low_v, high_v}
    assert by_version[low_v]["interpreter"]["path"] == low
    assert by_version[low_v]["verdict"] == "ok"
    assert by_version[high_v]["verdict"] == "EXIT_CODE"
    assert f"--daemonexit-python={high}" in by_version[high_v]["replay"]
    props = {
        p.get("name"): p.get("value")
        for p in ET.parse(str(pytester.path / "junit.xml")).iter("property")
    }
    assert props[f"daemonexit.verdict.{low_v}"] == "ok (0/1 runs)"
    assert props[f"daemonexit.verdict.{high_v}"] == "EXIT_CODE in phase atexit (1/1 runs)"


def test_interpreter_without_pytest_is_a_usage_error_saying_what_to_install(run, pytester):
    bare = pytester.path / "bare"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120
    )
    python = str(bare / "bin" / "python")
    run.write("def test_x(): pass\n")
    result = run(f"--daemonexit-python={python}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*--daemonexit-python={python}: (Python *) cannot import pytest "
            f"(ModuleNotFoundError: No module named 'pytest'); install it there with: "
            f"{python} -m pip install 'pytest>=8' pytest-daemonexit==*"
        ]
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [("does/not/exist/python", "no such file"), ("no-such-python-command", "not found on PATH*")],
)
def test_missing_interpreter_is_a_usage_error(run, pytester, value, problem):
    run.write("def test_x(): pass\n")
    result = run(f"--daemonexit-python={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--daemonexit-python={value}: {problem}"])


def test_interpreter_from_the_ini_file_is_named_in_the_error(run, pytester):
    pytester.makeini("[pytest]\ndaemonexit_python =\n    current\n    does/not/exist/python\n")
    run.write("def test_x(): pass\n")
    result = run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*ini option daemonexit_python=does/not/exist/python: no such file*"]
    )
