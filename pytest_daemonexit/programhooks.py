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


def _resolved(hook: Any) -> Any:
    while isinstance(hook, _StandIn):
        hook = hook.target
    return hook


def _is_pytests(hook: Any) -> bool:
    """pytest's own collector: a partial (pytest 8.4 and later) or a bound method of a
    context manager (earlier ones), defined in ``_pytest``."""
    func = getattr(hook, "func", hook)
    func = getattr(func, "__func__", func)
    return str(getattr(func, "__module__", "")).startswith("_pytest.")


class ProgramHooks:
    """pytest plugin in the child. Made before pytest's configure; the hooks the program
    has are those in place when its configure begins (the interpreter's defaults, or what
    the conftest files imported before it put there)."""

    def __init__(self) -> None:
        self.original: Dict[str, Any] = {name: getattr(mod, name) for mod, name in _HOOKS}
        self.stand_ins: List[Tuple[str, _StandIn]] = []
        self.set_by_test: Dict[str, List[Any]] = {name: [] for _mod, name in _HOOKS}
        # What pytest (8.4 and later) saves at its configure and puts back at its session's
        # end: retargeted when the test ends, so that a thread that raises after pytest has
        # put it back still meets the program's hook.
        self.session: Dict[str, _StandIn] = {}
        #: The program's last hooks, taken when the test ended.
        self.program: Dict[str, Any] = {}
        for mod, name in _HOOKS:
            self.session[name] = _StandIn(self.original[name])
            setattr(mod, name, self.session[name])

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(self, config: Any) -> None:
        # Before pytest's own configure replaces them (8.4 and later).
        self.original = {name: _resolved(getattr(mod, name)) for mod, name in _HOOKS}
        for name, stand_in in self.session.items():
            stand_in.target = self.original[name]

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
        program's, and the hooks the program set last are in place, while pytest's session
        ends and after."""
        for name, stand_in in self.stand_ins:
            if _is_pytests(stand_in.target):
                # Anything else is the program's: the test's own hook, one its module set
                # at import, or a chain to another stand-in.
                stand_in.target = self.original[name]
        if self.program:
            return  # what pytest puts back at its session's end is not the program's
        for mod, name in _HOOKS:
            if self.set_by_test[name]:
                hook = self.set_by_test[name][-1]
                # Safe only for a hook set in a test phase: one the test module set at
                # import may chain to this stand-in.
                self.session[name].target = hook
                setattr(mod, name, hook)
            else:
                hook = _resolved(getattr(mod, name))
            self.program[name] = self.original[name] if _is_pytests(hook) else hook

    def restore(self) -> None:
        """After the session: the hooks the program set last (not what pytest put back)."""
        self.test_ended()
        for mod, name in _HOOKS:
            setattr(mod, name, self.program[name])
