from __future__ import annotations

import textwrap
from typing import Any, Optional

import pytest

#: Every plugin run in the suite is bounded; a hang here is a bug in the plugin.
RUN_GUARD_SECONDS = 120


class Runner:
    """Runs pytest with the plugin in a subprocess, the way users run it."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester

    def write(self, source: str, name: str = "test_it") -> None:
        self.pytester.makepyfile(**{name: textwrap.dedent(source)})

    def __call__(
        self, *args: str, native: bool = False, policy: Optional[str] = "baseline", **kw: Any
    ) -> pytest.RunResult:
        # Most tests are about judging one run; the natural run is enough for them.
        extra = [] if native else ["--daemonexit-native-stacks=off"]
        # Hypothesis' plugin (installed for this suite's own property tests) would be
        # loaded by every pytest under test and every child: about 0.5 s of CPU each.
        extra += ["-p", "no:hypothesispytest"]
        if policy is not None:
            extra.append(f"--daemonexit-policy={policy}")
        return self.pytester.runpytest_subprocess(
            "-p", "daemonexit", *extra, *args, timeout=RUN_GUARD_SECONDS, **kw
        )


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Runner:
    # The CI image may or may not set it; the plugin must remove it either way.
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    return Runner(pytester)
