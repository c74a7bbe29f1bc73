"""A measured session gets the coverage of the code its marked tests ran in the children."""

from __future__ import annotations

import sys

import pytest

coverage = pytest.importorskip("coverage")
pytest.importorskip("pytest_cov")
if not hasattr(coverage.config.CoverageConfig, "serialize"):
    pytest.skip("children are measured with coverage.py 7.10 or newer", allow_module_level=True)

LIBRARY = """
def only_in_the_child():
    value = 41
    return value + 1


def never_called():
    return 0
"""

TESTS = """
import pytest
import mylib

@pytest.mark.daemon_exit
def test_marked():
    assert mylib.only_in_the_child() == 42
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # This suite may itself be measured; the session under test must measure itself only.
    monkeypatch.delenv("COVERAGE_PROCESS_CONFIG", raising=False)
    monkeypatch.delenv("COVERAGE_PROCESS_START", raising=False)
    pytester.makepyfile(mylib=LIBRARY, test_it=TESTS)
    pytester.syspathinsert()
    return pytester


def _missing(report: str) -> str:
    line = next(line for line in report.splitlines() if line.startswith("mylib.py"))
    # "mylib.py  5  1  80%  7": the function body run only in the child is covered.
    return line.split("%", 1)[1].strip()


@pytest.mark.parametrize("workers", [0, 2])
def test_pytest_cov_reports_what_the_child_ran(run, project, workers):
    xdist = ["-n", str(workers)] if workers else []
    result = run("--cov=mylib", "--cov-report=term-missing", *xdist)
    result.assert_outcomes(passed=1)
    assert _missing(result.stdout.str()) == "7"
    leftovers = [p.name for p in project.path.iterdir() if p.name.startswith(".coverage.")]
    assert leftovers == [], "pytest-cov combines the children's data files"


def test_coverage_run_reports_what_the_child_ran(project):
    result = project.run(
        sys.executable,
        "-m",
        "coverage",
        "run",
        "--include=mylib.py",
        "-m",
        "pytest",
        "-p",
        "daemonexit",
        "--daemonexit-policy=baseline",
        "--daemonexit-native-stacks=off",
        timeout=120,
    )
    result.assert_outcomes(passed=1)
    report = project.run(sys.executable, "-m", "coverage", "report", "-m", timeout=120)
    assert _missing(report.stdout.str()) == "7"
    leftovers = [p.name for p in project.path.iterdir() if p.name.startswith(".coverage.")]
    assert leftovers == [], "the plugin merged and removed the children's data files"
