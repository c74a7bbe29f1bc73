"""pytest-daemonexit: find the bugs a Python program only shows while it shuts down.

PYTEST_DONT_REWRITE: the child imports the package before pytest starts, so pytest could
not rewrite it anyway and would warn (an error under ``-W error``).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0.dev0"

# Not "judge": the name is also the submodule's, and the import system would hand out
# either one depending on what was imported first.  Use pytest_daemonexit.judge.judge.
_LAZY = {
    "Signature": "pytest_daemonexit.signatures",
    "Settings": "pytest_daemonexit.settings",
    "RunRequest": "pytest_daemonexit.runner",
    "Evidence": "pytest_daemonexit.runner",
    "run": "pytest_daemonexit.runner",
    "Verdict": "pytest_daemonexit.judge",
    "Finding": "pytest_daemonexit.judge",
    "ExitResult": "pytest_daemonexit.checks",
    "Policy": "pytest_daemonexit.policies",
    "Action": "pytest_daemonexit.policies",
    "action": "pytest_daemonexit.policies",
    "InterpreterBug": "pytest_daemonexit.policies",
    "BUILTIN_POLICIES": "pytest_daemonexit.policies",
}
__all__ = sorted(_LAZY)


class _OwnModulesFinder:
    """Finds this package's modules for Python's own loader, ahead of pytest's assertion
    rewriter.  pytest rewrites every module of a plugin's distribution and caches the
    result only where bytecode may be written: under ``PYTHONDONTWRITEBYTECODE`` (common
    in CI images) it would parse and compile the plugin's modules from source in every
    session (0.1 s here), instead of loading the bytecode installed with them.  The
    plugin has no assertion a user reads."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if path is None or not fullname.startswith(__name__ + "."):
            return None
        from importlib.machinery import PathFinder

        return PathFinder.find_spec(fullname, path, target)


def own_modules_first() -> None:
    """Put the finder first on ``sys.meta_path``: at import, and again once pytest has
    put its rewriter there (a child imports this package before pytest starts)."""
    import sys

    for finder in [f for f in sys.meta_path if type(f).__name__ == _OwnModulesFinder.__name__]:
        sys.meta_path.remove(finder)
    sys.meta_path.insert(0, _OwnModulesFinder())


own_modules_first()


def __getattr__(name: str) -> Any:
    # Lazy, so that pytest's start-up only pays for the plugin module itself.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_daemonexit' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
