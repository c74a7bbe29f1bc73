"""The exception hooks a test installs, kept in the child after pytest's session ends.

pytest points ``threading.excepthook`` and ``sys.unraisablehook`` at its own collectors
while it runs (pytest 8.4 and later from configure to the session's end, earlier ones
around each test phase), and at the end puts back the hook it found there. So a hook the
test installed is gone by the time the child shuts down. This is, for example, a library
that logs or swallows its threads' errors. A program outside pytest still has that hook,
so a thread that raises at exit would print "Exception in thread" in the child and
nowhere else.

In the child, each test phase therefore runs with a stand-in for whatever hook is set.
While the test runs, the stand-in calls that hook (pytest's collector); once the test has
ended, it calls the hook a program would have had, and the test's own hooks are back. A
test hook that chains to the one it replaced (``previous(args)``) thus reaches the
interpreter's default at exit, as it would outside pytest. What pytest puts back at its
session's end is a stand-in too, set before pytest's configure saved it, so a thread that
raises while the session ends meets the same hook.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Dict, Generator, List, Tuple

import pytest

#: The hooks pytest replaces while it runs: (module, attribute).
_HOOKS: Tuple[Tuple[Any, str], ...] = ((threading, "excepthook"), (sys, "unraisablehook"))


class _StandIn:
    """What the hook ``target`` is while a test phase runs; retargeted after the session."""

    __slots__ = ("target",)

    def __init__(self, target: Any) -> None:
        self.target = target

    def __call__(self, *args: Any) -> Any:
        return self.target(*args)


class ProgramHooks:
    """pytest plugin in the child. Made before pytest's configure, so the hooks it finds
    are the ones the program has (the interpreter's defaults, or what the conftest files,
    imported later, replace them with: pytest keeps those itself)."""

    def __init__(self) -> None:
        self.original: Dict[str, Any] = {name: getattr(mod, name) for mod, name in _HOOKS}
        self.stand_ins: List[Tuple[str, _StandIn]] = []
        self.set_by_test: Dict[str, List[Any]] = {name: [] for _mod, name in _HOOKS}
        # What pytest (8.4 and later) saves at its configure and puts back at its session's
        # end: retargeted when the test ends, so that a thread that raises after pytest has
        # put it back still meets the program's hook.
        self.session: Dict[str, _StandIn] = {}
        for mod, name in _HOOKS:
            self.session[name] = _StandIn(self.original[name])
            setattr(mod, name, self.session[name])

    def _phase(self) -> Generator[None, Any, Any]:
        # Innermost wrapper (trylast): inside pytest's own, which may set its hook per phase.
        mine = {}
        for mod, name in _HOOKS:
            stand_in = _StandIn(getattr(mod, name))
            setattr(mod, name, stand_in)
            mine[name] = stand_in
            self.stand_ins.append((name, stand_in))
        try:
            return (yield)
        finally:
            for mod, name in _HOOKS:
                current = getattr(mod, name)
                if current is not mine[name]:
                    self.set_by_test[name].append(current)  # left in place, as pytest does

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_setup(self, item: Any) -> Generator[None, Any, Any]:
        return (yield from self._phase())

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_call(self, item: Any) -> Generator[None, Any, Any]:
        return (yield from self._phase())

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_teardown(self, item: Any, nextitem: Any) -> Generator[None, Any, Any]:
        return (yield from self._phase())

    def test_ended(self) -> None:
        """The child's one test has ended: stand-ins that called pytest's hooks call the
        program's, and the hooks the test set last are in place, while pytest's session
        ends and after."""
        for name, stand_in in self.stand_ins:
            target = stand_in.target
            if isinstance(target, _StandIn) or any(target is v for v in self.set_by_test[name]):
                continue  # the test's own hook, or a chain to it: kept
            stand_in.target = self.original[name]
        for mod, name in _HOOKS:
            if self.set_by_test[name]:
                self.session[name].target = self.set_by_test[name][-1]
                setattr(mod, name, self.set_by_test[name][-1])

    def restore(self) -> None:
        """After the session: the hooks the test set last, else the program's own (not
        the stand-in pytest put back)."""
        self.test_ended()
        for mod, name in _HOOKS:
            if not self.set_by_test[name] and getattr(mod, name) is self.session[name]:
                setattr(mod, name, self.session[name].target)
