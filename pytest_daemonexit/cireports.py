"""What CI reads besides the terminal: the JSON report file, JUnit XML properties and
GitHub Actions annotations.

Everything here works from the data the plugin attaches to a marked test's last report
(``report.daemonexit``) and its ``user_properties``; both travel from xdist workers to the
controller, so the files are written once, by the process that sees every test.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pytest

from pytest_daemonexit import runrecords
from pytest_daemonexit.judge import Verdict
from pytest_daemonexit.runner import Evidence
from pytest_daemonexit.settings import Settings

#: Seconds between rewrites of the report file while the session runs: runs that finish
#: sooner after a rewrite are written this long after it (by a timer, so that a test that
#: then runs for long, or a killed session, does not keep them off the disk).
REPORT_INTERVAL = 1.0


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def configure(config: pytest.Config, settings: Settings) -> None:
    """Register the report writers this session asks for (in the process that sees every
    test: not in an xdist worker)."""
    if _is_worker(config):
        return
    if settings.report:
        problem = runrecords.check_writable(settings.report)
        if problem is not None:
            from pytest_daemonexit.plugin import _option_source

            raise pytest.UsageError(
                f"{_option_source(config, 'report')}={settings.report!r}: cannot write the "
                f"report there: {problem}"
            )
        config.pluginmanager.register(
            ReportFile(config, settings, str(Path(settings.report).resolve())),
            "daemonexit-reportfile",
        )


def junit_properties(
    verdict: Verdict, evidence: Evidence, records: Sequence[Mapping[str, Any]]
) -> List[Tuple[str, object]]:
    """JUnit XML properties of a marked test: the reported run's policy, seed, verdict,
    phase and interpreter, the run counts, and per interpreter its verdict."""
    reported = next((r for r in records if r["verdict"] != "ok"), records[0] if records else None)
    if reported is None:
        return []
    props: List[Tuple[str, object]] = [
        ("daemonexit.verdict", ",".join(verdict.classes) or "ok"),
        ("daemonexit.phase", verdict.phase),
        ("daemonexit.policy", reported["policy"]),
        ("daemonexit.seed", reported["seed"]),
        ("daemonexit.session_seed", reported["session_seed"]),
        (
            "daemonexit.interpreter",
            f"{reported['interpreter']['version']} {reported['interpreter']['path']}",
        ),
        ("daemonexit.exit", reported["exit"]["status"]),
        ("daemonexit.runs", len(records)),
        ("daemonexit.failed_runs", sum(1 for r in records if r["verdict"] != "ok")),
    ]
    if reported.get("interpreter_bug"):
        props.append(("daemonexit.interpreter_bug", reported["interpreter_bug"]))
    labels = list(dict.fromkeys(r["interpreter"]["version"] for r in records))
    if len(labels) > 1:
        for label in labels:
            mine = [r for r in records if r["interpreter"]["version"] == label]
            bad = [r for r in mine if r["verdict"] != "ok"]
            text = "ok" if not bad else f"{bad[0]['verdict']} in phase {bad[0]['phase']}"
            props.append((f"daemonexit.verdict.{label}", f"{text} ({len(bad)}/{len(mine)} runs)"))
    return props


class ReportFile:
    """``--daemonexit-report``: the JSON file, rewritten atomically as tests finish and
    once more when the session ends, interrupted or not."""

    def __init__(self, config: pytest.Config, settings: Settings, path: str) -> None:
        self.config = config
        self.settings = settings
        self.path = path
        self.runs: List[Dict[str, Any]] = []
        self.started = time.time()
        self.written = 0.0
        self._lock = threading.Lock()  # the session's thread and the timer's
        self._timer: Optional[threading.Timer] = None
        self._final = False

    def _document(self, complete: bool, interrupted: bool) -> Dict[str, Any]:
        from pytest_daemonexit import plugin, policies

        config = self.config
        s = self.settings
        chosen = policies.select(s.policies, plugin.policy_registry(config))
        return runrecords.document(
            self.runs,
            session_seed=config.stash.get(plugin.SEED_KEY, None),
            policies=[p.name for p in chosen],
            interpreters=[i.to_json() for i in config.stash.get(plugin.INTERPRETERS_KEY, ())],
            settings={
                "timeout": s.timeout,
                "run_timeout": s.run_timeout,
                "exit_code": s.exit_code,
                "rounds": s.rounds,
                "until_fail": s.until_fail,
                "interpreter_bugs": s.interpreter_bugs,
                "start": plugin.start_mode(s),
                "jobs": plugin.jobs(config, s),
            },
            complete=complete,
            interrupted=interrupted,
            started=self.started,
        )

    def write(self, complete: bool = False, interrupted: bool = False) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._final:
                return  # the session's last rewrite was made: nothing comes after it
            self._final = complete
            try:
                runrecords.write_report(self.path, self._document(complete, interrupted))
            except OSError as exc:
                # Losing the file must not cost the session its results: say so and go on.
                _warn(self.config, f"cannot write the report {self.path}: {exc}")
            self.written = time.monotonic()

    def pytest_sessionstart(self) -> None:
        self.write()  # an empty, valid report even if no marked test ever finishes

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "daemonexit", None)
        if not isinstance(data, dict):
            return
        with self._lock:
            self.runs.extend(r for r in data.get("runs", ()) if isinstance(r, dict))
            wait = REPORT_INTERVAL - (time.monotonic() - self.written)
            if wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self.write)
                    self._timer.daemon = True
                    self._timer.name = "daemonexit-report"
                    self._timer.start()
                return
        self.write()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.write(complete=True, interrupted=exitstatus == pytest.ExitCode.INTERRUPTED)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_line(f"daemonexit report: {self.path} ({len(self.runs)} runs)")


def _warn(config: pytest.Config, message: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"daemonexit: warning: {message}", yellow=True)


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _workspace_relative(path: str, config: pytest.Config) -> str:
    """Annotations take paths relative to the checkout (GITHUB_WORKSPACE)."""
    base = os.environ.get("GITHUB_WORKSPACE") or str(config.rootpath)
    try:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(base))
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def github_annotation(
    report: pytest.TestReport, data: Mapping[str, Any], config: pytest.Config
) -> Optional[str]:
    """``::error`` (``::warning`` for a known interpreter bug reported as xfail) at the
    innermost frame of the user's code in the failing run, else at the test itself."""
    runs = [r for r in data.get("runs", ()) if isinstance(r, dict)]
    bad = next((r for r in runs if r.get("verdict") != "ok"), None)
    if bad is None:
        return None
    frame = bad.get("user_frame")
    if isinstance(frame, dict) and frame.get("file"):
        file, line = str(frame["file"]), frame.get("line") or 1
    else:
        file = str(config.rootpath / report.location[0])
        line = (report.location[1] or 0) + 1
    # A known interpreter bug reported as xfail does not fail the job: a warning.
    level = "error" if data.get("failed", True) else "warning"
    title = (
        f"daemon exit: {','.join(bad.get('classes') or [bad.get('verdict', '')])} in phase "
        f"{bad.get('phase')} under policy {bad.get('policy')} on Python "
        f"{bad.get('interpreter', {}).get('version')}"
    )
    findings = bad.get("findings") or []
    lines = [f"{report.nodeid}: {title}"]
    lines += [f"{f.get('verdict')}: {f.get('summary')}" for f in findings[:3]]
    if bad.get("interpreter_bug"):
        lines.append(f"known CPython bug: {bad['interpreter_bug']}")
    lines.append(f"reproduce with: {bad.get('replay')}")
    props = (
        f"file={_escape_property(_workspace_relative(file, config))},line={int(line)},"
        f"title={_escape_property(title)}"
    )
    return f"::{level} {props}::{_escape_data(chr(10).join(lines))}"


def github_annotations(config: pytest.Config, reports: Sequence[pytest.TestReport]) -> List[str]:
    if os.environ.get("GITHUB_ACTIONS") != "true" or _is_worker(config):
        return []
    out = []
    for report in reports:
        data = getattr(report, "daemonexit", None)
        if isinstance(data, dict):
            line = github_annotation(report, data, config)
            if line is not None:
                out.append(line)
    return out
