"""Hooks pytest-daemonexit offers to conftest files and plugins."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import pytest

if TYPE_CHECKING:
    from pytest_daemonexit.judge import Verdict
    from pytest_daemonexit.policies import Policy
    from pytest_daemonexit.runner import Evidence
    from pytest_daemonexit.settings import Settings
    from pytest_daemonexit.signatures import Signature


def pytest_daemonexit_signatures(config: pytest.Config) -> Optional[Sequence[Signature]]:
    """Return extra stderr signatures (:class:`pytest_daemonexit.Signature`).

    Called once per session; the results of every implementation are added before the
    built-in table, so a more specific signature of yours wins over a generic built-in.
    """


@pytest.hookspec(firstresult=True)
def pytest_daemonexit_verdict(
    item: pytest.Item, verdict: Verdict, evidence: Evidence, settings: Settings
) -> Optional[Verdict]:
    """Return a verdict to replace the one the judge gave for ``item``'s child, or None.

    ``evidence`` holds everything the child left (exit status, phases, stderr, dumps).
    The first non-None result wins.
    """


def pytest_daemonexit_policies(config: pytest.Config) -> Optional[Sequence[Policy]]:
    """Return extra finalization policies (:class:`pytest_daemonexit.Policy`).

    Called once per session, before the command line's policy names are checked, so
    implement it in a plugin or in the rootdir's ``conftest.py``.  A name may not repeat
    a built-in's.
    """
