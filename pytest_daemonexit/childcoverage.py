"""Coverage of the code marked tests run in their children, when the session is measured.

A session under ``pytest --cov`` (pytest-cov) or ``coverage run -m pytest`` measures only its
own process.  Children get the session's coverage configuration through the environment
variable coverage.py itself uses for subprocesses (``COVERAGE_PROCESS_CONFIG``), start
measuring before the test is imported, and save a parallel data file at exit.  pytest-cov
combines those files with its own; under ``coverage run`` the plugin merges them into the
running measurement when the session ends.  Pure: no pytest.
"""

from __future__ import annotations

import copy
import glob
import os
import sys
import uuid
from typing import Any, Dict, Mapping, Optional

ENV_CONFIG = "COVERAGE_PROCESS_CONFIG"
ENV_START = "COVERAGE_PROCESS_START"
#: Marks the data files of this session's children.
_TOKEN = f"daemonexit-{uuid.uuid4().hex[:12]}"


def _current() -> Any:
    coverage = sys.modules.get("coverage")
    control = getattr(coverage, "Coverage", None)
    current = getattr(control, "current", None)
    return current() if current is not None else None


def measured() -> bool:
    """Whether this process is being measured by coverage.py."""
    return _current() is not None


def _data_pattern(cov: Any) -> str:
    return str(os.path.abspath(cov.config.data_file)) + f".{_TOKEN}.*"


def child_environment(env: Mapping[str, str]) -> Dict[str, str]:
    """``env`` plus what makes a child measure itself like this process; unchanged when
    this process is not measured or the user already configured subprocess measurement."""
    out = dict(env)
    cov = _current()
    if cov is None or ENV_CONFIG in out or ENV_START in out:
        return out
    config = copy.copy(cov.config)
    if not hasattr(config, "serialize"):  # coverage.py before 7.10
        return out
    config.parallel = True  # a data file per child, with a unique suffix
    config.data_file = os.path.abspath(cov.config.data_file) + f".{_TOKEN}"
    out[ENV_CONFIG] = config.serialize()
    return out


def start_in_child() -> None:
    """In the child, before the test is imported: start measuring if the parent asked for
    it (coverage's own .pth file does the same where it is installed; this is idempotent)."""
    if not (os.environ.get(ENV_CONFIG) or os.environ.get(ENV_START)):
        return
    try:
        import coverage

        coverage.process_startup()
    except Exception:  # a coverage problem must not change the verdict
        pass


def merge_children(pytest_cov_active: bool) -> Optional[int]:
    """Under ``coverage run``: fold the children's data files into this process's
    measurement and remove them; the number merged (None when there is nothing to do).
    pytest-cov combines the files itself."""
    cov = _current()
    if cov is None or pytest_cov_active:
        return None
    try:
        from coverage import CoverageData

        merged = 0
        data = cov.get_data()
        for path in sorted(glob.glob(_data_pattern(cov))):
            child = CoverageData(basename=path)
            child.read()
            data.update(child)
            os.remove(path)
            merged += 1
        return merged
    except Exception:  # losing coverage must not fail the session
        return None
