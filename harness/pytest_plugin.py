"""The pytest plugin (entry point ``pytest11``: active wherever the package is
installed; ``-p no:harness`` turns it off). Documented in ``docs/pytest.md``.

- **Scenarios as test items.** ``--harness-scenarios DIR|FILE|suite`` (or the
  ini ``harness_scenarios``) collects scenario files; each becomes a collector
  whose items are its claims plus the invariants every run judges
  (``verdicts.judged_claims``), all sharing one run, made when the first of them
  runs. An item fails when its gated invariant is false, errors (or skips, with
  ``--harness-unknown skip``) when it is unknown, is skipped when the run's gate
  leaves it out. Seed, rerun command, run directory and backend are the item's
  ``user_properties`` (JUnit ``properties`` under every ``junit_family``).
- **Fixtures**: ``harness_options`` (the session's ``RunOptions``),
  ``harness_run`` (run a scenario, a file or a mapping, with overrides; returns a
  ``HarnessResult``), ``harness_broker`` (a broker container of the harness's
  image, ``harness.containers.HarnessBroker``).
- **pytest-xdist**: one scenario's items always go to one xdist worker, whatever
  ``--dist`` (``pytest_xdist_make_scheduler``); a timing-bound scenario (health,
  zombie, scaling, balance) takes an exclusive lock that the other runs of the
  session take shared, so it never shares the cores with another run. Each run
  has its own broker or vhost: no two xdist workers share a queue.

The verdicts are the harness's (``harness.verdicts``), not the plugin's: an item
reads its claim's ``ClaimResult`` and the gate, nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO, cast

import pytest

from harness import credentials, vocab
from harness.checkers.base import ClaimResult, observable
from harness.model import Scenario
from harness.options import (
    OptionsError,
    RunOptions,
    RunOutcome,
    build_options,
    check_format,
    parse_capabilities,
    parse_gate,
)
from harness.pytest_options import options_from, setting, unknown_mode
from harness.pytest_options import pytest_addoption as pytest_addoption
from harness.pytest_xdist import cores
from harness.pytest_xdist import pytest_xdist_make_scheduler as pytest_xdist_make_scheduler
from harness.scenario import ScenarioError
from harness.signals import Interrupted
from harness.verdicts import invariant_verdict, judged_claims

SUITE_WORD: Final = "suite"
EVIDENCE_MAX_CHARS: Final = 4000
# Claims whose checkers bound time (outages, windows, rates): their runs get the
# machine to themselves. Faults whose windows are judged likewise.
TIMING_CLAIMS: Final = frozenset({"health-check", "exactly-one-consumer", "linear-scaling",
                                  "even-distribution", "partition-recovery", "concurrency",
                                  "retry-backoff", "graceful-shutdown"})
TIMING_FAULTS: Final = frozenset({"pause", "blackhole", "partition", "reset"})
RUN_ITEM: Final = "run"  # the item that carries the run's own exit code


def timing_bound(sc: Scenario) -> bool:
    """Does the scenario judge a time bound (so its run needs the cores)?"""
    return bool(TIMING_CLAIMS & set(sc.claims)) or any(
        s.fault in TIMING_FAULTS for s in sc.schedule)

@dataclass
class _Session:
    """The plugin's state in one pytest process (the controller, or one xdist
    worker): the options, built once, and the shared broker of its docker runs."""

    config: pytest.Config
    scenario_paths: set[Path] = field(default_factory=set)
    _opts: RunOptions | None = None
    _suite: contextlib.ExitStack | None = None
    _suite_opts: RunOptions | None = None
    _suite_error: str | None = None

    def options(self) -> RunOptions:
        if self._opts is None:
            self._opts = options_from(self.config)
        return self._opts

    def run_options(self) -> RunOptions:
        """The options runs use: on docker with no broker of the user's, one broker
        for this process's runs, a vhost each (``runner.suite_broker``)."""
        from harness.cluster.base import ClusterError

        if self._suite_error is not None:
            raise ClusterError(self._suite_error)  # once is enough: no second 2-min wait
        if self._suite_opts is None:
            from rich.console import Console

            from harness.runner import suite_broker

            stack = contextlib.ExitStack()
            try:
                # The engine notices come at the session's end, after pytest's
                # summary: on stderr, which pytest no longer captures then.
                self._suite_opts = stack.enter_context(
                    suite_broker(self.options(), Console(stderr=True)))
            except ClusterError as exc:
                self._suite_error = f"the session's broker did not start: {exc}"
                raise ClusterError(self._suite_error) from None
            self._suite = stack
        return self._suite_opts

    def close(self) -> None:
        stack, self._suite = self._suite, None
        self._suite_opts = None
        if stack is not None:
            stack.close()


_SESSION: Final = pytest.StashKey[_Session]()


def _suite_files() -> list[Path]:
    from harness.audit import SCENARIOS_DIR, SUITE

    return [SCENARIOS_DIR / name for name in SUITE]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "harness_scenario(path): a scenario run's claim items")
    session = _Session(config)
    config.stash[_SESSION] = session
    config.add_cleanup(session.close)
    unknown_mode(config)
    named: list[Path] = []
    for value in config.getoption("harness_scenarios"):
        if value == SUITE_WORD:
            named.extend(_suite_files())
        else:
            path = Path(value)
            if not path.exists():
                raise pytest.UsageError(f"harness: --harness-scenarios {value}: no such file "
                                        "or directory (or 'suite' for the packaged suite)")
            named.append(path)
    from_ini = [Path(p) for p in config.getini("harness_scenarios")]
    session.scenario_paths = {p.resolve() for p in (*named, *from_ini)}
    if session.scenario_paths:
        opts = session.options()  # a wrong option is a usage error now, not 50 errors later
        if not hasattr(config, "workerinput"):
            # Resolved once, here: xdist hands the controller's options to its workers,
            # so no worker falls back to another backend on a slow engine ping.
            config.option.harness_backend = opts.backend
    # Named paths are collected like path arguments; the ini's only when pytest runs
    # without path arguments (so `pytest tests/test_x.py` runs just that file).
    extra = list(named)
    if from_ini and config.args_source != pytest.Config.ArgsSource.ARGS:
        extra.extend(from_ini)
    for p in extra:
        if str(p) not in config.args:
            config.args.append(str(p))


def _is_scenario(session: _Session, path: Path) -> bool:
    if path.suffix not in (".yaml", ".yml"):
        return False
    resolved = path.resolve()
    return any(resolved == p or resolved.is_relative_to(p) for p in session.scenario_paths)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    session = parent.config.stash.get(_SESSION, None)
    if session is None or not _is_scenario(session, file_path):
        return None
    return ScenarioFile.from_parent(parent, path=file_path,
                                    nodeid=_nodeid(parent.config, file_path))


def _nodeid(config: pytest.Config, path: Path) -> str:
    """The file's node id: relative to the rootdir as pytest's own, else the packaged
    suite's ``harness/scenarios/NAME`` or the absolute path (pytest would give a
    file outside the rootdir an empty id, and every claim item the same)."""
    from harness.scenario import scenarios_dir

    resolved = path.resolve()
    with contextlib.suppress(ValueError):
        return resolved.relative_to(config.rootpath.resolve()).as_posix()
    if resolved.parent == scenarios_dir().resolve():
        return f"harness/scenarios/{resolved.name}"
    return resolved.as_posix()


# --------------------------------------------------------------------------- items


class HarnessRunError(Exception):
    """The run could not be made (bad options, no engine, a harness failure)."""


class ClaimUndecided(Exception):
    """The claim's invariant is unknown: the evidence to decide is missing."""


class ClaimViolated(AssertionError):
    """The claim's invariant is false: the worker broke it."""


class ScenarioFile(pytest.File):
    """One scenario file: its items are its claims, sharing one run."""

    _outcome: RunOutcome | None = None
    _error: str | None = None
    _log: str = ""

    def collect(self) -> Iterator[ClaimItem]:
        from harness.scenario import load_scenario

        self.scenario = load_scenario(self.path)
        # The claims, then the run itself: its exit code is harness run's (0, 1 or
        # 2 with the same gate), so the items can never say less than the run.
        for claim in (*judged_claims(self.scenario.claims), RUN_ITEM):
            item = ClaimItem.from_parent(self, name=claim, claim=claim)
            item.add_marker(pytest.mark.harness_scenario(str(self.path)))
            yield item

    def repr_failure(  # type: ignore[override]
            self, excinfo: pytest.ExceptionInfo[BaseException]) -> str:
        if isinstance(excinfo.value, ScenarioError):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def outcome(self) -> RunOutcome:
        """The run, made once for all the file's items."""
        if self._outcome is None and self._error is None:
            self._run()
        if self._error is not None:
            raise HarnessRunError(self._error)
        assert self._outcome is not None
        return self._outcome

    def _run(self) -> None:
        from harness.cluster.base import ClusterError
        from harness.runner import run_scenario
        from harness.scenario import backends_for, restarts_broker

        session = self.config.stash[_SESSION]
        opts = session.options()
        sc = self.scenario
        # Not run is not passed (the audit exits 2 for such a claim): an error that
        # says what to do, never a skip that lets the session go green.
        if opts.backend not in backends_for(sc):
            self._error = (f"{sc.name} cannot run on --harness-backend {opts.backend}: it "
                           f"needs {' or '.join(backends_for(sc))} (or deselect it)")
            return
        if opts.broker_url and restarts_broker(sc):
            self._error = (f"{sc.name} restarts the broker: it needs a broker of its own "
                           "(drop --harness-broker-url, or deselect it)")
            return
        try:
            check_format(sc, opts)
        except OptionsError as exc:
            self._error = f"{exc} (or deselect it)"
            return
        buffer = io.StringIO()
        console = _console(buffer)
        try:
            with cores(exclusive=timing_bound(sc)):
                self._outcome = run_scenario(sc, session.run_options(), console)
        except (ScenarioError, ClusterError, OSError) as exc:
            self._error = f"{sc.name}: {credentials.redact(str(exc))}"
        except Exception as exc:  # noqa: BLE001 - a harness bug: every item errors, once
            self._error = credentials.redact(
                f"{sc.name}: internal error: {type(exc).__name__}: {exc}\n"
                f"{traceback.format_exc(limit=8)}")
        except Interrupted:
            # Ctrl-C (or SIGTERM): the run cleaned up; stop the session, as pytest would.
            raise KeyboardInterrupt from None
        finally:
            self._log = buffer.getvalue()


class ClaimItem(pytest.Item):
    """One claim of a scenario's run: pass, fail (invariant false), error or skip
    (unknown), skip (not gated)."""

    def __init__(self, *, claim: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.claim = claim

    @property
    def scenario_file(self) -> ScenarioFile:
        return cast(ScenarioFile, self.parent)

    def setup(self) -> None:
        outcome = self.scenario_file.outcome()
        for name, value in (("seed", outcome.seed), ("rerun", outcome.rerun),
                            ("run_dir", str(outcome.run_dir)),
                            ("backend", self.config.stash[_SESSION].options().backend)):
            self.user_properties.append((name, value))
        if self.claim == RUN_ITEM:
            self.user_properties.append(("exit_code", outcome.exit_code))
            if outcome.exit_code != 2:
                return  # 0 passes; 1 fails in runtest
            if not outcome.problems and unknown_mode(self.config) == "skip":
                pytest.skip("the run is undecided (exit 2), --harness-unknown skip")
            why = "; ".join(outcome.problems) or "a gated claim is unknown or not judged"
            self._attach_log()
            raise ClaimUndecided(credentials.redact(
                f"the run is undecided (exit 2): {why}\nrerun: {outcome.rerun}"))
        if not outcome.results:
            # A run that judged nothing never passes (nor skips): its problems say why.
            self._attach_log()
            raise HarnessRunError(credentials.redact(
                "no claim was judged: " + ("; ".join(outcome.problems)
                                           or "the run gave no result")))
        result = self._result(outcome)
        gate = self.config.stash[_SESSION].options().gate
        if result is None:
            if self.claim in self.scenario_file.scenario.claims or (
                    gate is not None and self.claim in gate):
                # Asked for (by the scenario or the gate) and not judged: undecided.
                self._attach_log()
                raise ClaimUndecided(credentials.redact(
                    f"{self.claim} was not judged; run problems: "
                    f"{'; '.join(outcome.problems) or 'none'}"))
            pytest.skip(f"{self.claim}: not judged (not observable with this worker's "
                        "events)")
        inv = invariant_verdict(result)
        self.user_properties.append(("invariant", vocab.word(inv)))
        self.user_properties.append(("guide_claim", vocab.word(result.valid)))
        gated = (self.claim in gate) if gate is not None else observable(result)
        if not gated:
            why = ("not in --harness-gate" if gate is not None
                   else "not observable with this worker's events")
            pytest.skip(credentials.redact(
                f"not gated ({why}); invariant {vocab.word(inv)}: {result.summary}"))
        if inv is None:
            text = _failure_text(result, outcome)
            # A skip for an unknown is the user's choice, but never for a run with
            # problems (a run that failed to observe is not "undecided by design").
            if unknown_mode(self.config) == "skip" and not outcome.problems:
                pytest.skip(credentials.redact(f"unknown: {result.summary}"))
            self._attach_log()
            raise ClaimUndecided(text)

    def runtest(self) -> None:
        outcome = self.scenario_file.outcome()
        if self.claim == RUN_ITEM:
            if outcome.exit_code == 1:
                self._attach_log()
                violated = [r.claim for r in outcome.results if invariant_verdict(r) is False]
                raise ClaimViolated(credentials.redact(
                    f"the run failed (exit 1): {', '.join(violated) or 'a gated invariant'} "
                    f"violated\nseed: {outcome.seed}\nrerun: {outcome.rerun}"))
            return
        result = self._result(outcome)
        assert result is not None  # setup skipped otherwise
        if invariant_verdict(result) is False:
            self._attach_log()
            raise ClaimViolated(_failure_text(result, outcome))

    def _result(self, outcome: RunOutcome) -> ClaimResult | None:
        return next((r for r in outcome.results if r.claim == self.claim), None)

    def _attach_log(self) -> None:
        log = self.scenario_file._log
        if log:
            self.add_report_section("call", "harness run", log)

    def repr_failure(
            self, excinfo: pytest.ExceptionInfo[BaseException],
            style: Any = None) -> str:
        if isinstance(excinfo.value, ClaimViolated | ClaimUndecided | HarnessRunError):
            kind = {ClaimViolated: "VIOLATED", ClaimUndecided: "unknown",
                    HarnessRunError: "run error"}[type(excinfo.value)]
            return f"{self.claim}: {kind}\n{excinfo.value}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.scenario_file.scenario.name}::{self.claim}"


def _failure_text(result: ClaimResult, outcome: RunOutcome) -> str:
    evidence = json.dumps(result.evidence, default=str, sort_keys=True)[:EVIDENCE_MAX_CHARS]
    lines = [result.summary, f"evidence: {evidence}"]
    lines += [f"run problem: {p}" for p in outcome.problems]
    lines += [f"seed: {outcome.seed}", f"rerun: {outcome.rerun}",
              f"run dir: {outcome.run_dir}"]
    return credentials.redact("\n".join(lines))


def _console(buffer: io.StringIO) -> Any:
    from rich.console import Console

    return Console(file=cast(TextIO, credentials.RedactingStream(buffer)), width=120,
                   highlight=False, force_terminal=False, color_system=None)


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class HarnessResult:
    """What ``harness_run`` gives back: the claims' results, the run's exit code
    (0 every gated invariant holds, 1 one violated, 2 undecided) and where it is."""

    outcome: RunOutcome
    claims: Mapping[str, ClaimResult]

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code

    @property
    def passed(self) -> bool:
        return self.outcome.exit_code == 0

    @property
    def run_dir(self) -> Path:
        return self.outcome.run_dir

    @property
    def history_path(self) -> Path:
        return self.outcome.run_dir / "history.jsonl"

    @property
    def seed(self) -> int:
        return self.outcome.seed

    @property
    def rerun(self) -> str:
        return self.outcome.rerun

    @property
    def problems(self) -> list[str]:
        return self.outcome.problems

    def invariant(self, claim: str) -> str:
        """``true``, ``false`` or ``unknown``; KeyError for a claim not judged."""
        return vocab.word(invariant_verdict(self.claims[claim]))

    def evidence(self, claim: str) -> dict[str, Any]:
        return dict(self.claims[claim].evidence)


@pytest.fixture(scope="session")
def harness_options(pytestconfig: pytest.Config) -> RunOptions:
    """The session's run options (``--harness-*`` and the ini)."""
    return pytestconfig.stash[_SESSION].options()


@pytest.fixture
def harness_run(request: pytest.FixtureRequest,
                harness_options: RunOptions) -> Callable[..., HarnessResult]:
    """``harness_run(scenario, *, workers=None, seed=None, params=None, gate=None,
    broker_url=None, reporting=None, capabilities=None)``: run a scenario (a path,
    or a mapping as in a scenario file) with the session's options and these
    overrides, and return a ``HarnessResult``. The run's seed, rerun command and
    directory become the test's ``user_properties``."""

    def run(scenario: str | Path | Mapping[str, Any], *, workers: int | None = None,
            seed: int | None = None, params: Mapping[str, Mapping[str, Any]] | None = None,
            gate: str | frozenset[str] | None = None, broker_url: str | None = None,
            reporting: str | None = None,
            capabilities: str | frozenset[str] | None = None) -> HarnessResult:
        from harness.runner import run_scenario
        from harness.scenario import (
            apply_overrides,
            check_backend,
            load_scenario,
            restarts_broker,
            scenario_from_dict,
        )

        sc = (scenario_from_dict(scenario) if isinstance(scenario, Mapping)
              else load_scenario(Path(scenario)))
        sc = apply_overrides(sc, workers)
        try:
            opts = build_options(
                **{**_fields(harness_options),
                   "seed": seed if seed is not None else harness_options.seed,
                   "gate": parse_gate(gate) if isinstance(gate, str) else
                   (gate if gate is not None else harness_options.gate),
                   "broker_url": broker_url or harness_options.broker_url,
                   "reporting": reporting or harness_options.reporting,
                   "capabilities": parse_capabilities(capabilities)
                   if isinstance(capabilities, str) else
                   (capabilities if capabilities is not None
                    else harness_options.capabilities),
                   "params": params or {}})
            check_format(sc, opts)
        except OptionsError as exc:
            raise pytest.UsageError(f"harness_run: {credentials.redact(str(exc))}") from None
        check_backend(sc, opts.backend)
        if opts.broker_url and restarts_broker(sc):
            raise pytest.UsageError(f"harness_run: {sc.name} restarts the broker; it needs a "
                                    "broker of its own (no broker_url)")
        buffer = io.StringIO()
        with cores(exclusive=timing_bound(sc)):
            outcome = run_scenario(sc, opts, _console(buffer))
        request.node.add_report_section("call", f"harness run {sc.name}", buffer.getvalue())
        for name, value in (("seed", outcome.seed), ("rerun", outcome.rerun),
                            ("run_dir", str(outcome.run_dir))):
            request.node.user_properties.append((name, value))
        return HarnessResult(outcome, {r.claim: r for r in outcome.results})

    return run


def _fields(opts: RunOptions) -> dict[str, Any]:
    """``build_options`` keywords from built options (a harness_run override's base):
    every field ``build_options`` takes (not the suite's shared broker, nor what
    only a command sets, such as explore's ``steps_optional``)."""
    import inspect

    takes = inspect.signature(build_options).parameters
    return {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name in takes}


@pytest.fixture(scope="session")
def harness_broker(pytestconfig: pytest.Config) -> Iterator[Any]:
    """A RabbitMQ container of the harness's image for the session (a
    ``harness.containers.HarnessBroker``: ``.url`` is a ``--broker-url``). Needs
    a Docker engine and ``harness images build``; testcontainers' reaper is off,
    the harness's sweep removes a dead session's container."""
    from harness.containers import BrokerStartError, HarnessBroker

    out = Path(setting(pytestconfig, "out") or "runs")
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # one log per xdist worker
    broker = HarnessBroker().with_log_dir(out / worker if worker else out)
    try:
        broker.start()
    except BrokerStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    except Exception as exc:  # noqa: BLE001 - no engine: say which and how to fix it
        pytest.fail(f"harness_broker needs a Docker engine ({type(exc).__name__}: {exc}); "
                    "start dockerd (scripts/setup.sh does) and build the images with "
                    "`harness images build --offline`", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()
