"""pytest hooks only: options, marker, header, run protocol.  The engine is imported lazily,
when a marked test actually runs."""

from __future__ import annotations

import copy
import dataclasses
import os
import random
import shlex
import sys
import tempfile
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    Generator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

import pytest

from pytest_daemonexit.settings import (
    MARKER,
    OPTIONS,
    SettingError,
    Settings,
    marker_overrides,
    marker_signature,
    resolve,
)

if TYPE_CHECKING:
    from pytest_daemonexit.childruns import Launched, Planned
    from pytest_daemonexit.interpreters import Interpreter
    from pytest_daemonexit.judge import Verdict
    from pytest_daemonexit.policies import Policy
    from pytest_daemonexit.rounds import Tally
    from pytest_daemonexit.runner import Evidence
    from pytest_daemonexit.signatures import Signature

SESSION_KEY = pytest.StashKey[Settings]()
ITEM_KEY = pytest.StashKey[Settings]()
SIGNATURES_KEY = pytest.StashKey[Tuple["Signature", ...]]()
POLICIES_KEY = pytest.StashKey[Dict[str, "Policy"]]()
SEED_KEY = pytest.StashKey[int]()
INTERPRETERS_KEY = pytest.StashKey[Tuple["Interpreter", ...]]()
#: In a child: the module and names of the one test it runs (pytest_pycollect_makeitem).
CHILD_TARGET_KEY = pytest.StashKey[Optional[Tuple[Path, Tuple[str, ...]]]]()
#: In a child that runs one test: its session (pytest_ignore_collect).
CHILD_SESSION_KEY = pytest.StashKey[pytest.Session]()
SEED_CACHE_KEY = "daemonexit/seed"
#: The session seed as known before configure (drawn, or the xdist controller's), for a
#: fork server launched early: its environment carries the seed's PYTHONHASHSEED.
EARLY_SEED_KEY = pytest.StashKey[int]()
#: An xdist controller's session seed, in the environment of the workers it starts: they
#: launch their fork servers before xdist hands them its input.
SEED_ENV = "PYTEST_DAEMONEXIT_SEED"
#: Whether the last session that collected tests had marked ones (starts servers early).
MARKED_CACHE_KEY = "daemonexit/marked"
#: Options the replay command sets itself.
_REPLAY_SET = {
    "--daemonexit-seed": True,
    "--daemonexit-policy": True,
    "--daemonexit-rounds": True,
    "--daemonexit-first-round": True,
    "--daemonexit-until-fail": True,
    "--daemonexit-python": True,
    "--daemonexit-report": True,  # a replay must not overwrite the session's report
}

#: Options that would make the child overwrite the parent's reports, start workers, wait
#: for a debugger or select other tests; (option, takes a value).
_CHILD_STRIPPED = {
    "--junitxml": True,
    "--junit-xml": True,
    "--junitprefix": True,
    "--junit-prefix": True,
    "--report-log": True,
    "--html": True,
    "--json-report-file": True,
    "--resultlog": True,
    "--result-log": True,
    "--alluredir": True,
    "--basetemp": True,
    "-n": True,
    "--numprocesses": True,
    "--maxprocesses": True,
    "--dist": True,
    "--tx": True,
    "--rsyncdir": True,
    "--max-worker-restart": True,
    "--pdbcls": True,
    "--pdb": False,
    "--trace": False,
    "--looponfail": False,
    "-f": False,
    "--lf": False,
    "--last-failed": False,
    "--ff": False,
    "--failed-first": False,
    "--nf": False,
    "--new-first": False,
    "--sw": False,
    "--stepwise": False,
    "--sw-skip": False,
    "--stepwise-skip": False,
    "--json-report": False,
    "--cache-clear": False,
}


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_daemonexit import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("daemonexit", "interpreter exit of marked tests (pytest-daemonexit)")
    for spec in OPTIONS:
        if not spec.command_line:
            continue
        if spec.kind == "flag":
            group.addoption(
                spec.option, action="store_true", default=None, dest=spec.dest, help=spec.help
            )
        elif spec.kind == "list":
            group.addoption(
                spec.option,
                action="append",
                default=None,
                dest=spec.dest,
                metavar=spec.metavar,
                help=spec.help,
            )
        else:
            group.addoption(
                spec.option, default=None, dest=spec.dest, metavar=spec.metavar, help=spec.help
            )
        if spec.kind == "list":
            parser.addini(spec.ini, spec.help, type="linelist", default=[])
        else:
            parser.addini(spec.ini, spec.help, default="")


def session_settings(config: pytest.Config, options: Optional[Any] = None) -> Settings:
    """Command line over ini over defaults; a bad value is a usage error naming it.
    ``options``: the namespace to read the command line from (default: pytest's parsed
    options; before they are, the known arguments)."""
    values = {}
    for spec in OPTIONS:
        if not spec.command_line:
            continue
        raw: Any = (
            config.getoption(spec.dest) if options is None else getattr(options, spec.dest, None)
        )
        where = spec.option
        if raw is None:
            raw, where = config.getini(spec.ini), f"ini option {spec.ini}"
            if raw in ("", [], None):
                continue
        try:
            values[spec.name] = spec.parse(raw)
        except SettingError as exc:
            shown = raw[0] if isinstance(raw, list) and len(raw) == 1 else raw
            raise pytest.UsageError(f"{where}={shown!r}: {exc}") from None
    return dataclasses.replace(Settings(), **values)


def _in_child(config: pytest.Config) -> bool:
    child = sys.modules.get("pytest_daemonexit.child")
    return bool(getattr(child, "RUNNING", False)) or bool(
        getattr(config, "_pytest_daemonexit_child", False)
    )


def policy_registry(config: pytest.Config) -> Dict[str, Policy]:
    """Built-in policies and those plugins and conftest files add (once per session)."""
    if POLICIES_KEY not in config.stash:
        from pytest_daemonexit import policies

        extra: List[Policy] = []
        for result in config.hook.pytest_daemonexit_policies(config=config):
            extra.extend(result or ())
        try:
            config.stash[POLICIES_KEY] = policies.registry(extra)
        except policies.PolicyError as exc:
            raise pytest.UsageError(f"pytest_daemonexit_policies: {exc}") from None
    return config.stash[POLICIES_KEY]


def _option_source(config: pytest.Config, name: str) -> str:
    """Where a session setting came from, as a usage error names it."""
    spec = next(s for s in OPTIONS if s.name == name)
    return spec.option if config.getoption(spec.dest) is not None else f"ini option {spec.ini}"


def _session_seed(config: pytest.Config, settings: Settings) -> int:
    workerinput = getattr(config, "workerinput", None)
    if isinstance(workerinput, dict) and "daemonexit_seed" in workerinput:
        return int(workerinput["daemonexit_seed"])  # xdist: the controller's seed
    cache = getattr(config, "cache", None)
    if settings.seed == "last":
        seed = cache.get(SEED_CACHE_KEY, None) if cache is not None else None
        if not isinstance(seed, int):
            raise pytest.UsageError(
                "--daemonexit-seed=last: no seed of an earlier session in pytest's cache "
                "(run once without it, or give the seed as a number; the cache plugin must "
                "be enabled)"
            )
        return seed
    seed = _known_seed(config, settings)  # drawn already if a fork server launched early
    assert seed is not None  # only 'last' is unknown before configure
    if cache is not None:
        cache.set(SEED_CACHE_KEY, seed)
    return seed


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{marker_signature()}: run the test in a child interpreter that really "
        "finalizes, and fail it if the child crashes, hangs or prints a shutdown error at "
        "exit (pytest-daemonexit).",
    )
    settings = session_settings(config)
    config.stash[SESSION_KEY] = settings
    if _in_child(config):
        return
    _take_seed_from_controller(config)
    from pytest_daemonexit import policies

    try:
        policies.select(settings.policies, policy_registry(config))
    except policies.PolicyError as exc:
        shown = ",".join(settings.policies)
        raise pytest.UsageError(f"{_option_source(config, 'policies')}={shown}: {exc}") from None
    config.stash[SEED_KEY] = _session_seed(config, settings)
    _hand_seed_to_workers(config)
    _launch_early(config, settings)
    config.stash[INTERPRETERS_KEY] = _interpreters(config, settings)
    from pytest_daemonexit import cireports

    cireports.configure(config, settings)


def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
    """The first moment the fork server can be launched: this plugin is registered, while
    pytest still imports the plugins after it, before the conftest files.  The command
    line is parsed here as pytest will parse it, with this plugin's options;
    ``pytest_load_initial_conftests`` checks the launch again with every plugin loaded and
    keeps the server only if nothing changed."""
    if plugin is not sys.modules[__name__]:
        return
    config = manager.get_plugin("pytestconfig")
    if isinstance(config, pytest.Config) and not _in_child(config):
        _take_seed_from_controller(config)
        _launch_before_conftests(config, _options_while_loading(config))


def _hand_seed_to_workers(config: pytest.Config) -> None:
    """An xdist controller puts its seed where the workers it starts find it first."""
    if _xdist_controller(config):
        os.environ[SEED_ENV] = str(config.stash[SEED_KEY])

        def forget() -> None:
            os.environ.pop(SEED_ENV, None)

        config.add_cleanup(forget)


def _take_seed_from_controller(config: pytest.Config) -> None:
    """A worker's seed, before xdist hands it its input; taken out of the environment so
    that no process a test starts inherits it."""
    value = os.environ.pop(SEED_ENV, None)
    if value is not None and value.isdigit() and "PYTEST_XDIST_WORKER" in os.environ:
        config.stash[EARLY_SEED_KEY] = int(value)


def _known_seed(config: pytest.Config, settings: Settings) -> Optional[int]:
    """The session seed as far as it is known now; None before configure with ``last``
    (read from pytest's cache then).  A seed drawn here is the session's."""
    if SEED_KEY in config.stash:
        return config.stash[SEED_KEY]
    if settings.seed not in ("random", "last"):
        return int(settings.seed)
    if EARLY_SEED_KEY in config.stash:
        return config.stash[EARLY_SEED_KEY]
    if settings.seed == "last":
        return None
    config.stash[EARLY_SEED_KEY] = random.Random().randrange(2**32)
    return config.stash[EARLY_SEED_KEY]


def _options_while_loading(config: pytest.Config) -> Optional[Any]:
    """The command line (ini and environment ``addopts`` first, as pytest puts them) parsed
    with the options registered so far; None when it cannot be told yet whether this is
    an xdist controller (xdist's ``-n`` is not registered yet) or pytest's parser is not
    the one this was written for."""
    try:
        args = [
            *config.getini("addopts"),
            *shlex.split(os.environ.get("PYTEST_ADDOPTS", "")),
            *config.invocation_params.args,
        ]
        options = config._parser.parse_known_args(args, namespace=copy.copy(config.option))
    except Exception:  # a bad command line is pytest's to report, a moment later
        return None
    controller = ("-n", "--numprocesses", "--dist", "--tx")
    if (
        not hasattr(options, "numprocesses")
        and "PYTEST_XDIST_WORKER" not in os.environ
        and any(str(arg).startswith(controller) for arg in args)
    ):
        return None
    return options


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """The launch checked again, every plugin imported: the conftest files (which often
    import the code under test) are not yet."""
    import pytest_daemonexit

    # A child imported the package before pytest put its rewriter first.
    pytest_daemonexit.own_modules_first()
    _launch_before_conftests(early_config, early_config.known_args_namespace)


def _launch_before_conftests(config: pytest.Config, options: Optional[Any]) -> None:
    """``_launch_early`` from the known arguments, before pytest has parsed the options."""
    if options is None or _in_child(config):
        return
    try:
        settings = session_settings(config, options)
    except pytest.UsageError:
        return  # reported at configure
    _launch_early(config, settings, options)


def pytest_unconfigure(config: pytest.Config) -> None:
    # A session that never started (an error in another plugin's configure) still stops
    # the fork server launched before it.
    if "pytest_daemonexit.childruns" in sys.modules:
        from pytest_daemonexit import childruns

        childruns.close(config)


def _launch_early(config: pytest.Config, settings: Settings, options: Optional[Any] = None) -> None:
    """When this session is likely to have marked tests, launch this interpreter's fork
    server now: its longest part, importing pytest, then overlaps the rest of the start,
    the conftest files and the collection.  Called before the conftest files are loaded
    (``options``: the known arguments), then again at configure, which keeps that server
    only if the conftest files left the environment it was started with as it was."""
    from pytest_daemonexit import childruns, interpreters

    flags = settings.python_flags()
    if (
        start_mode(settings) != "forkserver"
        or (settings.pythons and interpreters.CURRENT not in settings.pythons)
        or childruns.spawned_anyway(tuple(sys.version_info[:3]), flags)
        or not _expects_marked_tests(config, options)
    ):
        childruns.stop_early(config)
        return
    seed = _known_seed(config, settings)
    if seed is None:
        return  # launched at configure, which knows the seed the server's PYTHONHASHSEED needs
    childruns.launch_early(config, interpreters.current(), flags, seed)


def _expects_marked_tests(config: pytest.Config, options: Optional[Any] = None) -> bool:
    """Whether to launch a fork server before any marked test is collected: this session
    may run children, and pytest's cache says the last session had marked tests or, with
    no record there (a fresh checkout, ``--cache-clear``), the plugin is asked for by
    name or one of its options is set."""
    if not _may_run_children(config, options):
        return False
    record = _marked_record(config, options)
    if record is not None:
        return record
    return _asked_for(config, config.option if options is None else options)


def _last_session_had_marked_tests(config: pytest.Config) -> bool:
    """Whether this session may start its fork servers at session start, before it
    collects a marked test: it may run children, and pytest's cache says the last
    session had marked tests."""
    return _may_run_children(config) and _marked_record(config) is True


def _marked_record(config: pytest.Config, options: Optional[Any] = None) -> Optional[bool]:
    """What pytest's cache says of the last session's marked tests; None: nothing.  With
    ``options`` (the known arguments, before pytest's cache is configured), the cache is
    read from where pytest will keep it."""
    cache = getattr(config, "cache", None)
    if options is not None:
        if getattr(options, "cacheclear", False) or not config.pluginmanager.has_plugin(
            "cacheprovider"
        ):
            return None
        try:
            from _pytest.cacheprovider import Cache

            path = Cache.cache_dir_from_config(config, _ispytest=True)
            cache = Cache(path, config, _ispytest=True)
        except Exception:  # another pytest's internals
            return None
    value = cache.get(MARKED_CACHE_KEY, None) if cache is not None else None
    return value if isinstance(value, bool) else None


def _asked_for(config: pytest.Config, option: Any) -> bool:
    """The plugin named on the command line (``-p daemonexit``) or in ``PYTEST_PLUGINS``,
    or one of its options set on the command line or in the ini file."""
    names = {"daemonexit", __name__}
    if names & set(getattr(option, "plugins", None) or ()):
        return True
    if names & {name.strip() for name in os.environ.get("PYTEST_PLUGINS", "").split(",")}:
        return True
    if any(
        name.startswith("daemonexit_") and value not in (None, False, "", [])
        for name, value in vars(option).items()
    ):
        return True
    return any(
        spec.command_line and config.getini(spec.ini) not in ("", [], None) for spec in OPTIONS
    )


def _interpreters(config: pytest.Config, settings: Settings) -> Tuple[Interpreter, ...]:
    from pytest_daemonexit import interpreters, runner

    try:
        return interpreters.resolve_all(settings.pythons, runner.child_environment())
    except interpreters.InterpreterError as exc:
        raise pytest.UsageError(f"{_option_source(config, 'pythons')}={exc}") from None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: every worker derives its runs from the controller's session seed."""
    node.workerinput["daemonexit_seed"] = node.config.stash[SEED_KEY]


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> Optional[int]:
    if not config.getoption("daemonexit_list_policies"):
        return None
    from _pytest.config import create_terminal_writer

    config._do_configure()
    try:
        tw = create_terminal_writer(config)
        table = policy_registry(config)
        for policy in table.values():
            for i, line in enumerate(policy.describe()):
                tw.line(line, bold=(i == 0))
            tw.line()
        tw.line(
            "Select with --daemonexit-policy=NAME[,NAME], the marker's policies=, or the "
            "ini value daemonexit_policy; 'default' is the set marked (default), 'all' "
            "every policy."
        )
    finally:
        config._ensure_unconfigure()
    return 0


def pytest_report_header(config: pytest.Config) -> Optional[List[str]]:
    if _in_child(config):
        return None
    from pytest_daemonexit import policies
    from pytest_daemonexit.runner import PINNED_ENVIRONMENT

    base = config.stash[SESSION_KEY]
    flags = " ".join(["-X", "faulthandler", *base.python_flags()])
    removed = [name for name in PINNED_ENVIRONMENT if name in os.environ]
    chosen = policies.select(base.policies, policy_registry(config))
    pythons = ", ".join(f"{i.path} ({i.label})" for i in config.stash[INTERPRETERS_KEY])
    return [
        f"daemonexit: seed={config.stash[SEED_KEY]} "
        f"policies={','.join(p.name for p in chosen)} rounds={base.rounds} "
        f"start={start_mode(base)} jobs={jobs(config, base)} "
        f"{base.describe()}",
        f"daemonexit child: {pythons} {flags}; removed from its environment: "
        f"{', '.join(removed) or 'nothing'}; {_hash_seed_source(config)}",
    ]


def _hash_seed_source(config: pytest.Config) -> str:
    from pytest_daemonexit import childenv

    if "PYTHONHASHSEED" in os.environ:
        return f"PYTHONHASHSEED={os.environ['PYTHONHASHSEED']} (from the environment)"
    env = childenv.with_hash_seed({}, config.stash[SEED_KEY])
    return f"PYTHONHASHSEED={env['PYTHONHASHSEED']} (from the seed)"


def start_mode(settings: Settings) -> str:
    """The start mode ``auto`` stands for here."""
    from pytest_daemonexit import forkserver

    if settings.start == "auto":
        return "forkserver" if forkserver.available() else "spawn"
    return settings.start


def jobs(config: pytest.Config, settings: Settings) -> int:
    from pytest_daemonexit import runpool

    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    return settings.jobs or runpool.default_jobs(int(workers))


def item_settings(item: pytest.Item) -> Settings:
    marks = list(item.iter_markers(MARKER))
    where = f"@pytest.mark.{MARKER} on {item.nodeid}"
    base = item.config.stash[SESSION_KEY]
    settings = resolve(base, marker_overrides(marks, where), where)
    if settings.policies != base.policies:
        from pytest_daemonexit import policies

        try:
            policies.select(settings.policies, policy_registry(item.config))
        except policies.PolicyError as exc:
            raise SettingError(f"{where}: policies={settings.policies!r}: {exc}") from None
    return settings


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if report.passed and isinstance(report.result, list):
        errors = []
        for node in report.result:
            if isinstance(node, pytest.Item) and node.get_closest_marker(MARKER) is not None:
                try:
                    node.stash[ITEM_KEY] = item_settings(node)
                except SettingError as exc:
                    errors.append(str(exc))
                else:
                    _prestart(node)
        if errors:
            report.outcome = "failed"
            report.longrepr = "\n".join(errors)
            report.result = []
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(
    collector: Union[pytest.Module, pytest.Class], name: str, obj: object
) -> Optional[List[Any]]:
    """In a child, only the run's test is made an item: pytest would build every test of
    the module (and parametrize each) to keep one, a cost per run that grows with the
    module.  The module is still imported and set up whole."""
    config = collector.config
    if not _in_child(config):
        return None
    if CHILD_TARGET_KEY not in config.stash:
        config.stash[CHILD_TARGET_KEY] = _child_target(config)
    target = config.stash[CHILD_TARGET_KEY]
    if target is None:
        return None
    path, names = target
    chain: List[str] = []
    node: Optional[Union[pytest.Item, pytest.Collector]] = collector
    while node is not None and not isinstance(node, pytest.Module):
        chain.insert(0, node.name)
        node = node.parent
    if node is None or len(chain) >= len(names):
        return None
    if node.path != path and node.path.resolve() != path.resolve():
        return None
    wanted = names[len(chain)]
    if chain != list(names[: len(chain)]) or name == wanted:
        return None
    # A plugin may name an item unlike the attribute it comes from: then build them all.
    if not hasattr(collector.obj, wanted):
        return None
    return []


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> Optional[bool]:
    """In a child, what lies beside the way to the run's test module is not collected:
    pytest would make a node of every file in every directory on the way, then keep the
    one asked for, a cost per run that grows with the project.  What is on the way is
    pytest's own notion (its initial paths and their parents) and its own rules."""
    session = config.stash.get(CHILD_SESSION_KEY, None)
    if session is None or session.isinitpath(collection_path, with_parents=True):
        return None
    return True


def _child_target(config: pytest.Config) -> Optional[Tuple[Path, Tuple[str, ...]]]:
    """The module path and the names down to the function (``Class``, ``test``) of the
    one node id a child runs; None when it runs something else."""
    if len(config.args) != 1 or "::" not in config.args[0]:
        return None
    where, _, rest = config.args[0].partition("::")
    names = tuple(rest.split("[", 1)[0].split("::"))
    if not all(names):
        return None
    return Path(where), names


def _prestart(item: pytest.Item) -> None:
    """The first marked test collected starts the fork servers (a no-op after it)."""
    config = item.config
    if not _may_run_children(config):
        return
    from pytest_daemonexit import childruns

    childruns.session_runs(config).prestart(item.stash[ITEM_KEY], config.stash[INTERPRETERS_KEY])


def _may_run_children(config: pytest.Config, options: Optional[Any] = None) -> bool:
    """False where no marked test will run a child: in a child, an xdist controller,
    ``--collect-only``, ``--fixtures``, ``--markers``, ``--help``, a debugger (marked tests
    are skipped).
    ``options``: the known arguments, before pytest (and xdist) finished parsing them."""
    option = config.option if options is None else options
    return not (
        _in_child(config)
        or any(getattr(option, name, False) for name in _NO_CHILDREN_OPTIONS)
        or _xdist_controller(config, options)
    )


def _xdist_controller(config: pytest.Config, options: Optional[Any] = None) -> bool:
    """Whether this process is an xdist controller: it starts workers and runs no test.
    ``options``: the known arguments, before pytest (and xdist) finished parsing them."""
    option = config.option if options is None else options
    worker = hasattr(config, "workerinput") or (
        # xdist sets its worker's input only after parsing, its environment before (a
        # pytest started from a worker inherits it: configure then stops that server).
        options is not None and "PYTEST_XDIST_WORKER" in os.environ
    )
    # -n N makes a controller; xdist turns it into --dist only once parsing is done.
    controller = getattr(option, "dist", "no") != "no" or (
        options is not None and bool(getattr(option, "numprocesses", None))
    )
    return controller and not worker


#: Options with which no marked test runs a child (the debuggers skip marked tests).
_NO_CHILDREN_OPTIONS = (
    "collectonly",
    "showfixtures",
    "show_fixtures_per_test",
    "showmarkers",
    "help",
    "version",
    "daemonexit_list_policies",
    "usepdb",
    "trace",
)


def pytest_sessionstart(session: pytest.Session) -> None:
    """When the last session of this project had marked tests, its fork servers start
    now, while pytest collects, instead of once the first marked test is collected."""
    config = session.config
    if _in_child(config):
        # One test of one file: pytest_ignore_collect.  Not on Windows, where pytest also
        # matches a differently spelled path to the same file (short names).
        if _child_target(config) is not None and sys.platform != "win32":
            config.stash[CHILD_SESSION_KEY] = session
        return
    if not _last_session_had_marked_tests(config):
        return
    from pytest_daemonexit import childruns

    runs = childruns.session_runs(config)
    runs.prestart(config.stash[SESSION_KEY], config.stash[INTERPRETERS_KEY])


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if _in_child(config) or not session.items:
        return
    marked = any(item.get_closest_marker(MARKER) is not None for item in session.items)
    cache = getattr(config, "cache", None)
    if cache is not None and cache.get(MARKED_CACHE_KEY, None) is not marked:
        cache.set(MARKED_CACHE_KEY, marked)
    if not marked:
        from pytest_daemonexit import childruns

        # Servers started at session start, or for marked tests then deselected, are not
        # needed: free their cores now.
        childruns.close(config)


def _signatures(config: pytest.Config) -> Tuple[Signature, ...]:
    if SIGNATURES_KEY not in config.stash:
        from pytest_daemonexit.signatures import BUILTIN_SIGNATURES, Signature

        extra: List[Signature] = []
        for result in config.hook.pytest_daemonexit_signatures(config=config):
            for sig in result or ():
                if not isinstance(sig, Signature):
                    raise pytest.UsageError(
                        f"pytest_daemonexit_signatures returned {sig!r}; expected "
                        "pytest_daemonexit.Signature objects"
                    )
                extra.append(sig)
        config.stash[SIGNATURES_KEY] = (*extra, *BUILTIN_SIGNATURES)
    return config.stash[SIGNATURES_KEY]


def _passthrough_args(config: pytest.Config) -> List[str]:
    """The parent's command line without test selection by path and without options that
    must not act in the child."""
    positional: Set[str] = set()
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        positional = set(config.args)
    args = [a for a in config.invocation_params.args if a not in positional]
    # -n2, -nauto: xdist's short option glued to its value.
    args = [a for a in args if not (a.startswith("-n") and not a.startswith("--") and a != "-n")]
    return _without_options(args, _CHILD_STRIPPED)


def _node_arg(item: pytest.Item) -> str:
    """The node id with an absolute path: the child's rootdir may resolve differently."""
    suffix = item.nodeid.split("::", 1)[1] if "::" in item.nodeid else ""
    return f"{item.path}::{suffix}" if suffix else str(item.path)


def _session_dir(config: pytest.Config) -> Tuple[Path, bool]:
    """Where this session keeps its runs' files, and whether the plugin must remove it:
    pytest's basetemp (which pytest rotates), else a private temporary directory.  Called
    once, in the main thread: the first ``getbasetemp()`` recreates the directory."""
    try:
        base = config._tmp_path_factory.getbasetemp() / "daemonexit"  # type: ignore[attr-defined]
        base.mkdir(exist_ok=True)
        return Path(base), False
    except (AttributeError, OSError):
        return Path(tempfile.mkdtemp(prefix="daemonexit-session-")), True


def _run_dir(session_dir: Path, item: pytest.Item) -> str:
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in item.name)[:40]
    return tempfile.mkdtemp(prefix=f"{name}-", dir=str(session_dir))


def reproduce_command(
    item: pytest.Item,
    policy: Optional[str] = None,
    seed: Optional[int] = None,
    round_: int = 0,
    rounds: int = 1,
    python: Optional[str] = None,
) -> str:
    """The command that replays ``item``; with a policy and a session seed, the very run
    (under ``python``, when the session runs children under several interpreters)."""
    config = item.config
    args = _passthrough_args(config)
    if policy is not None:
        args = _without_options(args, _REPLAY_SET)
        if python is not None:
            args += [f"--daemonexit-python={python}"]
        args += [f"--daemonexit-policy={policy}"]
        if seed is not None:
            args += [f"--daemonexit-seed={seed}"]
        if round_ or rounds != 1:
            args += ["--daemonexit-rounds=1", f"--daemonexit-first-round={round_}"]
    argv = [sys.executable, "-m", "pytest", *args, _node_arg(item)]
    return f"cd {shlex.quote(str(config.invocation_params.dir))} && {shlex.join(argv)}"


def _without_options(args: Sequence[str], options: Mapping[str, bool]) -> List[str]:
    """``args`` without the ``options`` (name -> whether it takes a separate value)."""
    out: List[str] = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
            continue
        name = arg.split("=", 1)[0]
        if name in options:
            skip_next = options[name] and "=" not in arg
            continue
        out.append(arg)
    return out


def _plugin_name(config: pytest.Config) -> Optional[str]:
    return config.pluginmanager.get_name(sys.modules[__name__])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Optional[pytest.Item]) -> Optional[bool]:
    config = item.config
    if _in_child(config) or item.get_closest_marker(MARKER) is None:
        return None
    if config.getoption("setuponly", False) or config.getoption("setupplan", False):
        return None
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = _run_marked(item, nextitem)
    # The parent set up no fixture for this item, but earlier items' fixtures that the
    # next item does not need must still be torn down here, as pytest would.
    teardown = pytest.CallInfo.from_call(
        lambda: item.session._setupstate.teardown_exact(nextitem), when="teardown"
    )
    if teardown.excinfo is not None:
        parent_rep = ihook.pytest_runtest_makereport(item=item, call=teardown)
        last = reports[-1]
        if hasattr(last, "daemonexit"):  # the summary and reports read the last report
            parent_rep.daemonexit = last.daemonexit
            del last.daemonexit
            parent_rep.user_properties.extend(
                p for p in last.user_properties if p not in parent_rep.user_properties
            )
        reports = [r for r in reports if r.when != "teardown" or r.failed] + [parent_rep]
    for report in reports:
        ihook.pytest_runtest_logreport(report=report)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _skip(item: pytest.Item, reason: str) -> List[pytest.TestReport]:
    from pytest_daemonexit import testreports

    return [
        testreports.synthetic(item, "setup", "skipped", (str(item.path), 0, reason)),
        testreports.synthetic(item, "teardown", "passed", None),
    ]


@dataclasses.dataclass
class _Run:
    interpreter: Interpreter
    policy: Policy
    round: int
    seed: int
    evidence: Evidence
    verdict: Verdict
    start: str = "spawn"


def planned_runs(item: pytest.Item, settings: Settings) -> List[Tuple[Interpreter, List[Planned]]]:
    """Every run the test may get, per interpreter, in the order they are judged (a hunt
    stops at its first failure, a failing policy stops the later ones)."""
    from pytest_daemonexit import policies, rounds
    from pytest_daemonexit.childruns import Planned

    config = item.config
    session_seed = config.stash[SEED_KEY]
    selected = policies.select(settings.policies, policy_registry(config))
    out = []
    for interp in config.stash[INTERPRETERS_KEY]:
        chosen = [p for p in selected if p.applies_to(interp.version)]
        runs = (
            [
                Planned(
                    item.nodeid,
                    interp,
                    policy,
                    round_,
                    policies.run_seed(session_seed, item.nodeid, policy.name, round_),
                )
                for policy, round_ in rounds.schedule(
                    chosen, settings.rounds, settings.until_fail, settings.first_round
                )
            ]
            if chosen
            else []
        )
        out.append((interp, runs))
    return out


def _run_marked(
    item: pytest.Item, nextitem: Optional[pytest.Item] = None
) -> Sequence[pytest.TestReport]:
    from pytest_daemonexit import childruns, testreports

    config = item.config
    if sys.platform == "win32":
        # The child needs an inherited pipe and POSIX process groups.
        return _skip(item, "pytest-daemonexit runs marked tests on Linux and macOS only")
    try:
        settings = item.stash[ITEM_KEY] if ITEM_KEY in item.stash else item_settings(item)
    except SettingError as exc:
        return [testreports.synthetic(item, "setup", "failed", str(exc))]
    debugger = [o for o in ("usepdb", "trace") if config.getoption(o, False)]
    if debugger:
        return _skip(
            item,
            f"--{'pdb' if debugger[0] == 'usepdb' else 'trace'} cannot debug a test that runs "
            "in a child interpreter; run it without -p daemonexit (or with -p no:daemonexit) "
            "to debug its body",
        )
    plan = planned_runs(item, settings)
    interps = config.stash[INTERPRETERS_KEY]
    if not any(runs for _, runs in plan):
        return _skip(
            item,
            f"none of the policies {', '.join(settings.policies) or 'default'} applies to "
            f"CPython {', '.join(i.label for i in interps)}",
        )
    session = childruns.session_runs(config)
    if not settings.until_fail:
        for _interp, runs in plan:
            session.submit(item, settings, runs)
    session.run_ahead(item, nextitem)
    done: List[_Run] = []
    records: List[Dict[str, Any]] = []
    tallies: List[Tally] = []
    for interp, runs in plan:
        if runs:
            tallies += _run_on(item, settings, interp, runs, done, records)
    failing = next((r for r in done if not r.verdict.ok), None)
    reported = failing or done[0]
    reports = _reports(item, settings, reported, tallies, len(interps) > 1)
    _attach(item, reports, reported, tallies, records)
    return reports


def _run_on(
    item: pytest.Item,
    settings: Settings,
    interp: Interpreter,
    planned: Sequence[Planned],
    runs: List[_Run],
    records: List[Dict[str, Any]],
) -> List[Tally]:
    """The test's runs under one interpreter, taken in order: its policies x rounds (or a
    hunt), stopping as a sequential session would; runs started ahead and not needed are
    discarded."""
    from pytest_daemonexit import childruns, rounds, runrecords, testreports

    config = item.config
    session = childruns.session_runs(config)
    label = interp.label if len(config.stash[INTERPRETERS_KEY]) > 1 or not interp.current else ""
    tallies: Dict[str, Tally] = {}
    failing: Optional[_Run] = None
    taken = 0
    for i, next_run in enumerate(planned):
        policy = next_run.policy
        tallies.setdefault(policy.name, rounds.Tally(policy.name, label))
        if failing is not None and (settings.until_fail or policy is not failing.policy):
            break  # the rounds of the failing policy give its rate; no need for more
        if settings.until_fail:
            # A hunt keeps one window of runs going; it stops at the first failure.
            session.submit(item, settings, planned[i : i + session.pool.jobs])
        launched = session.take(item, settings, next_run)
        taken = i + 1
        run = _finish(item, settings, next_run, launched)
        runs.append(run)
        tallies[policy.name].add(run.round, run.seed, run.verdict)
        outcome = testreports.child_outcome(run.evidence)
        records.append(
            runrecords.run_record(
                nodeid=item.nodeid,
                evidence=run.evidence,
                verdict=run.verdict,
                policy=policy.name,
                round_=run.round,
                session_seed=config.stash[SEED_KEY],
                interpreter=interp.to_json(),
                test_outcome=outcome,
                replay=_replay(item, settings, run),
                start=run.start,
            )
        )
        if failing is None and not run.verdict.ok:
            failing = run
        if failing is None and outcome in ("failed", "skipped"):
            break  # the test itself failed or skipped: other policies would not change that
    session.pool.discard(p.key for p in planned[taken:])
    return [t for t in tallies.values() if t.runs]


def _finish(item: pytest.Item, settings: Settings, planned: Planned, launched: Launched) -> _Run:
    """Post-exit checks and the verdict hook, in the main thread."""
    from pytest_daemonexit import checks, testreports

    evidence, verdict = launched.evidence, launched.verdict
    passed = evidence.test_finished and testreports.child_outcome(evidence) == "passed"
    if settings.check and passed:
        result = checks.ExitResult(
            evidence=evidence,
            verdict=verdict,
            tmp_path=testreports.child_tmp_path(evidence),
            policy=planned.policy.name,
            seed=planned.seed,
            round=planned.round,
            user_properties=testreports.child_user_properties(evidence),
        )
        verdict = checks.with_findings(verdict, checks.run_checks(settings.check, result))
    override = item.ihook.pytest_daemonexit_verdict(
        item=item, verdict=verdict, evidence=evidence, settings=settings
    )
    if override is not None:
        verdict = override
    return _Run(
        planned.interp,
        planned.policy,
        planned.round,
        planned.seed,
        evidence,
        verdict,
        launched.start,
    )


def _replay(item: pytest.Item, settings: Settings, run: _Run) -> str:
    config = item.config
    several = len(config.stash[INTERPRETERS_KEY]) > 1 or not run.interpreter.current
    return reproduce_command(
        item,
        run.policy.name,
        config.stash[SEED_KEY],
        run.round,
        settings.rounds,
        run.interpreter.path if several else None,
    )


def _attach(
    item: pytest.Item,
    reports: Sequence[pytest.TestReport],
    run: _Run,
    tallies: Sequence[Tally],
    records: Sequence[Dict[str, Any]],
) -> None:
    """What the summary, the report file and JUnit XML need, on the test's last report
    (xdist carries both to the controller)."""
    from pytest_daemonexit import childruns, cireports

    data = {
        "seed": item.config.stash[SEED_KEY],
        "tallies": [t.to_json() for t in tallies],
        "runs": list(records),
        "failed": any(r.failed for r in reports),
        "notes": list(childruns.session_runs(item.config).notes),
    }
    report = reports[-1]
    report.daemonexit = data  # type: ignore[attr-defined]
    report.user_properties.extend(cireports.junit_properties(run.verdict, run.evidence, records))


def _reports(
    item: pytest.Item, settings: Settings, run: _Run, tallies: Sequence[Tally], matrix: bool
) -> List[pytest.TestReport]:
    """The test's reports from one run: the failing one, else the first."""
    from pytest_daemonexit import report, testreports

    verdict, evidence = run.verdict, run.evidence
    text = None
    summary = ""
    bug = verdict.interpreter_bug
    xfail = bug is not None and settings.interpreter_bugs == "xfail"
    if not verdict.ok:
        text = report.format_verdict(
            verdict,
            evidence,
            _replay(item, settings, run),
            run.policy.name,
            [t.describe() for t in tallies],
        )
        summary = f"daemon exit: {', '.join(verdict.classes)} in phase {verdict.phase}"
        summary += f" under policy {run.policy.name}"
        if matrix or not run.interpreter.current:
            summary += f" on Python {run.interpreter.label}"
        if bug is not None:
            summary += f" (CPython bug {bug.ref})"
    built = testreports.build(item, evidence, None if xfail else text, summary)
    if xfail and bug is not None and not any(r.failed for r in built):
        for r in built:
            if r.when == "call" and r.passed:
                r.outcome = "skipped"
                r.wasxfail = f"{summary}: {bug.describe()}"
                r.longrepr = None
    return built


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    # First: runs started ahead must stop before pytest's tmpdir plugin removes basetemp.
    if _in_child(session.config):
        return
    from pytest_daemonexit import childruns

    # Runs started ahead for tests that never ran (-x, Ctrl-C) are stopped; servers end.
    childruns.close(session.config)
    if "pytest_daemonexit.childcoverage" not in sys.modules:
        return
    from pytest_daemonexit import childcoverage

    # Under `coverage run`, the children's measurements join the session's.
    childcoverage.merge_children(session.config.pluginmanager.has_plugin("_cov"))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The daemonexit section: per test, interpreter and policy, runs, failures, rate,
    first failing seed; on GitHub Actions, an annotation per failing test."""
    if _in_child(config):
        return
    from pytest_daemonexit import cireports, rounds

    rows = []
    marked = []
    notes: Dict[str, None] = {}
    failing = 0
    runs = 0
    for reports in terminalreporter.stats.values():
        for rep in reports:
            data = getattr(rep, "daemonexit", None)
            if not isinstance(data, dict):
                continue
            marked.append(rep)
            notes.update(dict.fromkeys(str(n) for n in data.get("notes", ())))
            tallies = [rounds.Tally.from_json(t) for t in data.get("tallies", ())]
            runs += sum(t.runs for t in tallies)
            failing += sum(t.failures for t in tallies)
            rows.extend(rounds.summary_rows(rep.nodeid, tallies))
    if not marked:
        return
    tests = len(marked)
    base = config.stash[SESSION_KEY]
    show_all = config.getoption("verbose") > 0 or base.rounds > 1 or base.until_fail > 0
    shown = rows if show_all else [r for r in rows if r[4] != "0"]
    terminalreporter.write_sep("=", "daemonexit")
    for line in rounds.format_table(shown) if shown else ():
        terminalreporter.write_line(line)
    terminalreporter.write_line(
        f"{tests} marked test{'s' if tests != 1 else ''}, {runs} child run"
        f"{'s' if runs != 1 else ''}, {failing} failed; session seed "
        f"{config.stash[SEED_KEY]}" + ("" if show_all else " (-v shows every test and policy)")
    )
    for note in notes:
        terminalreporter.write_line(f"daemonexit: note: {note}", yellow=True)
    for line in cireports.github_annotations(config, marked):
        terminalreporter.write_line(line)
