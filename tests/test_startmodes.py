"""Start modes and concurrency: a forked child is as faithful as a spawned one, the fork
server falls back and recovers, and --daemonexit-jobs does not change a single verdict."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from typing import Any, Dict, List, Tuple

import pytest
from conftest import RUN_GUARD_SECONDS

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the fork server runs on Linux"
)

#: Exit scenarios with one deterministic verdict each.
SCENARIOS = """
    import atexit, os, sys, threading, time, pytest

    @pytest.mark.daemon_exit
    def test_clean():
        pass

    @pytest.mark.daemon_exit
    def test_exit_status():
        atexit.register(os._exit, 3)

    @pytest.mark.daemon_exit
    def test_abort_at_exit():
        atexit.register(os.abort)

    @pytest.mark.daemon_exit(timeout=1)
    def test_hang_at_exit():
        t = threading.Thread(target=time.sleep, args=(600,), daemon=True)
        t.start()
        atexit.register(t.join)

    @pytest.mark.daemon_exit
    def test_exception_in_atexit():
        def broken():
            raise RuntimeError("flush failed at exit")
        atexit.register(broken)

    @pytest.mark.daemon_exit
    def test_fails_itself():
        assert 1 == 2

    @pytest.mark.daemon_exit
    def test_skips_itself():
        pytest.skip("not here")

    def _check(result):
        assert (result.tmp_path / "done").read_text() == "written at exit"

    @pytest.mark.daemon_exit(check=_check)
    def test_data_written_at_exit(tmp_path):
        atexit.register((tmp_path / "done").write_text, "written at exit")

    class _InACycle:
        # Only the cyclic collector frees it, at exit; os.write and the fd outlive the
        # modules' teardown.
        def __init__(self, path):
            self.cycle = self
            self.fd = os.open(str(path), os.O_WRONLY | os.O_CREAT)
            self.write = os.write

        def __del__(self):
            self.write(self.fd, b"finalized")

    def _check_finalized(result):
        assert (result.tmp_path / "finalized").read_text() == "finalized"

    @pytest.mark.daemon_exit(check=_check_finalized)
    def test_own_garbage_is_finalized_at_exit(tmp_path):
        global KEPT
        KEPT = _InACycle(tmp_path / "finalized")
"""


def _runs(pytester: pytest.Pytester, name: str = "report.json") -> List[Dict[str, Any]]:
    runs: List[Dict[str, Any]] = json.loads((pytester.path / name).read_text())["runs"]
    return runs


def _verdicts(runs: List[Dict[str, Any]]) -> Dict[Tuple[str, str, int], Tuple[Any, ...]]:
    return {
        (r["nodeid"], r["policy"], r["round"]): (
            r["verdict"],
            tuple(r["classes"]),
            r["phase"],
            r["exit"]["returncode"],
            r["test_outcome"],
            r["seed"],
        )
        for r in runs
    }


def test_both_start_modes_give_the_same_verdicts(run, pytester):
    run.write(SCENARIOS)
    results = {}
    for start in ("spawn", "forkserver"):
        result = run(
            f"--daemonexit-start={start}",
            "--daemonexit-seed=11",
            f"--daemonexit-report={start}.json",
            "--daemonexit-jobs=1",
        )
        result.assert_outcomes(passed=3, failed=5, skipped=1)
        runs = _runs(pytester, f"{start}.json")
        assert {r["start"] for r in runs} == {start}
        results[start] = _verdicts(runs)
        # faulthandler's dump of the hang reached the parent: the main thread in join()
        (hang,) = [r for r in runs if r["nodeid"].endswith("::test_hang_at_exit")]
        functions = {f["function"] for s in hang["stacks"] for f in s["frames"]}
        assert "join" in functions, hang["stacks"]
    assert results["spawn"] == results["forkserver"]
    verdicts = {key[0].split("::")[1]: value[0] for key, value in results["spawn"].items()}
    assert verdicts == {
        "test_clean": "ok",
        "test_exit_status": "EXIT_CODE",
        "test_abort_at_exit": "FATAL_ERROR",
        "test_hang_at_exit": "HANG",
        "test_exception_in_atexit": "SHUTDOWN_EXCEPTION",
        "test_fails_itself": "ok",
        "test_skips_itself": "ok",
        "test_data_written_at_exit": "ok",
        "test_own_garbage_is_finalized_at_exit": "ok",
    }


def test_jobs_do_not_change_verdicts_or_their_order(run, pytester):
    run.write(SCENARIOS)
    orders = {}
    for jobs in (1, 2):
        result = run(
            f"--daemonexit-jobs={jobs}",
            "--daemonexit-seed=3",
            "--daemonexit-rounds=2",
            f"--daemonexit-report=jobs{jobs}.json",
        )
        result.assert_outcomes(passed=3, failed=5, skipped=1)
        runs = _runs(pytester, f"jobs{jobs}.json")
        orders[jobs] = [((r["nodeid"], r["policy"], r["round"]), r["verdict"]) for r in runs]
    assert orders[1] == orders[2]


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_a_run_started_ahead_is_run_again_when_a_test_in_between_changes_the_environment(
    run, start
):
    # The last test's run starts ahead, while the slow first one runs, before the unmarked
    # test in between has set the variable it needs at exit.
    run.write(
        """
        import atexit, os, time, pytest

        @pytest.mark.daemon_exit
        def test_a_slow():
            time.sleep(0.5)

        def test_b_configures():
            os.environ["MYAPP_AUDIT_LOG"] = "audit.log"

        @pytest.mark.daemon_exit
        def test_c_writes_its_audit_log_at_exit():
            atexit.register(lambda: open(os.environ["MYAPP_AUDIT_LOG"], "a").close())
        """
    )
    result = run(f"--daemonexit-start={start}", "--daemonexit-jobs=2", "-p", "no:randomly")
    result.assert_outcomes(passed=3)


FAITHFUL_CONFTEST = """
    import os, threading, time

    IMPORTED_IN = os.getpid()
    STARTED = threading.Thread(target=time.sleep, args=(600,), name="from-conftest", daemon=True)
    STARTED.start()

    def pytest_sessionstart(session):
        os.environ["CONFTEST_SESSIONSTART"] = "yes"

    def pytest_addoption(parser):
        parser.addoption("--flavour", default="plain")
"""

FAITHFUL_TEST = """
    import gc, os, signal, sys, threading, pytest
    import conftest

    # The collector runs in the child, as in any interpreter, from the test's imports on.
    COLLECTING_AT_IMPORT = gc.isenabled()

    @pytest.mark.daemon_exit(rounds=3)
    def test_the_child_is_fresh(request):
        # The conftest was imported by this very process, and its thread runs here.
        assert conftest.IMPORTED_IN == os.getpid()
        assert [t.name for t in threading.enumerate()] == ["MainThread", "from-conftest"]
        assert os.environ["CONFTEST_SESSIONSTART"] == "yes"
        assert request.config.getoption("--flavour") == "plain"
        assert "test_it" in sys.modules and sys.modules["test_it"].__file__.endswith("test_it.py")
        # Nothing of the fork server's signal handling is left in the child.
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
        assert signal.set_wakeup_fd(-1) == -1
        assert COLLECTING_AT_IMPORT and gc.isenabled()
        assert gc.get_threshold()[0] > 0
"""


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_the_child_imports_conftest_and_test_module_itself(run, pytester, start):
    pytester.makeconftest(FAITHFUL_CONFTEST)
    run.write(FAITHFUL_TEST)
    result = run(f"--daemonexit-start={start}", "--daemonexit-report=report.json")
    result.assert_outcomes(passed=1)
    runs = _runs(pytester)
    assert len(runs) == 3 and {r["start"] for r in runs} == {start}


SUMMARY_PLUGIN = """
    def pytest_terminal_summary(terminalreporter):
        import summary_only  # what a plugin imports only to print its summary
"""

SUMMARY_CONFTEST = """
    from pytest_daemonexit import child

    def pytest_terminal_summary(terminalreporter):
        with open(terminalreporter.config.rootpath / "summaries", "a") as f:
            f.write("child\\n" if child.RUNNING else "parent\\n")
"""

SUMMARY_TEST = """
    import atexit, sys, pytest

    def _record():
        with open("at-exit", "a") as f:
            f.write(f"{'summary_only' in sys.modules}\\n")

    @pytest.mark.daemon_exit
    def test_leaves_a_record():
        atexit.register(_record)
"""


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_the_child_does_not_run_the_terminal_summary(run, pytester, start):
    """Nobody reads a child's terminal: its session ends without the plugins' summaries,
    so what they import for them is neither in the child at exit nor preloaded by the
    server.  A conftest file loaded during the child's collection may still implement the
    hook."""
    pytester.makepyfile(summaryplugin=textwrap.dedent(SUMMARY_PLUGIN), summary_only="")
    sub = pytester.mkdir("sub")
    sub.joinpath("conftest.py").write_text(textwrap.dedent(SUMMARY_CONFTEST))
    sub.joinpath("test_sub.py").write_text(textwrap.dedent(SUMMARY_TEST))
    result = run("-p", "summaryplugin", f"--daemonexit-start={start}")
    result.assert_outcomes(passed=1)
    assert (pytester.path / "at-exit").read_text().split() == ["False"]
    # The parent's summary ran, the child's did not.
    assert (pytester.path / "summaries").read_text().split() == ["parent"]


SELECTION = """
    import pytest

    pytestmark = pytest.mark.daemon_exit

    def test_plain():
        pass

    def test_plain_longer_name():
        raise AssertionError("not this one")

    @pytest.mark.parametrize("value", ["a::b", "c[d]", "ok"])
    def test_param(value):
        assert value == "ok"

    class TestBase:
        def setup_method(self):
            self.ready = True

        def test_inherited(self):
            assert self.ready and type(self).__name__ == "TestChild"

    class TestChild(TestBase):
        pass

    class TestOuter:
        class TestInner:
            def test_nested(self):
                pass
"""


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_each_run_has_a_pytest_cache_of_its_own(run, pytester, start, jobs):
    # A plugin or test that keeps something in config.cache, and pytest's own lastfailed
    # and nodeids, must not see what an earlier run of the session put there (the
    # session hands a run's cache directory, emptied, to a later run).
    run.write(
        """
        import pytest

        @pytest.mark.daemon_exit
        @pytest.mark.parametrize("n", range(5))
        def test_keeps(request, n):
            cache = request.config.cache
            assert cache.get("project/seen", None) is None
            assert cache.get("cache/nodeids", []) == []
            assert cache.get("cache/lastfailed", {}) == {}
            kept = cache.mkdir("project")
            assert list(kept.iterdir()) == []
            (kept / "file").write_text(str(n))
            cache.set("project/seen", n)
            assert n % 2 == 0  # odd runs fail: pytest writes its lastfailed
        """
    )
    result = run(f"--daemonexit-start={start}", f"--daemonexit-jobs={jobs}")
    result.assert_outcomes(passed=3, failed=2)
    # Nor does the session's own cache get the children's entries.
    assert not (pytester.path / ".pytest_cache" / "v" / "project").exists()


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_each_child_runs_exactly_its_own_test(run, pytester, start):
    run.write(SELECTION)
    result = run(f"--daemonexit-start={start}", "--daemonexit-report=r.json")
    outcomes = {r["nodeid"].split("::", 1)[1]: r["test_outcome"] for r in _runs(pytester, "r.json")}
    assert outcomes == {
        "test_plain": "passed",
        "test_plain_longer_name": "failed",
        "test_param[a::b]": "failed",
        "test_param[c[d]]": "failed",
        "test_param[ok]": "passed",
        "TestBase::test_inherited": "failed",
        "TestChild::test_inherited": "passed",
        "TestOuter::TestInner::test_nested": "passed",
    }
    result.assert_outcomes(passed=4, failed=4)


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_a_child_collects_only_the_way_to_its_test(run, pytester, monkeypatch, start):
    log = pytester.path / "collected.log"
    monkeypatch.setenv("COLLECTED_LOG", str(log))
    pytester.makeconftest(
        """
        import os

        def pytest_collect_file(file_path, parent):
            if getattr(parent.config, "_pytest_daemonexit_child", False):
                with open(os.environ["COLLECTED_LOG"], "a") as f:
                    f.write(file_path.name + "\\n")
        """
    )
    sub = pytester.mkpydir("pkg") / "sub"
    sub.mkdir()
    (sub / "__init__.py").write_text("")
    (sub / "conftest.py").write_text(
        "import pytest\n\n@pytest.fixture\ndef from_package():\n    return 'package'\n"
    )
    (sub / "test_target.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.daemon_exit\n@pytest.mark.parametrize('n', [1, 2])\n"
        "def test_target(from_package, n):\n    assert from_package == 'package'\n"
    )
    for path in (sub / "test_sibling.py", pytester.path / "pkg" / "test_other.py"):
        path.write_text("def test_plain():\n    pass\n")
    (pytester.path / "other").mkdir()
    (pytester.path / "other" / "test_far.py").write_text("def test_far():\n    pass\n")
    run(f"--daemonexit-start={start}").assert_outcomes(passed=5)
    # Each of the two runs made a node of its own module only, not of the files beside it.
    assert log.read_text().split() == ["test_target.py", "test_target.py"]


BUILTIN_FIXTURES = """
    import pytest

    NAMES = [
        "cache", "capsys", "capsysbinary", "capfd", "capfdbinary", "caplog",
        "doctest_namespace", "monkeypatch", "pytestconfig", "record_property",
        "record_xml_attribute", "record_testsuite_property", "recwarn", "tmp_path",
        "tmp_path_factory", "tmpdir", "tmpdir_factory",
    ]

    @pytest.fixture
    def from_conftest_or_module():
        return "mine"

    @pytest.mark.daemon_exit
    @pytest.mark.parametrize("name", NAMES)
    def test_fixture_is_there(request, from_conftest_or_module, name):
        assert from_conftest_or_module == "mine"
        request.getfixturevalue(name)
"""


#: A plugin module with fixtures of the kinds pytest finds in a module, one of them added to
#: the module only when the plugin is configured (after the fork server looked at it), and
#: a plugin object with a fixture method.
FIXTURE_PLUGIN = """
    import sys

    import pytest

    @pytest.fixture
    def from_plugin():
        return "plugin"

    @pytest.fixture(name="renamed_in_plugin", scope="session", params=[1])
    def _hidden(request):
        return request.param

    @pytest.fixture(autouse=True)
    def plugin_autouse(request):
        request.node.plugin_autouse = True

    def __getattr__(name):  # computed module attributes (PEP 562)
        raise AttributeError(name)

    class ObjectPlugin:
        @pytest.fixture
        def from_object(self):
            return "object"

    def pytest_configure(config):
        @pytest.fixture
        def added_at_configure():
            return "late"

        sys.modules[__name__].added_at_configure = added_at_configure
        config.pluginmanager.register(ObjectPlugin(), "objectplugin")
"""


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_builtin_plugin_and_own_fixtures_reach_the_child(run, pytester, start):
    run.write(BUILTIN_FIXTURES)
    pytester.makepyfile(
        fixtureplugin=textwrap.dedent(FIXTURE_PLUGIN),
        test_plugin=textwrap.dedent(
            """
            import pytest

            @pytest.mark.daemon_exit
            def test_plugin_fixtures(
                request, from_plugin, renamed_in_plugin, added_at_configure, from_object
            ):
                assert (from_plugin, renamed_in_plugin) == ("plugin", 1)
                assert (added_at_configure, from_object) == ("late", "object")
                assert request.node.plugin_autouse
            """
        ),
    )
    result = run("-p", "fixtureplugin", f"--daemonexit-start={start}", "--daemonexit-report=r.json")
    result.assert_outcomes(passed=18)
    assert {r["start"] for r in _runs(pytester, "r.json")} == {start}


IMPORTS_CACHE = (".pytest_cache", "d", "daemonexit", "forkserver-imports.json")


def test_the_server_keeps_what_a_session_imports_in_pytests_cache(run, pytester):
    run.write("import pytest\n\n@pytest.mark.daemon_exit\ndef test_x():\n    pass\n")
    cache = pytester.path.joinpath(*IMPORTS_CACHE)
    for _ in range(2):
        result = run("--daemonexit-start=forkserver", "--daemonexit-report=r.json")
        result.assert_outcomes(passed=1)
        assert {r["start"] for r in _runs(pytester, "r.json")} == {"forkserver"}
    entries = json.loads(cache.read_text())
    # Two sessions with one command line share one entry: nothing per-session is in its key.
    assert len(entries) == 1
    (names,) = entries.values()
    assert names and all(isinstance(n, str) for n in names)
    assert not {"test_it", "conftest"} & set(names)  # the project's modules are the run's own
    run("-v", "--daemonexit-start=forkserver").assert_outcomes(passed=1)
    assert len(json.loads(cache.read_text())) == 2


def test_a_broken_imports_cache_is_learned_again(run, pytester):
    run.write("import pytest\n\n@pytest.mark.daemon_exit\ndef test_x():\n    pass\n")
    cache = pytester.path.joinpath(*IMPORTS_CACHE)
    cache.parent.mkdir(parents=True)
    for garbage in ("{not json", '["a list"]', '{"k": 3}'):
        cache.write_text(garbage)
        result = run("--daemonexit-start=forkserver", "--daemonexit-report=r.json")
        result.assert_outcomes(passed=1)
        assert {r["start"] for r in _runs(pytester, "r.json")} == {"forkserver"}
        entries = json.loads(cache.read_text())
        assert isinstance(entries, dict) and any(isinstance(v, list) for v in entries.values())


def test_a_conftest_option_on_the_command_line_falls_back_to_spawn(run, pytester):
    # The server parses the command line without conftest files, so it cannot know
    # --flavour: the runs are spawned, with a note, and the test still passes.
    pytester.makeconftest(FAITHFUL_CONFTEST)
    run.write(FAITHFUL_TEST.replace('"plain"', '"sour"'))
    result = run("--flavour=sour", "--daemonexit-start=forkserver", "--daemonexit-report=r.json")
    result.assert_outcomes(passed=1)
    assert {r["start"] for r in _runs(pytester, "r.json")} == {"spawn"}
    result.stdout.fnmatch_lines(["*fork server * could not start*children were spawned*"])


def test_a_plugin_that_starts_a_thread_at_import_falls_back_to_spawn(run, pytester):
    pytester.makepyfile(
        threadplugin="""
        import threading, time
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
        """
    )
    run.write("import pytest\n\n@pytest.mark.daemon_exit\ndef test_x():\n    pass\n")
    result = run(
        "-p", "threadplugin", "--daemonexit-report=r.json", "--daemonexit-start=forkserver"
    )
    result.assert_outcomes(passed=1)
    assert {r["start"] for r in _runs(pytester, "r.json")} == {"spawn"}
    result.stdout.fnmatch_lines(["*2 threads after pytest's start*children were spawned*"])


def test_a_server_that_dies_while_it_starts_says_why_and_its_runs_are_spawned(run, pytester):
    pytester.makepyfile(
        dyingplugin="""
        import os, sys
        if '"control_fd"' in sys.argv[-1]:  # only in the fork server (its boot message)
            sys.stderr.write("dyingplugin: no server here\\n")
            sys.stderr.flush()
            os._exit(3)
        """
    )
    run.write("import pytest\n\n@pytest.mark.daemon_exit\ndef test_x():\n    pass\n")
    result = run("-p", "dyingplugin", "--daemonexit-report=r.json", "--daemonexit-start=forkserver")
    result.assert_outcomes(passed=1)
    assert {r["start"] for r in _runs(pytester, "r.json")} == {"spawn"}
    result.stdout.fnmatch_lines(
        ["*fork server * could not start (the fork server ended*", "*dyingplugin: no server here*"]
    )


def test_a_dead_fork_server_is_replaced(run, pytester):
    run.write(
        """
        import atexit, os, signal, pytest

        @pytest.mark.daemon_exit
        def test_a_kills_its_server():
            # At exit: the test's reports are all sent by then, whatever the timing.
            atexit.register(os.kill, os.getppid(), signal.SIGKILL)

        @pytest.mark.daemon_exit
        def test_b_runs_after():
            pass
        """
    )
    result = run("--daemonexit-report=r.json", "--daemonexit-jobs=1")
    runs = {r["nodeid"].split("::")[1]: r for r in _runs(pytester, "r.json")}
    # The first child dies with its server; the next test gets a new server.
    assert runs["test_a_kills_its_server"]["exit"]["signal"] == "SIGKILL"
    assert runs["test_b_runs_after"]["verdict"] == "ok"
    assert runs["test_b_runs_after"]["start"] == "forkserver"
    result.assert_outcomes(failed=1, passed=1)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--daemonexit-start=zygote", "expected one of auto, forkserver, spawn"),
        ("--daemonexit-jobs=-2", "expected a whole number of concurrent runs >= 1, or auto"),
        ("--daemonexit-jobs=two", "expected a whole number of concurrent runs >= 1, or auto"),
    ],
)
def test_bad_start_and_jobs_values_are_usage_errors(run, option, message):
    run.write("def test_x(): pass\n")
    result = run(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{option.split('=')[0]}=*{message}*"])


def _leftovers(pytester: pytest.Pytester) -> List[Tuple[str, str]]:
    """Processes of the plugin still running for this test's project."""
    leftovers = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        if str(pytester.path) in cmdline and "pytest_daemonexit" in cmdline:
            leftovers.append((entry, cmdline.replace("\0", " ")[:200]))
    return leftovers


def test_no_server_or_child_survives_the_session(run, pytester):
    run.write(SCENARIOS)
    run("--daemonexit-jobs=2").assert_outcomes(passed=3, failed=5, skipped=1)
    assert _leftovers(pytester) == []


MIXED = """
    import pytest

    @pytest.mark.daemon_exit
    def test_marked():
        pass

    def test_unmarked():
        pass
"""


def test_servers_start_with_the_session_when_the_last_one_had_marked_tests(run, pytester):
    run.write(MIXED)
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    marked = pytester.path / ".pytest_cache" / "v" / "daemonexit" / "marked"

    def servers_started(*args: str) -> Tuple[pytest.RunResult, int]:
        pattern = "runpytest-[0-9]*/daemonexit/server-*/server.json"
        before = len(list(pytester.path.glob(pattern)))
        result = run("--daemonexit-start=forkserver", *args)
        return result, len(list(pytester.path.glob(pattern))) - before

    # No marked test collected: the flag says so, and no server starts.
    result, started = servers_started("test_plain.py")
    result.assert_outcomes(passed=1)
    assert (json.loads(marked.read_text()), started) == (False, 0)

    # The first session with marked tests starts its server when it collects one.
    result, started = servers_started()
    result.assert_outcomes(passed=3)
    assert (json.loads(marked.read_text()), started) == (True, 1)

    # The next one starts it with the session: when it then collects no marked test, the
    # server is stopped at once, with no note, and nothing is left running.
    result, started = servers_started("test_plain.py")
    result.assert_outcomes(passed=1)
    assert (json.loads(marked.read_text()), started) == (False, 1)
    result.stdout.no_fnmatch_line("*fork server*")
    assert _leftovers(pytester) == []

    # A session with marked tests uses the server it started early, and only that one;
    # marked tests all deselected stop it too.
    servers_started()
    result, started = servers_started("--daemonexit-report=r.json")
    result.assert_outcomes(passed=3)
    assert started == 1
    result.stdout.no_fnmatch_line("*fork server*")
    assert {r["start"] for r in _runs(pytester, "r.json")} == {"forkserver"}
    result, started = servers_started("-k", "not test_marked")
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("*fork server*")
    assert _leftovers(pytester) == []


SERVERS = """
    import os

    def servers():
        \"\"\"The pids of the plugin's fork servers running, children of this process.\"\"\"
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except (OSError, ValueError, IndexError):
                continue
            if parent == os.getpid() and b"pytest_daemonexit.forkserver" in cmdline:
                found.append(int(pid))
        return found
"""

EARLY_CONFTEST = """
    import json
    import os

    from servers import servers as _servers

    from pytest_daemonexit import child

    if not child.RUNNING:  # imported by pytest in the parent, not by the test's child
        with open("servers-at-conftest-import", "a") as f:
            f.write(json.dumps(_servers(), separators=(",", ":")) + "\\n")

    def pytest_sessionstart(session):
        from pytest_daemonexit import child

        if child.RUNNING:  # the test's own session, in the child
            return
        with open("servers-at-start", "a") as f:
            f.write(json.dumps(_servers(), separators=(",", ":")) + "\\n")
        # After the plugin's configure: an interpreter launched then lacks it.
        extra = str(session.config.rootpath / "extra")
        if extra not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
            os.environ["PYTHONPATH"] = extra
"""

EARLY_TEST = """
    import pytest

    @pytest.mark.daemon_exit
    def test_marked():
        import os

        import extramod  # found through PYTHONPATH, read at the interpreter's start

        with open("child-parent", "a") as f:
            f.write(f"{os.getppid()}\\n")
"""


def test_a_server_is_launched_before_the_conftest_files_and_left_if_the_environment_changed(
    run, pytester, monkeypatch
):
    # This suite's own xdist worker must not make the pytest under test look like one.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    run.write(EARLY_TEST)
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    pytester.makepyfile(servers=textwrap.dedent(SERVERS))
    pytester.makeconftest(textwrap.dedent(EARLY_CONFTEST))
    pytester.mkdir("extra").joinpath("extramod.py").write_text("")

    def servers(*args: str) -> List[Tuple[int, int]]:
        """For each process that imported the conftest file, in order: how many servers
        it ran then, and at its session start.  The plugin is loaded by its entry point,
        and no option of its is given unless ``args`` has one."""
        files = [pytester.path / f"servers-at-{when}" for when in ("conftest-import", "start")]
        for path in [*files, pytester.path / "child-parent"]:
            path.unlink(missing_ok=True)
        result = pytester.runpytest_subprocess(
            "-p", "no:hypothesispytest", *args, timeout=RUN_GUARD_SECONDS
        )
        result.assert_outcomes(passed=1)
        imported, started = (list(map(json.loads, path.read_text().split())) for path in files)
        launched[:] = imported[-1]
        return [(len(a), len(b)) for a, b in zip(imported, started)]

    def children_of_the_early_server() -> bool:
        """Whether the early server forked every child run of the last session."""
        forked_by = set(map(int, (pytester.path / "child-parent").read_text().split()))
        return [*forked_by] == launched

    launched: List[int] = []
    # Nothing says yet that this project has marked tests: nothing runs before the session.
    assert servers("test_it.py") == [(0, 0)]
    # Now pytest's cache says so: the server is launched before pytest imports the
    # conftest file (whose imports it overlaps). The conftest file sets an
    # interpreter-start variable at session start, after it: that server is replaced by
    # one started with it (the test fails in a child of the early one) ...
    assert servers("test_it.py") == [(1, 1)]
    assert not children_of_the_early_server()
    # ... and where the variable was already set, the early server forks the child.
    with monkeypatch.context() as patch:
        patch.setenv("PYTHONPATH", str(pytester.path / "extra"))
        assert servers("test_it.py") == [(1, 1)]
        assert children_of_the_early_server()
    assert servers("--daemonexit-start=spawn", "test_it.py") == [(0, 0)]
    # Under xdist the worker launches its own; the controller, which runs no test, none.
    assert servers("-n", "1", "test_it.py") == [(0, 0), (1, 1)]
    # The worker launched it before xdist handed it the controller's seed, with that
    # seed's PYTHONHASHSEED all the same: it is kept.
    with monkeypatch.context() as patch:
        patch.setenv("PYTHONPATH", str(pytester.path / "extra"))
        assert servers("-n", "1", "test_it.py") == [(0, 0), (1, 1)]
        assert children_of_the_early_server()
    # With no record in the cache (a fresh checkout), a command line that names the
    # plugin or sets one of its options is taken to mean marked tests ...
    with monkeypatch.context() as patch:
        patch.setenv("PYTHONPATH", str(pytester.path / "extra"))
        assert servers("--cache-clear", "-p", "daemonexit", "test_it.py") == [(1, 1)]
        assert children_of_the_early_server()
    assert servers("--cache-clear", "--daemonexit-jobs=1", "test_plain.py") == [(1, 1)]
    # ... but the cache, which now says the last session had none, wins.
    assert servers("-p", "daemonexit", "test_it.py") == [(0, 0)]
    assert _leftovers(pytester) == []


LATER_PLUGIN = """
    import json
    import os

    from servers import servers

    with open("servers-at-plugin-import", "a") as f:
        f.write(json.dumps(servers()) + "\\n")
    if os.environ.get("LATER_PLUGIN_SETS"):
        os.environ["SET_BY_LATER_PLUGIN"] = "1"
"""


def test_the_server_is_launched_while_pytest_still_loads_the_other_plugins(
    run, pytester, monkeypatch
):
    """Launched when the plugin is registered, the server starts before the plugins
    that load after it (PYTEST_PLUGINS here; hypothesis' in a usual venv) are imported,
    and it is the one that forks the runs when nothing changed since."""
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    run.write(EARLY_TEST.replace("import extramod", "pass"))
    pytester.makepyfile(servers=textwrap.dedent(SERVERS))
    pytester.makepyfile(later_plugin=textwrap.dedent(LATER_PLUGIN))
    monkeypatch.setenv("PYTEST_PLUGINS", "later_plugin")
    record = pytester.path / "servers-at-plugin-import"

    def session(*args: str) -> Tuple[List[int], List[int]]:
        for path in (record, pytester.path / "child-parent"):
            path.unlink(missing_ok=True)
        result = pytester.runpytest_subprocess(
            "-p", "daemonexit", "-p", "no:hypothesispytest", *args, timeout=RUN_GUARD_SECONDS
        )
        result.assert_outcomes(passed=1)
        forked_by = sorted(set(map(int, (pytester.path / "child-parent").read_text().split())))
        # The first import is pytest's own; the server and spawned children import it too.
        return json.loads(record.read_text().splitlines()[0]), forked_by

    # A fresh checkout: the command line names the plugin, so the server is launched.
    launched, forked_by = session("--cache-clear", "test_it.py")
    assert len(launched) == 1 and forked_by == launched
    launched, forked_by = session("test_it.py")
    assert len(launched) == 1 and forked_by == launched
    # A plugin imported after it changed the environment: it is replaced.
    with monkeypatch.context() as patch:
        patch.setenv("LATER_PLUGIN_SETS", "1")
        launched, forked_by = session("test_it.py")
        assert len(launched) == 1 and len(forked_by) == 1 and forked_by != launched
    # Not where no marked test will run a child, nor in an xdist controller.
    assert session("--daemonexit-start=spawn", "test_it.py")[0] == []
    with monkeypatch.context() as patch:  # addopts count, as pytest parses them
        patch.setenv("PYTEST_ADDOPTS", "--daemonexit-start=spawn")
        assert session("test_it.py")[0] == []
    launched, forked_by = session("-n", "1", "test_it.py")
    assert launched == [] and len(forked_by) == 1
    assert _leftovers(pytester) == []


def test_a_command_line_that_fails_after_the_launch_leaves_no_server(pytester):
    """pytest.main in a process that goes on: the server launched before the conftest files
    is stopped although the session never configured."""
    pytester.makepyfile(servers=textwrap.dedent(SERVERS))
    pytester.makepyfile(test_it=textwrap.dedent(EARLY_TEST).replace("import extramod", "pass"))
    script = pytester.makepyfile(
        main="""
        import sys

        import pytest
        from servers import servers

        args = ["-p", "daemonexit", "-p", "no:hypothesispytest", "--daemonexit-start=forkserver"]
        assert pytest.main([*args, "-q", "test_it.py"]) == 0  # pytest's cache: marked tests
        assert servers() == []
        assert pytest.main([*args, "--no-such-option", "test_it.py"]) == 4  # a usage error
        print("servers left:", len(servers()))
        """
    )
    result = pytester.run(sys.executable, str(script), timeout=120)
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["servers left: 0"])
    result.stderr.fnmatch_lines(["*unrecognized arguments: --no-such-option*"])


BYTECODE = """
    import os
    import sys

    import pytest

    import mylib

    @pytest.mark.daemon_exit
    @pytest.mark.parametrize("n", [1, 2])
    def test_imports(n):
        assert mylib.VALUE == 42
        # What the test starts keeps the user's choice.
        assert os.environ.get("PYTHONDONTWRITEBYTECODE") == os.environ.get("EXPECT_DWB")
"""


def _compiled(root: Any, name: str) -> List[str]:
    return sorted(p.name for p in root.rglob(f"{name}.*.pyc"))


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_bytecode_is_kept_out_of_the_tree_when_the_environment_forbids_writing_it(
    run, pytester, monkeypatch, start
):
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("EXPECT_DWB", "1")
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    pytester.makepyfile(mylib="VALUE = 42\n", myplugin="def pytest_configure(config):\n    pass\n")
    run.write(BYTECODE)
    run(f"--daemonexit-start={start}", "-p", "myplugin").assert_outcomes(passed=2)
    cache = pytester.path / ".pytest_cache" / "d" / "daemonexit" / "bytecode"
    # The library and the (assertion-rewritten) test module are compiled once for all runs,
    # in pytest's cache, and nothing is written next to the sources.
    assert _compiled(cache, "mylib") == [f"mylib.{sys.implementation.cache_tag}.pyc"]
    assert len(_compiled(cache, "test_it")) == 1
    # So is a plugin module, which pytest rewrites too (in the fork server, once).
    tag = sys.implementation.cache_tag
    assert [name.split("-pytest-")[0] for name in _compiled(cache, "myplugin")] == [
        f"myplugin.{tag}"
    ]
    assert not list(pytester.path.glob("__pycache__"))


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_bytecode_goes_where_the_environment_says_otherwise(run, pytester, monkeypatch, start):
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.delenv("EXPECT_DWB", raising=False)
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    pytester.makepyfile(mylib="VALUE = 42\n")
    run.write(BYTECODE)
    run(f"--daemonexit-start={start}").assert_outcomes(passed=2)
    assert _compiled(pytester.path / "__pycache__", "mylib")
    assert not (pytester.path / ".pytest_cache" / "d" / "daemonexit" / "bytecode").exists()


OWN_LOADERS = """
    import sys, pytest

    def _loaders():
        import pytest_daemonexit.runner  # imported lazily: whatever imports it later

        names = ["pytest_daemonexit.plugin", "pytest_daemonexit.settings",
                 "pytest_daemonexit.runner"]
        return {name: type(sys.modules[name].__loader__).__name__ for name in names}

    def test_in_the_parent():
        assert set(_loaders().values()) == {"SourceFileLoader"}, _loaders()

    @pytest.mark.daemon_exit
    def test_in_the_child():
        assert set(_loaders().values()) == {"SourceFileLoader"}, _loaders()
"""


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_the_plugins_own_modules_are_not_compiled_again_in_every_session(
    run, pytester, monkeypatch, start
):
    # pytest's assertion rewriter would compile them from source in every session (parent,
    # server, spawned child) where bytecode may not be written; Python's own loader reads
    # the bytecode installed with them.  No warning either (-W error).
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    run.write(OWN_LOADERS)
    result = run(f"--daemonexit-start={start}", "-W", "error", "-v")
    result.assert_outcomes(passed=2)


ROOT_TEST = """
    import warnings, pytest

    @pytest.mark.daemon_exit
    def test_settings_of_the_session(request):
        with open(request.config.rootpath / "seen.txt", "w") as f:
            f.write(f"{request.config.rootpath}\\n{request.config.inipath}\\n")
        WARN
"""


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_the_child_has_the_rootdir_and_ini_file_of_a_run_from_another_directory(
    run, pytester, start
):
    # A monorepo: pytest runs from the top, the package's own settings apply to its tests.
    pkg = pytester.mkdir("pkg")
    (pkg / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nfilterwarnings = ["error::DeprecationWarning"]\n'
    )
    (pkg / "tests").mkdir()
    test = ROOT_TEST.replace(
        "WARN",
        "with pytest.raises(DeprecationWarning):\n"
        '            warnings.warn("old api", DeprecationWarning)',
    )
    (pkg / "tests" / "test_pkg.py").write_text(textwrap.dedent(test))
    result = run(f"--daemonexit-start={start}", "pkg/tests")
    result.assert_outcomes(passed=1)
    seen = (pkg / "seen.txt").read_text().splitlines()
    assert seen == [str(pkg), str(pkg / "pyproject.toml")]


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_the_child_does_not_take_the_ini_file_of_the_directory_it_runs_from(
    pytester, monkeypatch, start
):
    # pytest runs from a project whose ini file it does not use: the tests are elsewhere.
    here = pytester.mkdir("here")
    (here / "pytest.ini").write_text("[pytest]\nfilterwarnings = error::DeprecationWarning\n")
    tests = pytester.mkdir("elsewhere")
    test = ROOT_TEST.replace("WARN", 'warnings.warn("old api", DeprecationWarning)')
    (tests / "test_elsewhere.py").write_text(textwrap.dedent(test))
    monkeypatch.chdir(here)
    result = pytester.runpytest_subprocess(
        "-p",
        "daemonexit",
        "--daemonexit-policy=baseline",
        f"--daemonexit-start={start}",
        str(tests),
        timeout=120,
    )
    result.assert_outcomes(passed=1)
    # pytest's rootdir without an ini file: what the invocation and test directories share.
    seen = (pytester.path / "seen.txt").read_text().splitlines()
    assert seen == [str(pytester.path), "None"]


STARTUP_ENV_TEST = """
    import atexit, os, time, pytest

    os.environ["TZ"] = "EST+05"  # set at import, as some suites pin it

    def test_an_unmarked_test_leaks_a_variable():
        os.environ["PYTHONIOENCODING"] = "ascii"

    @pytest.mark.daemon_exit
    def test_local_time_zone():
        assert time.strftime("%Z", time.localtime(0)) == "EST", time.tzname

    @pytest.mark.daemon_exit
    def test_goodbye_at_exit():
        atexit.register(print, "d\\u00e9connexion")
"""


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_a_child_reads_the_start_up_environment_of_its_run(run, start):
    # What an interpreter reads from the environment once, at its start (the time zone,
    # the streams' encoding), is the run's: a forked child's server started before the
    # variables changed, so another server starts with them.
    run.write(STARTUP_ENV_TEST)
    result = run(f"--daemonexit-start={start}", "-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_goodbye_at_exit*",
            "*SHUTDOWN_EXCEPTION (printed in phase atexit)*",
            "*UnicodeEncodeError*",
        ]
    )


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_a_start_up_environment_that_keeps_changing_makes_runs_spawn(run, pytester, start):
    # Unmarked tests set another PYTHONIOENCODING before each marked test: a server per
    # value up to a bound, then spawned children, and every run has its own encoding.
    encodings = ["utf-8", "utf-16", "utf-32", "latin-1", "cp1252", "ascii"]
    source = "import codecs, os, sys, pytest\n"
    for n, encoding in enumerate(encodings):
        if n:
            source += f"\ndef test_{n}_set():\n    os.environ['PYTHONIOENCODING'] = {encoding!r}\n"
        check = (
            f"codecs.lookup(sys.__stdout__.encoding).name == codecs.lookup({encoding!r}).name"
            if n
            else "sys.__stdout__"  # whatever the locale gives
        )
        source += f"\n@pytest.mark.daemon_exit\ndef test_{n}_use():\n    assert {check}\n"
    run.write(source)
    # One job: a run started ahead would take the environment before the test set it.
    result = run(
        f"--daemonexit-start={start}", "--daemonexit-jobs=1", "--daemonexit-report=report.json"
    )
    result.assert_outcomes(passed=11)
    starts = [r["start"] for r in _runs(pytester)]
    if start == "spawn":
        assert starts == ["spawn"] * 6
    else:
        result.stdout.fnmatch_lines(["*daemonexit: note:*changed more than 3 times*spawned*"])
        assert starts == ["forkserver"] * 4 + ["spawn"] * 2


@pytest.mark.parametrize("policy", ["baseline", "atexit-race"])
def test_a_forked_child_has_no_module_a_spawned_one_has_not(run, pytester, monkeypatch, policy):
    # A module already imported where a spawned child imports it lazily (a daemon thread's
    # import at exit) would hide an import during finalization: the server's own imports
    # must not reach the test (the plugin's own modules aside).
    run.write(
        """
        import os, sys, pytest

        @pytest.mark.daemon_exit
        def test_records_its_modules():
            with open(os.environ["MODULES_FILE"], "w") as f:
                f.write("\\n".join(sorted(sys.modules)))
        """
    )
    seen = {}
    for start in ("spawn", "forkserver"):
        path = pytester.path / f"{start}.txt"
        monkeypatch.setenv("MODULES_FILE", str(path))
        # Without this suite's other plugins, which import such modules themselves.
        plugins = ["-p", "no:xdist", "-p", "no:xdist.looponfail", "-p", "no:pytest_cov"]
        result = run(f"--daemonexit-start={start}", *plugins, policy=policy)
        result.assert_outcomes(passed=1)
        seen[start] = set(path.read_text().split())
    extra = {m for m in seen["forkserver"] - seen["spawn"] if not m.startswith("pytest_daemonexit")}
    # The server's control channel needs these (README, "Known limitations").
    assert extra <= {"socket", "_socket", "array", "select", "signal", "subprocess"}


HASH_SEED_TEST = """
    import os, sys, pytest

    @pytest.mark.daemon_exit
    @pytest.mark.parametrize("n", [1, 2])
    def test_records_its_hash(n):
        # The order of a set of strings at exit follows this value.
        with open(os.path.join(os.environ["HASH_OUT"], f"{n}-{os.getpid()}"), "w") as f:
            f.write(f"{os.environ.get('PYTHONHASHSEED')} {hash('daemonexit')}")

    def test_no_seed_handed_down():
        assert "PYTEST_DAEMONEXIT_SEED" not in os.environ
"""


def _hash_under(seed: str) -> int:
    import subprocess

    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", "print(hash('daemonexit'))"], env=env, capture_output=True, text=True
    )
    return int(out.stdout)


def _hash_project(run: Any, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Any:
    """HASH_SEED_TEST with no PYTHONHASHSEED set; its children record into the directory
    returned."""
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    out = pytester.mkdir("hashes")
    monkeypatch.setenv("HASH_OUT", str(out))
    run.write(HASH_SEED_TEST)
    return out


def _take_hashes(out: Any) -> Tuple[int, List[Tuple[str, int]]]:
    """How many children recorded, and the distinct (PYTHONHASHSEED, hash) they saw; the
    records are removed for the next session."""
    records = [path.read_text().split() for path in out.iterdir()]
    for path in out.iterdir():
        path.unlink()
    return len(records), sorted({(seed, int(value)) for seed, value in records})


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_the_childrens_hash_seed_is_the_session_seeds(run, pytester, monkeypatch, start):
    # Which of a set of strings comes first (callbacks, workers closed at exit) must follow
    # the session seed: the replay command of a failed run meets the same order, and a
    # forked child (which keeps its server's hash secret) the one a spawned child gets.
    out = _hash_project(run, pytester, monkeypatch)
    result = run(f"--daemonexit-start={start}", "--daemonexit-seed=7", "--daemonexit-rounds=2")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["daemonexit child: *; PYTHONHASHSEED=7 (from the seed)"])
    assert _take_hashes(out) == (4, [("7", _hash_under("7"))])

    result = run(f"--daemonexit-start={start}", "--daemonexit-seed=8")
    result.assert_outcomes(passed=3)
    assert _take_hashes(out) == (2, [("8", _hash_under("8"))])
    assert _hash_under("7") != _hash_under("8")

    # One the environment sets is kept.
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    result = run(f"--daemonexit-start={start}", "--daemonexit-seed=7")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["daemonexit child: *; PYTHONHASHSEED=0 (from the environment)"])
    assert _take_hashes(out) == (2, [("0", _hash_under("0"))])


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_xdist_workers_children_get_the_controllers_hash_seed(run, pytester, monkeypatch, start):
    # The workers launch their fork servers before xdist hands them the controller's seed;
    # they find it in their environment, which no test then sees.
    out = _hash_project(run, pytester, monkeypatch)
    result = run(f"--daemonexit-start={start}", "-n", "2", "--daemonexit-rounds=2")
    result.assert_outcomes(passed=3)
    (header,) = [line for line in result.outlines if line.startswith("daemonexit: seed=")]
    seed = header.split()[1].split("=")[1]
    assert _take_hashes(out) == (4, [(seed, _hash_under(seed))])
