"""Plugin modules' fixtures, looked for once in the fork server instead of in every child.

At each session start pytest's fixture manager walks every attribute of every registered
plugin looking for fixtures (``FixtureManager.pytest_plugin_registered``, then
``parsefactories``): a thousand attributes, a fifth of a forked run.  The server, which has
the same plugin modules as every child it forks, sorts their attributes once: the ones
that may define a fixture (or that pytest would warn about) and the inert ones (strings,
numbers, modules, functions without attributes, classes without fixture attributes,
objects without a fixture marker or ``__wrapped__``).  In the child, pytest's own code
parses a stand-in module that holds only the former, the very same objects, so fixtures,
their order, scopes and warnings are what pytest would have found in the whole module.
A plugin object (pytest looks its fixtures up on its class) whose class has nothing that
may be a fixture is not parsed at all.

A module that changed after the server looked at it (a plugin that adds a fixture to its
module from ``pytest_configure``), or that lists attributes it computes (``__dir__``), is
parsed whole, as pytest does.
"""

from __future__ import annotations

import enum
import functools
import inspect
import operator
import types
from typing import Any, Dict, List, Optional

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
#: Attributes of a class that make pytest look further (fixture markers, a wrapped chain).
_FIXTURE_ATTRIBUTES = ("_pytestfixturefunction", "__wrapped__", "__pytest_wrapped__")


class _Scanned:
    """One plugin module as the server found it."""

    __slots__ = ("module", "names", "standin", "values")

    def __init__(self, module: types.ModuleType, standin: Optional[types.ModuleType]) -> None:
        self.module = module
        # Its names and values then: how the child tells it did not change.
        namespace = vars(module)
        self.names = tuple(namespace)
        self.values = tuple(namespace.values())
        self.standin = standin  # None: nothing in it can be a fixture

    def unchanged(self) -> bool:
        namespace = vars(self.module)
        return tuple(namespace) == self.names and all(
            map(operator.is_, namespace.values(), self.values)
        )


#: id(module) -> what the server found in it (filled in the server, read in its children).
_SCANNED: Dict[int, _Scanned] = {}


def _may_be_fixture(value: Any) -> bool:
    """False only for values that cannot be, wrap or hide a fixture for pytest 8.1 to 9.x:
    nothing along their ``__wrapped__`` chain is the fixture decorator's result or marked
    by it, and they are no staticmethod or classmethod around such a thing."""
    if type(value) in _INERT_TYPES:
        return False
    try:
        if isinstance(value, (staticmethod, classmethod)):
            return _may_be_fixture(value.__func__)
        if isinstance(value, type) and _computes_attributes(type(value)):
            return True
        for _ in range(100):
            if (
                type(value).__name__ == "FixtureFunctionDefinition"
                or getattr(value, "_pytestfixturefunction", None) is not None
                or getattr(value, "__pytest_wrapped__", None) is not None
            ):
                return True
            value = getattr(value, "__wrapped__", None)
            if value is None:
                return False
    except Exception:  # an object that cannot be looked at: pytest looks at it
        pass
    return True  # a chain too long or broken: pytest looks at it


def _computes_attributes(meta: type) -> bool:
    """A metaclass that computes its classes' attributes (an Enum's only yields members)."""
    plain = vars(type)["__getattribute__"]
    own = getattr(meta, "__getattribute__", plain)
    if issubclass(meta, enum.EnumMeta) and own is plain:
        return False
    return own is not plain or hasattr(meta, "__getattr__")


def _class_may_have_fixtures(cls: type) -> bool:
    """Whether a plugin object of this class may hold a fixture: pytest looks the object's
    attributes up on its class, so any attribute of the hierarchy that may be one counts,
    and so does a metaclass that computes attributes."""
    if _computes_attributes(type(cls)):
        return True
    for base in cls.__mro__:
        if base is object:
            continue
        for name, value in vars(base).items():
            if name in _FIXTURE_ATTRIBUTES or _may_be_fixture(value):
                return True
    return False


def _standin(module: types.ModuleType) -> Optional[types.ModuleType]:
    kept = {name: value for name, value in vars(module).items() if _may_be_fixture(value)}
    if not kept:
        return None
    standin = types.ModuleType(module.__name__, getattr(module, "__doc__", None))
    vars(standin).update(kept)
    if getattr(module, "__file__", None):
        standin.__file__ = module.__file__
    return standin


def _is_class(value: Any) -> bool:
    try:
        return isinstance(value, type)
    except Exception:
        return True


def scan(plugins: List[Any]) -> int:
    """In the server: look at every plugin module once; returns how many were scanned."""
    _SCANNED.clear()
    for plugin in plugins:
        if not isinstance(plugin, types.ModuleType):
            continue  # plugin objects keep state of their own: parsed in the child
        if "__dir__" in vars(plugin):
            # It lists attributes it computes (a module __getattr__ alone does not matter:
            # pytest only looks up the names that dir() lists).
            continue
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

    classes: Dict[type, bool] = {}

    @functools.wraps(original)  # keeps any hookimpl options pytest put on it
    def pytest_plugin_registered(self: Any, plugin: Any, plugin_name: str) -> None:
        scanned = _SCANNED.get(id(plugin))
        if scanned is not None and scanned.module is plugin and scanned.unchanged():
            if scanned.standin is None:
                return
            plugin = scanned.standin
        elif not isinstance(plugin, types.ModuleType) and not _is_class(plugin):
            cls = type(plugin)
            if cls not in classes:
                try:
                    classes[cls] = _class_may_have_fixtures(cls)
                except Exception:
                    classes[cls] = True
            if not classes[cls]:
                return
        original(self, plugin, plugin_name)

    FixtureManager.pytest_plugin_registered = pytest_plugin_registered  # type: ignore[method-assign]
    return True
