"""What a child or a fork server is started with: its command line and its environment.

Kept apart from ``runner.py`` so that launching the fork server early, before the conftest
files, imports only this: the server starts a few milliseconds sooner.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

#: Environment variables that change what can go wrong at exit, or make the child
#: interactive; the child's behaviour must not depend on whether the CI image sets them.
PINNED_ENVIRONMENT = (
    "PYTHONUNBUFFERED",
    "PYTHONDEVMODE",
    "PYTHONWARNINGS",
    "PYTHONFAULTHANDLER",
    "PYTHONMALLOC",
    "PYTHONTRACEMALLOC",
    "PYTHONASYNCIODEBUG",
    "PYTHONINSPECT",
    "PYTHONSTARTUP",
)

_BOOTSTRAP = (
    "import sys; sys.path[0:1] = {head!r}; "
    "{pkg!r} in sys.path or sys.path.append({pkg!r}); "
    "from pytest_daemonexit.{module} import main; main()"
)
PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)
#: sys.path[0] of this process before pytest inserted rootdirs into it.
ORIGINAL_SYS_PATH0: Optional[str] = sys.path[0] if sys.path else None


def interpreter_argv(
    python: str, flags: Sequence[str], sys_path0: Optional[str], module: str, spec_path: str
) -> List[str]:
    """The command line of a child or fork server: ``pytest_daemonexit.<module>.main`` with
    ``sys.path[0]`` as this process had it, and this package importable."""
    head = [] if sys_path0 is None else [sys_path0]
    code = _BOOTSTRAP.format(head=head, pkg=PACKAGE_PARENT, module=module)
    return [python, "-X", "faulthandler", *flags, "-c", code, spec_path]


def child_environment(
    base: Optional[Mapping[str, str]] = None, extra: Optional[Mapping[str, str]] = None
) -> Dict[str, str]:
    env = dict(os.environ if base is None else base)
    for name in PINNED_ENVIRONMENT:
        env.pop(name, None)
    env.update(extra or {})
    return env


def with_hash_seed(env: Mapping[str, str], session_seed: int) -> Dict[str, str]:
    """``env`` with ``PYTHONHASHSEED`` derived from the session seed, unless it sets one.
    The order of a set of strings (which callbacks or workers close first at exit) then
    follows the seed: a run's replay command reproduces it, and a forked child, which
    keeps its server's hash secret, gets the one a spawned child would."""
    out = dict(env)
    out.setdefault("PYTHONHASHSEED", str(session_seed % 2**32))
    return out
