"""Plugin modules' fixtures, looked for once in the fork server instead of in every child.

At each session start pytest's fixture manager walks every attribute of every registered
plugin module looking for fixtures (``FixtureManager.pytest_plugin_registered``, then
``parsefactories``): a few hundred modules' worth of attributes, about a sixth of a forked
run.  The server, which has the same plugin modules as every child it forks, sorts their
attributes once: the ones that may define a fixture (or that pytest would warn about) and
the inert ones (plain functions without attributes, strings, numbers, modules, plain
classes).  In the child, pytest's own code parses a stand-in module that holds only the
former, the very same objects, so fixtures, their order, scopes and warnings are what
pytest would have found in the whole module.

A module that changed after the server looked at it (a plugin that adds a fixture to its
module from ``pytest_configure``), or that computes its attributes (``__getattr__``,
``__dir__``), is parsed whole, as pytest does.
"""

from __future__ import annotations

import functools
import inspect
import types
from typing import Any, Dict, List, Optional, Tuple

#: Attribute values that pytest never registers as, or warns about as, a fixture.
_INERT_TYPES = (
    types.ModuleType,
    types.BuiltinFunctionType,
    str,
    bytes,
    int,
    float,
    complex,
    bool,
    type(None),
)
#: Markers that pytest's fixture decorator (any 8.x or 9.x) and wrappers leave on objects.
_FIXTURE_ATTRIBUTES = ("_pytestfixturefunction", "__wrapped__", "__pytest_wrapped__")


class _Scanned:
    """One plugin module as the server found it."""

    __slots__ = ("items", "module", "standin")

    def __init__(self, module: types.ModuleType, standin: Optional[types.ModuleType]) -> None:
        self.module = module
        # Every (name, value) of the module then: how the child tells it did not change.
        self.items: Tuple[Tuple[str, Any], ...] = tuple(vars(module).items())
        self.standin = standin  # None: nothing in it can be a fixture

    def unchanged(self) -> bool:
        current = vars(self.module)
        if len(current) != len(self.items):
            return False
        missing = object()
        return all(current.get(name, missing) is value for name, value in self.items)


#: id(module) -> what the server found in it (filled in the server, read in its children).
_SCANNED: Dict[int, _Scanned] = {}


def _may_be_fixture(value: Any) -> bool:
    """False only for values that cannot be, wrap or hide a fixture."""
    kind = type(value)
    if kind in _INERT_TYPES:
        return False
    if kind is types.FunctionType:
        # The fixture decorator and functools.wraps leave attributes on a function.
        return bool(value.__dict__)
    if kind is type:
        return any(name in vars(base) for base in value.__mro__ for name in _FIXTURE_ATTRIBUTES)
    return True  # anything else is left to pytest


def _standin(module: types.ModuleType) -> Optional[types.ModuleType]:
    kept = {name: value for name, value in vars(module).items() if _may_be_fixture(value)}
    if not kept:
        return None
    standin = types.ModuleType(module.__name__, getattr(module, "__doc__", None))
    vars(standin).update(kept)
    if getattr(module, "__file__", None):
        standin.__file__ = module.__file__
    return standin


def scan(plugins: List[Any]) -> int:
    """In the server: look at every plugin module once; returns how many were scanned."""
    _SCANNED.clear()
    for plugin in plugins:
        if not isinstance(plugin, types.ModuleType):
            continue  # plugin objects keep state of their own: parsed in the child
        namespace = vars(plugin)
        if "__getattr__" in namespace or "__dir__" in namespace:
            continue  # computed attributes: dir() and getattr() are the module's own
        _SCANNED[id(plugin)] = _Scanned(plugin, _standin(plugin))
    return len(_SCANNED)


def use_scans() -> bool:
    """In a forked child, before its session: pytest's fixture manager parses the
    stand-ins of unchanged scanned modules.  False (nothing patched) when this pytest's
    fixture manager is not the one the scan was made for."""
    if not _SCANNED:
        return False
    try:
        from _pytest.fixtures import FixtureManager
    except ImportError:
        return False
    original = getattr(FixtureManager, "pytest_plugin_registered", None)
    if original is None:
        return False
    try:
        parameters = list(inspect.signature(original).parameters)
    except (TypeError, ValueError):
        return False
    if parameters != ["self", "plugin", "plugin_name"]:
        return False  # pytest 8.0 reads plugin.__file__ itself: leave it alone

    @functools.wraps(original)  # keeps any hookimpl options pytest put on it
    def pytest_plugin_registered(self: Any, plugin: Any, plugin_name: str) -> None:
        scanned = _SCANNED.get(id(plugin))
        if scanned is not None and scanned.module is plugin and scanned.unchanged():
            if scanned.standin is None:
                return
            plugin = scanned.standin
        original(self, plugin, plugin_name)

    FixtureManager.pytest_plugin_registered = pytest_plugin_registered  # type: ignore[method-assign]
    return True
