"""Each verdict class, produced by a real child interpreter that really finalizes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def test_clean_exit_passes(run):
    run.write(
        """
        import threading, pytest

        @pytest.mark.daemon_exit
        def test_ok():
            stop = threading.Event()
            t = threading.Thread(target=stop.wait)
            t.start()
            stop.set()
            t.join()
        """
    )
    result = run()
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*daemon exit*")


def test_nondaemon_thread_is_a_hang_with_the_hanging_function(run):
    run.write(
        """
        import threading, time, pytest

        def poll_forever():
            while True:
                time.sleep(0.05)

        @pytest.mark.daemon_exit(timeout=1)
        def test_worker():
            threading.Thread(target=poll_forever).start()
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*daemon exit: HANG in phase threading_shutdown*",
            "*killed by SIGKILL*stopped by pytest-daemonexit*",
            "*did not exit within 1 s after the test finished*",
            "*innermost user frame: poll_forever at *test_it.py:5*",
            '*> File "*test_it.py", line 5 in poll_forever',
        ]
    )


def test_hang_in_atexit_names_the_phase(run):
    run.write(
        """
        import atexit, threading, pytest

        never = threading.Event()
        worker = threading.Thread(target=never.wait, daemon=True)

        @pytest.mark.daemon_exit(timeout=1)
        def test_join_at_exit():
            worker.start()
            atexit.register(worker.join)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*daemon exit: HANG in phase atexit (running atexit callbacks)*"])


def test_hang_leaves_no_process_behind(run, tmp_path):
    marker = f"daemonexit-leftover-{os.getpid()}"
    run.write(
        f"""
        import subprocess, sys, threading, time, pytest

        @pytest.mark.daemon_exit(timeout=1)
        def test_spawns():
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)",
                              "{marker}"])
            threading.Thread(target=time.sleep, args=(300,)).start()
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    ps = subprocess.run(["ps", "-eo", "pid,args"], stdout=subprocess.PIPE, check=True)
    assert marker not in ps.stdout.decode(), "a grandchild survived the hang verdict"


def test_segfault_at_exit_names_the_signal(run):
    run.write(
        """
        import atexit, ctypes, pytest

        @pytest.mark.daemon_exit
        def test_crash():
            atexit.register(ctypes.string_at, 0)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*daemon exit: FATAL_ERROR, EXIT_CODE in phase atexit*",
            "*exit: killed by SIGSEGV (signal 11)*",
            "*Fatal Python error: Segmentation fault*",
        ]
    )


def test_abort_at_exit_names_the_signal(run):
    run.write(
        """
        import atexit, os, pytest

        @pytest.mark.daemon_exit
        def test_abort():
            atexit.register(os.abort)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*exit: killed by SIGABRT (signal 6)*"])


def test_unexpected_exit_status(run):
    run.write(
        """
        import atexit, os, pytest

        @pytest.mark.daemon_exit
        def test_status():
            atexit.register(os._exit, 3)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*daemon exit: EXIT_CODE*", "*ended with exit status 3, expected exit status 0*"]
    )


def test_fatal_error_at_shutdown(run):
    run.write(
        """
        import ctypes, pytest

        class Resource:
            # Bound now: module globals are None by the time module teardown runs this.
            def __del__(self, _fatal=ctypes.pythonapi.Py_FatalError):
                _fatal(b"resource freed twice")

        keep = Resource()

        @pytest.mark.daemon_exit
        def test_fatal():
            pass
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*FATAL_ERROR*", "*Fatal Python error: *resource freed twice*", "*SIGABRT*"]
    )


def test_daemon_thread_holding_the_stdout_lock_is_the_buffered_busy_crash(run):
    # Deterministic version of the commonest daemon-thread crash: a daemon thread is
    # always inside a buffered write of stdout (its raw write releases the GIL) when
    # the interpreter flushes stdout during finalization.
    run.write(
        """
        import atexit, io, sys, threading, time, pytest

        class SlowTerminal(io.RawIOBase):
            name = "<stdout>"
            def writable(self):
                return True
            def write(self, data):
                time.sleep(0.01)
                return len(data)

        @pytest.mark.daemon_exit
        def test_progress_reporter():
            out = io.TextIOWrapper(io.BufferedWriter(SlowTerminal(), 8), write_through=True)
            def report():
                while True:
                    out.write("progress\\n")
            threading.Thread(target=report, daemon=True).start()
            # The application's console is sys.stdout when the interpreter flushes it.
            atexit.register(setattr, sys, "stdout", out)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*daemon exit: FATAL_ERROR, EXIT_CODE in phase finalizing*",
            "*killed by SIGABRT*",
            "*stopped while holding a buffered stream's lock*",
            "*could not acquire lock for <_io.BufferedWriter name='<stdout>'> at interpreter shut*",
        ]
    )


def test_exception_in_daemon_thread_after_atexit_closed_its_file(run):
    run.write(
        """
        import atexit, os, threading, time, pytest

        class Client:
            def __init__(self):
                self.file = open(os.devnull, "w")
                threading.Thread(target=self.flush_forever, daemon=True).start()
            def flush_forever(self):
                while True:
                    self.file.write("metric 1\\n")
                    time.sleep(0.001)
            def close(self):
                self.file.close()
                time.sleep(0.2)  # e.g. waiting for a server acknowledgement

        @pytest.mark.daemon_exit
        def test_client():
            atexit.register(Client().close)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*daemon exit: SHUTDOWN_EXCEPTION in phase atexit*",
            "*exit: exit status 0*",
            "*SHUTDOWN_EXCEPTION (printed in phase atexit): a thread raised*",
            "*Exception in thread*",
            "*ValueError: I/O operation on closed file*",
        ]
    )


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_a_stream_taken_while_pytest_captured_is_still_open_at_exit(run, start):
    # Correct code: a worker writes at exit to the stream it took in the test (what a
    # logging.StreamHandler made there holds), and an atexit handler wakes and joins it.
    # Outside pytest that stream is the real stderr; in the child it is pytest's capture
    # file, which pytest's session end must not leave closed under the worker.
    run.write(
        """
        import atexit, sys, threading, pytest

        @pytest.mark.daemon_exit
        def test_worker_flushes_at_exit():
            stream = sys.stderr
            go = threading.Event()

            def worker():
                go.wait()
                stream.write("flushed at exit\\n")
                stream.flush()

            thread = threading.Thread(target=worker, daemon=True)
            thread.start()

            def stop():
                go.set()
                thread.join()

            atexit.register(stop)
        """
    )
    result = run(f"--daemonexit-start={start}")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*I/O operation on closed file*")


#: A daemon worker that raises at exit, once an atexit callback wakes it (and joins it),
#: and a thread hook that records the error.
RAISES_AT_EXIT = """
import atexit, os, sys, threading, pytest

HERE = os.path.dirname(os.path.abspath(__file__))

def raise_at_exit():
    go = threading.Event()

    def worker():
        go.wait()
        raise ConnectionResetError("peer went away")

    thread = threading.Thread(target=worker, name="shipper", daemon=True)
    thread.start()

    def stop():
        go.set()
        thread.join()

    atexit.register(stop)

def record(args):
    with open(os.path.join(HERE, "logged.txt"), "w") as f:
        f.write(repr(args.exc_value))
"""


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_a_threads_error_hook_the_test_installed_still_handles_errors_at_exit(run, start):
    # Correct code: the library handles its threads' errors with its own hook. pytest puts
    # its previous hook back when its session ends; a program outside pytest keeps the
    # library's, so nothing is printed at exit.
    run.write(
        RAISES_AT_EXIT
        + """
@pytest.mark.daemon_exit
def test_errors_are_logged():
    threading.excepthook = record
    raise_at_exit()
"""
    )
    result = run(f"--daemonexit-start={start}")
    result.assert_outcomes(passed=1)
    logged = run.pytester.path / "logged.txt"
    assert logged.read_text() == "ConnectionResetError('peer went away')"


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_a_threads_error_hook_the_test_module_set_at_import_handles_errors_at_exit(run, start):
    # Set while pytest collects, outside every test phase: still the program's hook.
    run.write(
        RAISES_AT_EXIT
        + """
threading.excepthook = record

@pytest.mark.daemon_exit
def test_errors_are_logged():
    raise_at_exit()
"""
    )
    result = run(f"--daemonexit-start={start}")
    result.assert_outcomes(passed=1)
    logged = run.pytester.path / "logged.txt"
    assert logged.read_text() == "ConnectionResetError('peer went away')"


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_a_hook_that_chains_to_the_one_it_replaced_reaches_the_default_at_exit(run, start):
    # The hook the test replaced was pytest's; outside pytest it is the interpreter's
    # default, which prints the error: the run fails as the program would print.
    run.write(
        RAISES_AT_EXIT
        + """
@pytest.mark.daemon_exit
def test_errors_are_logged_then_printed():
    previous = threading.excepthook

    def log(args):
        record(args)
        previous(args)

    threading.excepthook = log
    raise_at_exit()
"""
    )
    result = run(f"--daemonexit-start={start}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*SHUTDOWN_EXCEPTION (printed in phase atexit)*",
            "*Exception in thread shipper*",
            "*ConnectionResetError: peer went away*",
        ]
    )
    logged = run.pytester.path / "logged.txt"
    assert logged.read_text() == "ConnectionResetError('peer went away')"


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_an_unraisable_hook_the_test_installed_still_handles_errors_at_exit(run, start):
    run.write(
        """
        import os, sys, pytest

        HERE = os.path.dirname(os.path.abspath(__file__))

        class Connection:
            def __del__(self):
                raise RuntimeError("socket already closed")

        @pytest.mark.daemon_exit
        def test_conn():
            global conn

            # Called in module teardown, when builtins and (3.8) io may be gone: it keeps
            # its own and writes to a descriptor opened now.
            fd = os.open(os.path.join(HERE, "logged.txt"), os.O_WRONLY | os.O_CREAT)

            def log(unraisable, write=os.write, fd=fd, repr=repr):
                write(fd, repr(unraisable.exc_value).encode())

            sys.unraisablehook = log
            conn = Connection()
        """
    )
    result = run(f"--daemonexit-start={start}")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*Exception ignored in*")
    logged = run.pytester.path / "logged.txt"
    assert logged.read_text() == "RuntimeError('socket already closed')"


SESSION_END_CONFTEST = """
import os
import threading

#: (event, thread): threads that raise once the session ends, here or in a child.
LATER = []

if os.environ["HOOK"] == "conftest":
    # A library the conftest file imports handles its threads' errors itself.
    threading.excepthook = lambda args: None

def release():
    for go, thread in LATER:
        go.set()
        thread.join()

def pytest_sessionfinish(session):
    if os.environ["RAISE_AT"] == "sessionfinish":
        release()

def pytest_configure(config):
    # Registered before pytest's own plugins register theirs (this configure runs
    # first): runs after they have put back the hooks they replaced.
    if os.environ["RAISE_AT"] == "cleanup":
        config.add_cleanup(release)
"""


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
@pytest.mark.parametrize("hook", ["default", "test", "conftest"])
@pytest.mark.parametrize("when", ["sessionfinish", "cleanup"])
def test_a_thread_that_raises_while_the_childs_session_ends_is_judged(
    run, monkeypatch, start, hook, when
):
    # A thread that raises just after the test prints "Exception in thread" outside
    # pytest, unless the program's hook handles it. In the child, pytest's session is
    # still ending then: its own hook would turn the error into a warning nobody sees, and
    # at its very end it puts back the hook it found at its start, not the test's.
    run.pytester.makeconftest(SESSION_END_CONFTEST)
    monkeypatch.setenv("RAISE_AT", when)
    monkeypatch.setenv("HOOK", hook)
    swallow = "threading.excepthook = lambda args: None" if hook == "test" else ""
    run.write(
        f"""
        import threading, pytest
        from conftest import LATER

        @pytest.mark.daemon_exit
        def test_reconnects_later():
            {swallow}
            go = threading.Event()

            def fail_later():
                go.wait()
                raise ConnectionResetError("peer went away")

            thread = threading.Thread(target=fail_later, name="reconnector", daemon=True)
            thread.start()
            LATER.append((go, thread))
        """
    )
    result = run(f"--daemonexit-start={start}")
    if hook != "default":  # a swallowing hook, the test's or the conftest file's
        result.assert_outcomes(passed=1)
        result.stdout.no_fnmatch_line("*Exception in thread*")
        return
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*SHUTDOWN_EXCEPTION (printed in phase session_end)*",
            "*Exception in thread reconnector*",
            "*ConnectionResetError: peer went away*",
        ]
    )


def test_exception_ignored_in_finalizer(run):
    run.write(
        """
        import pytest

        class Connection:
            def __del__(self):
                raise RuntimeError("socket already closed")

        conn = Connection()

        @pytest.mark.daemon_exit
        def test_conn():
            pass
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*SHUTDOWN_EXCEPTION*", "*Exception ignored in*", "*RuntimeError: socket already closed*"]
    )


def test_thread_started_in_module_teardown(run):
    # A finalizer that lazily starts a worker during module teardown: CPython 3.8-3.11 hang
    # in Thread.start(), 3.12 raises RuntimeError, 3.13 PythonFinalizationError.
    run.write(
        """
        import threading, pytest

        class Pool:
            def __del__(self, _Thread=threading.Thread):
                _Thread(target=print).start()

        @pytest.mark.daemon_exit(timeout=2)
        def test_pool():
            # Created in the test, not at import: the parent imports the module too.
            global pool
            pool = Pool()
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    if sys.version_info >= (3, 12):
        result.stdout.fnmatch_lines(
            ["*SHUTDOWN_EXCEPTION*", "*can't create new thread at interpreter shutdown*"]
        )
    else:
        result.stdout.fnmatch_lines(["*daemon exit: HANG in phase module_teardown*"])


def test_body_failure_stays_a_normal_failure(run):
    run.write(
        """
        import pytest

        @pytest.mark.daemon_exit
        def test_body():
            x = 41
            assert x == 42
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*>*assert x == 42*", "E*assert 41 == 42", "*test_it.py:6: AssertionError"]
    )
    result.stdout.no_fnmatch_line("*daemon exit*")
    result.stdout.fnmatch_lines(["FAILED test_it.py::test_body - assert 41 == 42"])


def test_body_failure_and_bad_exit_are_both_reported(run):
    run.write(
        """
        import atexit, os, pytest

        @pytest.mark.daemon_exit
        def test_both():
            atexit.register(os._exit, 7)
            assert False, "body failed"
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: body failed*",
            "*- daemon exit -*",
            "daemon exit: EXIT_CODE in phase atexit*",
            "*ended with exit status 7, expected exit status 0*",
        ]
    )


def test_crash_during_the_test_body(run):
    run.write(
        """
        import os, pytest

        @pytest.mark.daemon_exit
        def test_abort_now():
            os.abort()
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*the child did not finish the test's call phase*",
            "*in phase test*",
            "*killed by SIGABRT*",
        ]
    )


@pytest.mark.parametrize(
    "body", ["os.closerange(3, 1024)", "os._exit(0)"], ids=["closes-descriptors", "exits"]
)
def test_a_child_that_goes_silent_in_the_test_says_what_may_have_cut_it_off(run, body):
    run.write(
        f"""
        import os, pytest

        @pytest.mark.daemon_exit
        def test_silent():
            {body}
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*the child did not finish the test's call phase*",
            "*nothing more came from the child after the test's setup*os._exit*",
            "*os.closerange(3, ...)*",
        ]
    )


def test_a_child_killed_in_the_test_gets_no_hint_about_descriptors(run):
    run.write(
        """
        import os, signal, pytest

        @pytest.mark.daemon_exit
        def test_killed():
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the child did not finish the test's call phase*"])
    result.stdout.no_fnmatch_line("*os.closerange*")


def test_hang_in_the_test_body_is_stopped_by_run_timeout(run):
    run.write(
        """
        import time, pytest

        @pytest.mark.daemon_exit(run_timeout=1)
        def test_sleeps():
            time.sleep(300)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*daemon exit: HANG in phase test*",
            "*HANG: the test did not finish within run_timeout=1 s*",
            '*> File "*test_it.py", line 5 in test_sleeps',
        ]
    )


def test_reproduce_command_reproduces_the_failure(run, pytester):
    run.write(
        """
        import atexit, os, pytest

        @pytest.mark.daemon_exit
        def test_status():
            atexit.register(os._exit, 5)
        """
    )
    result = run()
    result.assert_outcomes(failed=1)
    lines = result.stdout.lines
    command = lines[lines.index("reproduce with:") + 1].strip()
    assert "test_it.py::test_status" in command
    again = subprocess.run(
        command,
        shell=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out = again.stdout.decode()
    assert again.returncode == 1, out
    assert "ended with exit status 5, expected exit status 0" in out


def test_native_stacks_of_a_hang(run):
    if not any(os.access(os.path.join(d, "gdb"), os.X_OK) for d in os.environ["PATH"].split(":")):
        pytest.skip("gdb is not installed")
    run.write(
        """
        import threading, time, pytest

        @pytest.mark.daemon_exit(timeout=1)
        def test_worker():
            threading.Thread(target=time.sleep, args=(300,)).start()
        """
    )
    result = run(native=True)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*native stacks*", "*$ gdb*", "*Thread 2 (LWP *", "*time_sleep*"])
