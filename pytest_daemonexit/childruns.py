"""Starting a marked test's child runs: the request, the start mode (fork server or spawn),
and running later tests' runs ahead on free cores.

Everything here may run in a pool thread, so nothing calls a pytest hook: the plugin takes
the results in order in the main thread and runs post-exit checks and the verdict hook there.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Hashable, List, Optional, Sequence, Tuple

import pytest

from pytest_daemonexit.settings import MARKER, Settings

if TYPE_CHECKING:
    from pytest_daemonexit.forkserver import ForkServer
    from pytest_daemonexit.interpreters import Interpreter
    from pytest_daemonexit.judge import Verdict
    from pytest_daemonexit.policies import Policy
    from pytest_daemonexit.runner import Evidence
    from pytest_daemonexit.runpool import RunPool
    from pytest_daemonexit.signatures import Signature

RUNS_KEY = pytest.StashKey["SessionRuns"]()
#: Fork servers launched at configure, before the session's directory exists.
EARLY_KEY = pytest.StashKey[List["ForkServer"]]()
#: Environment variables a fork server must not start with: the children set them per run.
_PER_RUN_ENV = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")
#: Fork servers per interpreter, flags and command line, one per start-up environment.
MAX_STARTUP_ENVIRONMENTS = 4


@dataclasses.dataclass(frozen=True)
class Planned:
    """One run of a test: where, under which policy, which round, with which seed."""

    nodeid: str
    interp: Interpreter
    policy: Policy
    round: int
    seed: int

    @property
    def key(self) -> Hashable:
        return (self.nodeid, self.interp.path, self.policy.name, self.round)


class RunCancelled(Exception):
    """A run started ahead was cancelled before it began (the session ended)."""


@dataclasses.dataclass(frozen=True)
class Launched:
    evidence: Evidence
    verdict: Verdict  # the judge's, before post-exit checks and the verdict hook
    start: str  # "forkserver" or "spawn"
    environ: Dict[str, str]  # the parent's os.environ when the run started (_environ)


class SessionRuns:
    """Per session (per xdist worker): the pool of concurrent runs and the fork servers."""

    def __init__(
        self, config: pytest.Config, settings: Settings, signatures: Tuple[Signature, ...]
    ) -> None:
        from pytest_daemonexit import forkserver, plugin, runpool

        self.config = config
        self.session_dir, self._own_dir = plugin._session_dir(config)
        self.pool: RunPool = runpool.RunPool(plugin.jobs(config, settings))
        self.signatures = signatures
        self.start = plugin.start_mode(settings)
        self.notes: List[str] = []
        if settings.start == "forkserver" and not forkserver.available():
            self.notes.append("the fork server needs Linux: children were spawned")
            self.start = "spawn"
        self._servers: Dict[Tuple[Hashable, ...], Optional[ForkServer]] = {}
        self._lock = threading.Lock()
        self._restarts = 0
        self._index: Optional[Dict[str, int]] = None
        self._prestarted = False
        self._closed = threading.Event()
        self._closing = threading.Event()
        self._starting: List[ForkServer] = []  # being started (under self._lock)
        self._caches: List[Path] = []  # emptied pytest caches of finished runs (under self._lock)
        self._cache_count = 0
        self.pycache_prefix = self._bytecode_dir()

    def _bytecode_dir(self) -> Optional[str]:
        """Where children keep bytecode when the environment forbids ``__pycache__``:
        pytest's cache (kept between sessions), else the session's directory."""
        from pytest_daemonexit import runner

        candidate = Path(self.session_dir, "bytecode")
        if runner.bytecode_cache_dir(runner.child_environment(), candidate) is None:
            return None  # nothing to create in pytest's cache
        cache = getattr(self.config, "cache", None)
        if cache is not None:
            try:
                candidate = cache.mkdir("daemonexit") / "bytecode"
            except OSError:
                pass
        return str(candidate)

    # -- start modes ------------------------------------------------------------------

    def _server(
        self, interp: Interpreter, flags: Tuple[str, ...], args: Sequence[str]
    ) -> Optional[ForkServer]:
        """The running server for this interpreter, flags and command line; None: spawn."""
        from pytest_daemonexit import forkserver, plugin

        if self.start != "forkserver":
            return None
        if spawned_anyway(interp.version, flags):
            note = "-X dev runs on CPython 3.8 are spawned (a forked child crashes at exit)"
            with self._lock:
                if note not in self.notes:
                    self.notes.append(note)
            return None
        env = _server_environment(self.config.stash[plugin.SEED_KEY])
        base = (interp.path, flags, tuple(args))
        key = (*base, _startup_environment(env))
        with self._lock:
            server = self._servers.get(key, False)
            if server is None:
                return None  # it could not start: this combination spawns
            if server is False:
                others = sum(1 for k in self._servers if k[:3] == base)
                if others >= MAX_STARTUP_ENVIRONMENTS:
                    note = (
                        "the environment the interpreter reads at its start (PYTHON*, "
                        f"locale, TZ) changed more than {MAX_STARTUP_ENVIRONMENTS - 1} times"
                        " during the session: later runs in a new one were spawned"
                    )
                    if note not in self.notes:
                        self.notes.append(note)
                    return None
            if server is not False and server.alive:  # type: ignore[union-attr]
                return server  # type: ignore[return-value]
            if server is not False:
                # It died (killed from outside, or a crash): replace it, a few times.
                self._restarts += 1
                if self._restarts > 3:
                    self.notes.append("the fork server kept dying: later children were spawned")
                    self._servers[key] = None
                    return None
            workdir = Path(self.session_dir, f"server-{len(self._servers)}")
            server_args = [*args, *_root_args(self.config, args)]
            imports_cache = None
            cache = getattr(self.config, "cache", None)
            if self.config.pluginmanager.has_plugin("cacheprovider"):
                server_args += ["-o", f"cache_dir={workdir / 'cache'}"]
            if cache is not None:
                try:
                    imports_cache = str(cache.mkdir("daemonexit") / "forkserver-imports.json")
                except OSError:
                    pass
            new = _take_early(self.config, interp.path, flags, env) or _new_server(
                self.config, interp.path, flags, env
            )
            new.adopt(
                args=server_args,
                plugins=[n for n in [plugin._plugin_name(self.config)] if n],
                workdir=str(workdir),
                imports_cache=imports_cache,
                key_args=args,
                pycache_prefix=self.pycache_prefix,
            )
            self._starting.append(new)
            try:
                if self._closing.is_set():
                    raise forkserver.ForkServerError("the session is ending")
                new.start()
            except forkserver.ForkServerError as exc:
                new.discard()  # one launched at configure is running
                if not self._closing.is_set():
                    self.notes.append(
                        f"the fork server for {interp.path} could not start ({exc}): its "
                        "children were spawned"
                    )
                self._servers[key] = None
                return None
            finally:
                self._starting.remove(new)
            self._servers[key] = new
            return new

    def _common_args(self, interp: Interpreter) -> List[str]:
        """The child's command line before its basetemp and node id."""
        from pytest_daemonexit import plugin

        config = self.config
        common = plugin._passthrough_args(config)
        if config.pluginmanager.has_plugin("xdist") and (
            interp.current or interp.has_plugin("xdist")
        ):
            common.append("-n0")
        if config.pluginmanager.has_plugin("_cov") and (
            interp.current or interp.has_plugin("pytest_cov")
        ):
            # The child must not run pytest-cov: it would erase the session's data files.
            # It measures itself instead (childcoverage.py).
            common.append("--no-cov")
        return common

    def prestart(self, settings: Settings, interps: Tuple[Interpreter, ...]) -> None:
        """Start the fork servers of a marked test's runs in the background, once per
        session: their start overlaps the rest of collection and the tests before it."""
        if self.start != "forkserver" or self._prestarted:
            return
        self._prestarted = True

        def start() -> None:
            for interp in interps:
                try:
                    self._server(interp, settings.python_flags(), self._common_args(interp))
                except Exception:  # the run that needs the server starts it again
                    pass
            # A server dies with the thread that started it (PR_SET_PDEATHSIG acts on the
            # parent thread): this one lives until the servers are stopped.
            self._closed.wait()

        threading.Thread(target=start, name="daemonexit-prestart", daemon=True).start()

    def execute(self, item: pytest.Item, settings: Settings, planned: Planned) -> Launched:
        """Start one run, watch it to its end, judge it (thread-safe)."""
        from pytest_daemonexit import childcoverage, childenv, forkserver, plugin, runner
        from pytest_daemonexit.judge import judge

        config = self.config
        interp = planned.interp
        if self.pool.cancel.is_set():  # the session is ending: nobody takes this result
            raise RunCancelled(planned.nodeid)
        environ = _environ()
        run_dir = plugin._run_dir(self.session_dir, item)
        common = self._common_args(interp)
        flags = settings.python_flags()
        server = self._server(interp, flags, common)
        args = [*common, f"--basetemp={Path(run_dir, 'basetemp')}"]
        cache_dir: Optional[Path] = None
        if config.pluginmanager.has_plugin("cacheprovider"):
            # The child's cache must not overwrite the parent's (lastfailed, stepwise), and
            # must not show what earlier runs of the session put there.
            cache_dir = self._take_cache()
            args += ["-o", f"cache_dir={cache_dir}"]
        args.append(plugin._node_arg(item))
        request = runner.RunRequest(
            mode="pytest",
            args=tuple(args),
            python=interp.path,
            python_flags=flags,
            cwd=str(config.invocation_params.dir),
            env=childcoverage.child_environment(
                childenv.with_hash_seed(runner.child_environment(), config.stash[plugin.SEED_KEY])
            ),
            timeout=settings.timeout,
            run_timeout=settings.run_timeout,
            plugins=tuple(n for n in [plugin._plugin_name(config)] if n),
            native_stacks=settings.native_stacks,
            workdir=run_dir,
            plan=planned.policy.plan(planned.seed, interp.version),
            seed=planned.seed,
            forkserver=server,
            cancel=self.pool.cancel,
            pycache_prefix=self.pycache_prefix,
        )
        start = "spawn" if server is None else "forkserver"
        try:
            try:
                evidence = runner.run(request)
            except forkserver.ForkServerError:
                # The server died between runs: this run is spawned, the next one restarts it.
                request = dataclasses.replace(request, forkserver=None)
                evidence, start = runner.run(request), "spawn"
        finally:
            if cache_dir is not None:
                self._give_back_cache(cache_dir)
        verdict = judge(evidence, settings, self.signatures, planned.policy)
        return Launched(evidence, verdict, start, environ)

    def _take_cache(self) -> Path:
        """A pytest cache directory for one run, as empty as a new one.  pytest makes a new
        cache's directory and its three supporting files at the first write (the child's
        session end): on a slow disk that cost as much as the run's own files.  So the
        session keeps one per run in flight and empties it when the run ends."""
        with self._lock:
            if self._caches:
                return self._caches.pop()
            self._cache_count += 1
            return Path(self.session_dir, "caches", str(self._cache_count))

    def _give_back_cache(self, path: Path) -> None:
        """Empty ``path`` for a later run; one that cannot be emptied is not used again."""
        try:
            _empty_cache(path)
        except FileNotFoundError:
            pass  # the run wrote nothing: still new
        except OSError:
            return
        with self._lock:
            self._caches.append(path)

    # -- running ahead ----------------------------------------------------------------

    def submit(self, item: pytest.Item, settings: Settings, runs: Sequence[Planned]) -> None:
        for planned in runs:
            self.pool.submit(planned.key, functools.partial(self.execute, item, settings, planned))

    def take(self, item: pytest.Item, settings: Settings, planned: Planned) -> Launched:
        def now() -> Launched:
            return self.execute(item, settings, planned)

        result: Launched = self.pool.take(planned.key, now)
        if result.environ != _environ():
            # Started ahead, before a test in between changed os.environ: the run a
            # sequential session makes here would have another environment.
            result = now()
        return result

    def run_ahead(self, item: pytest.Item, nextitem: Optional[pytest.Item]) -> None:
        """Submit the runs of the tests after ``item`` while fewer than two runs per job
        wait.  Under xdist only ``nextitem`` is known to run in this worker."""
        if not self.pool.parallel:
            return
        from pytest_daemonexit import plugin

        if hasattr(self.config, "workerinput"):
            upcoming: Sequence[pytest.Item] = [nextitem] if nextitem is not None else []
        else:
            items = item.session.items
            if self._index is None:
                self._index = {it.nodeid: i for i, it in enumerate(items)}
            start = self._index.get(item.nodeid, len(items)) + 1
            upcoming = items[start:]
        for other in upcoming:
            if self.pool.pending() >= 2 * self.pool.jobs:
                return
            if other.get_closest_marker(MARKER) is None or plugin.ITEM_KEY not in other.stash:
                continue
            settings = other.stash[plugin.ITEM_KEY]
            if settings.until_fail:
                continue  # a hunt's runs depend on each other's outcome
            for _interp, runs in plugin.planned_runs(other, settings):
                self.submit(other, settings, runs)

    def close(self) -> None:
        self._closing.set()
        for starting in list(self._starting):
            starting.abort()  # not needed any more: do not wait for its start
        self.pool.shutdown()
        with self._lock:
            servers = [s for s in self._servers.values() if s]
            self._servers.clear()
        for server in servers:
            server.stop()
        self._closed.set()
        if self._own_dir:  # pytest's tmpdir plugin is off: nothing else removes it
            shutil.rmtree(self.session_dir, ignore_errors=True)


#: What pytest writes into a cache directory it creates (``Cache.mkdir`` and values go
#: to ``d/`` and ``v/``).
_CACHE_SUPPORT_FILES = frozenset({"README.md", ".gitignore", "CACHEDIR.TAG"})


def _empty_cache(path: Path) -> None:
    """Remove what a run put in the pytest cache ``path``: all but the files pytest
    writes when it creates a cache, and the directory of pytest's own values
    (``v/cache``, emptied), where every child's session end writes ``cache/nodeids``."""
    for entry in _entries(path):
        if entry.name in _CACHE_SUPPORT_FILES:
            continue
        if entry.name != "v" or not _is_dir(entry):
            _remove(entry)
            continue
        for value in _entries(entry):
            if value.name == "cache" and _is_dir(value):
                for own in _entries(value):
                    _remove(own)
            else:
                _remove(value)


def _entries(directory: Path) -> List[Path]:
    return [Path(directory, name) for name in os.listdir(directory)]


def _is_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _remove(path: Path) -> None:
    if _is_dir(path):
        shutil.rmtree(path)
    else:
        path.unlink()


def spawned_anyway(version: Tuple[int, ...], flags: Tuple[str, ...]) -> bool:
    """CPython 3.8's debug allocators (-X dev) meet corrupted blocks at interpreter clear
    in a forked child (SIGBUS): such runs are spawned even in forkserver mode."""
    return "dev" in flags and tuple(version[:2]) < (3, 9)


def _root_args(config: pytest.Config, args: Sequence[str]) -> List[str]:
    """Where the session's rootdir and ini file are, for a fork server: it parses the
    command line without the test paths, from the invocation directory, so on its own it
    would look for the ini file from there (a ``pytest pkg/tests`` in a monorepo would
    lose ``pkg``'s settings). Nothing when the command line names them itself."""
    out = []
    if not any(a == "--rootdir" or a.startswith("--rootdir=") for a in args):
        out.append(f"--rootdir={config.rootpath}")
    if not any(
        a in ("-c", "--config-file", "--inifile")
        or a.startswith(("--config-file=", "--inifile="))
        or (a.startswith("-c") and not a.startswith("--"))
        for a in args
    ):
        if config.inipath is not None:
            out.append(f"--config-file={config.inipath}")
        else:
            # No ini file on the way to the tests: looked for from the rootdir up, where
            # pytest found none either (not from the invocation directory).
            out.append(str(config.rootpath))
    return out


def _environ() -> Dict[str, str]:
    """The parent's environment as far as a run depends on it (pytest's
    ``PYTEST_CURRENT_TEST`` names whichever test phase is running in the parent)."""
    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def _startup_environment(env: Dict[str, str]) -> Tuple[Tuple[str, str], ...]:
    """The variables an interpreter reads once, at its start: the sys.path, flags and
    stream encodings (``PYTHON*``), the locale and the time zone. A forked child replaces
    ``os.environ`` but keeps what its server read, so a change of these during the session
    (a test module that sets ``TZ``, an unmarked test that leaks ``PYTHONIOENCODING``)
    needs a server started with them."""
    return tuple(
        sorted(
            (name, value)
            for name, value in env.items()
            if name.startswith(("PYTHON", "LC_")) or name in ("LANG", "LANGUAGE", "TZ")
        )
    )


def _server_environment(session_seed: int) -> Dict[str, str]:
    from pytest_daemonexit import childenv

    env = childenv.with_hash_seed(childenv.child_environment(), session_seed)
    for name in _PER_RUN_ENV:
        env.pop(name, None)
    return env


def _new_server(
    config: pytest.Config, python: str, flags: Tuple[str, ...], env: Dict[str, str]
) -> ForkServer:
    """A server not started yet; its command line and directory come with ``adopt``."""
    from pytest_daemonexit import childenv, forkserver

    return forkserver.ForkServer(
        python=python,
        python_flags=flags,
        args=(),
        plugins=(),
        cwd=str(config.invocation_params.dir),
        env=env,
        sys_path0=childenv.ORIGINAL_SYS_PATH0,
        workdir="",
    )


def launch_early(
    config: pytest.Config, interp: Interpreter, flags: Tuple[str, ...], session_seed: int
) -> None:
    """Launch the fork server of ``interp`` now, before the conftest files or at configure:
    it imports pytest while the parent goes on, and gets the command line at session start
    or when a run needs it (``SessionRuns._server`` adopts it).  One launched earlier that
    is still running with the environment a server would get now is kept; one whose
    environment changed since (a conftest file set a variable) is replaced.  Failing here
    costs nothing: the server is then started, or its failure reported, when a run needs
    it."""
    from pytest_daemonexit import forkserver

    env = _server_environment(session_seed)
    if EARLY_KEY not in config.stash:
        # pytest unconfigures only a configured session: this also covers a command line
        # that fails to parse after the launch, in a process that goes on (pytest.main).
        config.add_cleanup(functools.partial(stop_early, config))
    kept = _take_early(config, interp.path, flags, env)
    early = config.stash.setdefault(EARLY_KEY, [])
    if kept is not None:
        early.append(kept)
        return
    server = _new_server(config, interp.path, flags, env)
    try:
        server.boot()
    except forkserver.ForkServerError:
        return
    early.append(server)


def _take_early(
    config: pytest.Config, python: str, flags: Tuple[str, ...], env: Dict[str, str]
) -> Optional[ForkServer]:
    """A server launched early for this interpreter and these flags, if it is still
    running and its environment is still the one a server would get (a plugin's
    configure or session start may have changed ``os.environ`` since)."""
    early = config.stash.get(EARLY_KEY, [])
    for server in list(early):
        if server.python == python and server.python_flags == flags:
            early.remove(server)
            if server.env == env and server.proc is not None and server.proc.poll() is None:
                return server
            server.discard()
    return None


def stop_early(config: pytest.Config) -> None:
    """Servers launched early that no run took: killed, they never forked."""
    for server in config.stash.get(EARLY_KEY, []):
        server.discard()
    config.stash[EARLY_KEY] = []


def session_runs(config: pytest.Config) -> SessionRuns:
    if RUNS_KEY not in config.stash:
        from pytest_daemonexit import plugin

        settings = config.stash[plugin.SESSION_KEY]
        config.stash[RUNS_KEY] = SessionRuns(config, settings, plugin._signatures(config))
    return config.stash[RUNS_KEY]


def close(config: pytest.Config) -> None:
    runs = config.stash.get(RUNS_KEY, None)
    if runs is not None:
        runs.close()
        del config.stash[RUNS_KEY]
    stop_early(config)
