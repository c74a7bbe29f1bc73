"""The interpreters children run under: this one, or others named with ``--daemonexit-python``.

Pure: no pytest.  :func:`probe` starts the interpreter once and asks what it has, so a
missing pytest or plugin is a clear error before any test runs, not a confusing child crash.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from typing import Dict, Mapping, Optional, Sequence, Tuple

import pytest_daemonexit

#: The word that names the interpreter running pytest.
CURRENT = "current"
#: Seconds an interpreter gets to answer the probe.
PROBE_SECONDS = 60.0
#: Oldest pytest the child side supports.
MIN_PYTEST = (8, 0)

_PROBE = r"""
import json, sys
out = {"version": list(sys.version_info[:3]), "executable": sys.executable,
       "implementation": sys.implementation.name}
try:
    import pytest
    out["pytest"] = pytest.__version__
except Exception as exc:
    out["pytest_error"] = "%s: %s" % (type(exc).__name__, exc)
try:
    import pytest_daemonexit
    out["plugin"] = pytest_daemonexit.__version__
    out["plugin_file"] = pytest_daemonexit.__file__
except Exception as exc:
    out["plugin_error"] = "%s: %s" % (type(exc).__name__, exc)
try:
    from importlib.metadata import entry_points
    eps = entry_points()
    group = eps.select(group="pytest11") if hasattr(eps, "select") else eps.get("pytest11", ())
    out["entry_points"] = sorted(ep.name for ep in group)
except Exception:
    out["entry_points"] = None
print(json.dumps(out))
"""


class InterpreterError(ValueError):
    """An interpreter that cannot run children; the message says what to install."""


@dataclasses.dataclass(frozen=True)
class Interpreter:
    """A Python that runs children: its path and its version."""

    path: str
    version: Tuple[int, int, int]
    current: bool = False
    plugins: Tuple[str, ...] = ()  # pytest11 entry points installed there

    def has_plugin(self, name: str) -> bool:
        """Whether the plugin is installed there (this interpreter: the caller knows)."""
        return name in self.plugins

    @property
    def label(self) -> str:
        """Short name in tables and reports: the version, e.g. ``3.12.1``."""
        return ".".join(map(str, self.version))

    def to_json(self) -> Dict[str, object]:
        return {"path": self.path, "version": self.label}


def current() -> Interpreter:
    major, minor, micro = sys.version_info[:3]
    return Interpreter(sys.executable, (major, minor, micro), current=True)


def locate(name: str) -> str:
    """An absolute path for ``name`` (a path, or a command on PATH)."""
    if os.sep in name or (os.altsep and os.altsep in name):
        path = os.path.abspath(os.path.expanduser(name))
        if not os.path.exists(path):
            raise InterpreterError("no such file")
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise InterpreterError("not an executable file")
        return path
    found = shutil.which(name)
    if found is None:
        raise InterpreterError("not found on PATH (give a path to a python executable)")
    return os.path.abspath(found)


def probe(name: str, env: Optional[Mapping[str, str]] = None) -> Interpreter:
    """The interpreter ``name`` if it can run children of this session; else
    :class:`InterpreterError` saying what is missing and how to install it."""
    if name == CURRENT:
        return current()
    path = locate(name)
    # The same file in the same environment (a venv's python and python3 are one).
    if os.path.realpath(path) == os.path.realpath(sys.executable) and os.path.samefile(
        os.path.dirname(path), os.path.dirname(sys.executable)
    ):
        return current()
    try:
        done = subprocess.run(
            [path, "-c", _PROBE],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=dict(env) if env is not None else None,
            timeout=PROBE_SECONDS,
            cwd=os.path.dirname(path) or None,
        )
    except subprocess.TimeoutExpired:
        raise InterpreterError(f"did not answer within {PROBE_SECONDS:g} s") from None
    except OSError as exc:
        raise InterpreterError(f"cannot be started: {exc.strerror or exc}") from None
    try:
        info = json.loads(done.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise InterpreterError(
            "is not a Python 3.8+ interpreter"
            + (f" (it printed: {err[-1]})" if err else f" (exit status {done.returncode})")
        ) from None
    return _check(path, info)


def _check(path: str, info: Mapping[str, object]) -> Interpreter:
    raw = info.get("version")
    if not isinstance(raw, list) or len(raw) != 3:
        raise InterpreterError("did not report its version")
    version = (int(raw[0]), int(raw[1]), int(raw[2]))
    label = ".".join(map(str, version))
    install = f"{path} -m pip install"
    if info.get("implementation") != "cpython":
        raise InterpreterError(f"is {info.get('implementation')}, not CPython")
    if version < (3, 8):
        raise InterpreterError(f"is Python {label}; CPython 3.8 or newer is needed")
    if "pytest" not in info:
        raise InterpreterError(
            f"(Python {label}) cannot import pytest ({info.get('pytest_error')}); install it "
            f"there with: {install} 'pytest>=8' pytest-daemonexit=={pytest_daemonexit.__version__}"
            " (and what the tests import)"
        )
    found = _version_tuple(str(info["pytest"]))
    if found < MIN_PYTEST:
        raise InterpreterError(
            f"(Python {label}) has pytest {info['pytest']}; pytest 8 or newer is needed: "
            f"{install} -U 'pytest>=8'"
        )
    ours = pytest_daemonexit.__version__
    entry_points = info.get("entry_points")
    if "plugin" not in info or not (
        isinstance(entry_points, list) and "daemonexit" in entry_points
    ):
        raise InterpreterError(
            f"(Python {label}) does not have pytest-daemonexit installed; install it there "
            f"with: {install} pytest-daemonexit=={ours} (from this checkout: "
            f"{install} -e {_source_root()})"
        )
    if info["plugin"] != ours:
        raise InterpreterError(
            f"(Python {label}) has pytest-daemonexit {info['plugin']}, this session runs "
            f"{ours}; install the same version there: {install} pytest-daemonexit=={ours}"
        )
    return Interpreter(path, version, plugins=tuple(str(p) for p in entry_points))


def _source_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(pytest_daemonexit.__file__)))


def _version_tuple(text: str) -> Tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def resolve_all(
    names: Sequence[str], env: Optional[Mapping[str, str]] = None
) -> Tuple[Interpreter, ...]:
    """Every named interpreter, probed once, without duplicates; none named: this one."""
    if not names:
        return (current(),)
    found: Dict[str, Interpreter] = {}
    for name in names:
        try:
            interp = probe(name, env)
        except InterpreterError as exc:
            raise InterpreterError(f"{name}: {exc}") from None
        found.setdefault(os.path.realpath(interp.path) + interp.label, interp)
    return tuple(found.values())
