"""Only for the run *without* the plugin (``pytest -p no:daemonexit examples/``).

Every example test passes in-process, but the examples leave the pytest process itself
unable to exit cleanly: test_task_queue.py and test_event_sender.py make it hang forever
after the summary, and most other bugs can print errors or abort at exit.  Without the
plugin this conftest registers the marker and, once pytest has reported everything, ends
the process with ``os._exit`` so that the demonstration run ends with pytest's own status.
With the plugin loaded it does nothing: the plugin's child must finalize for real.
"""

import os
import sys

import pytest

_exit_status = None


def _plugin_active(config):
    return config.pluginmanager.has_plugin("daemonexit")


def pytest_configure(config):
    if not _plugin_active(config):
        config.addinivalue_line("markers", "daemon_exit(**kwargs): pytest-daemonexit marker")


def pytest_sessionfinish(session, exitstatus):
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if _plugin_active(config) or _exit_status is None:
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(_exit_status)
