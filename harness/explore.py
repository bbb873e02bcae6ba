"""``harness explore SCENARIO``: generated fault schedules, each run for real and
judged by the invariants; the first schedule that breaks one is shrunk to a
minimal one, its reproduction rate measured, and both kept as scenario files that
``harness run`` accepts as they are.

The scenario gives the cluster and the workload; its schedule, if any, is the
first example. Schedules are drawn whole and up front with Hypothesis strategies
(``schedule_strategy``): a list of steps, each a trigger (after a quiet stretch of
seconds, after k more tasks processed, when a worker holds at least k unacked), a
fault of ``--faults`` (each schedule from a subset of its own: swarm testing), a
target (busiest, random, one, or the previous step's worker) and, for a fault that lasts,
a duration, so every lasting fault heals; the total faulted time is bounded. The
cluster's state enters only through the triggers (and the schedule's own guards),
so a schedule replays as the same schedule.

Hypothesis drives the search (``Phase.reuse`` tries the failures its example
database kept for this scenario first, then ``Phase.generate``) over a verdict
cache: a real broker and real workers are not deterministic, and a schedule
Hypothesis asks for again must get the verdict it got, or Hypothesis raises
``Flaky``. Its shrinker is not used: it has a wall-clock limit of its own, cannot
budget real runs, and needs a deterministic test. ``shrink`` is a delta-debugging
shrinker of the project's own over the step list (fewer steps, earlier triggers,
shorter faults, the simplest target), under an explicit budget of runs, and a
candidate counts as failing only when most of its ``--reruns`` runs fail.

Bounds: ``--examples`` (1..EXAMPLES_MAX), ``--time-budget-s`` (an example is not
started past it), ``--max-steps`` (1..MAX_STEPS), durations up to
``MAX_DURATION_S``, at most ``MAX_FAULTED_S`` of faulted time a schedule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from harness import vocab
from harness.model import Scenario, Step, When

EXAMPLES_MAX: Final = 1000
MAX_STEPS: Final = 8
TIME_BUDGET_MAX_S: Final = 24 * 3600.0
MAX_AFTER_S: Final = 15.0
MAX_DURATION_S: Final = 12.0
MAX_FAULTED_S: Final = 30.0
# A trigger waits this long at most (then the step is recorded as not fired).
TRIGGER_TIMEOUT_S: Final = 30.0
# "last": the worker(s) of the step before (never a first step's, nor after the
# broker's restart): a bug that needs one worker hit twice (two reconnects within
# one task) is out of reach of independent draws among three workers.
TARGETS: Final = ("busiest", "random", "one", "last")
# Runs of one candidate schedule: it counts as failing only when most of them fail
# (real brokers and workers are not deterministic).
RERUNS_DEFAULT: Final = 3
RERUNS_MAX: Final = 9
SHRINK_RUNS_DEFAULT: Final = 24
SHRINK_RUNS_MAX: Final = 500
RATE_RUNS_DEFAULT: Final = 5
MIN_AFTER_S: Final = 0.5
MIN_DURATION_S: Final = 0.5
# The faults explore draws by default: those of one worker that a backend runs
# (``vocab.FAULT_KINDS``), the broker's restart, and no housekeeping (heal, resume,
# scale: its count needs the cluster's size, a later step).
EXPLORABLE: Final = ("kill", "terminate", "pause", "restart", "close-connections",
                     "partition", "blackhole", "reset", "broker-restart")


class ExploreError(ValueError):
    """Bad explore options; ``str()`` is one line that says what to do."""


@dataclass(frozen=True)
class Bounds:
    """What a generated schedule may hold."""

    faults: tuple[str, ...]
    max_steps: int = 3
    tasks: int = 100
    concurrency: int = 10
    max_after_s: float = MAX_AFTER_S
    max_duration_s: float = MAX_DURATION_S
    max_faulted_s: float = MAX_FAULTED_S

    def __post_init__(self) -> None:
        if not self.faults:
            raise ExploreError("--faults: name at least one fault")
        unknown = [f for f in self.faults if f not in EXPLORABLE]
        if unknown:
            raise ExploreError(f"--faults {unknown[0]}: not a fault explore draws; use "
                               f"{', '.join(EXPLORABLE)}")
        if not 1 <= self.max_steps <= MAX_STEPS:
            raise ExploreError(f"--max-steps must be 1..{MAX_STEPS}")


def faults_for(backend: str, broker_owned: bool, wanted: Sequence[str] | None) -> tuple[str, ...]:
    """The faults to draw: ``wanted`` (each checked), else every explorable fault the
    backend runs (no broker restart on a broker the harness does not own)."""
    usable = tuple(f for f in EXPLORABLE if vocab.unsupported(f, backend) is None
                   and (broker_owned or f != "broker-restart"))
    if wanted is None:
        return usable
    for f in wanted:
        if f not in EXPLORABLE:
            raise ExploreError(f"--faults {f}: not a fault explore draws; use "
                               f"{', '.join(EXPLORABLE)}")
        if f not in usable:
            why = vocab.unsupported(f, backend) or "the broker is not the harness's own"
            raise ExploreError(f"--faults {f}: {why}")
    return tuple(dict.fromkeys(wanted))


def schedule_strategy(bounds: Bounds) -> Any:
    """A Hypothesis strategy of whole schedules (tuples of ``model.Step``)."""
    from hypothesis import strategies as st

    lasting = {n for n, k in vocab.FAULT_KINDS.items() if k.lasting}
    whens = st.one_of(
        st.builds(When, after_s=st.floats(0.5, bounds.max_after_s).map(lambda v: round(v, 1)),
                  timeout_s=st.just(TRIGGER_TIMEOUT_S)),
        # Counted from the previous step's firing: all steps together within half the
        # tasks, so every trigger can fire.
        st.builds(When, processed=st.integers(1, max(1, bounds.tasks // (2 * bounds.max_steps))),
                  timeout_s=st.just(TRIGGER_TIMEOUT_S)),
        st.builds(When, holding_unacked=st.integers(1, max(1, bounds.concurrency)),
                  timeout_s=st.just(TRIGGER_TIMEOUT_S)),
    )

    @st.composite
    def step(draw: Any, kinds: tuple[str, ...], after: Step | None) -> Step:
        fault = draw(st.sampled_from(kinds))
        when = draw(whens)
        if fault == "broker-restart":
            return Step(when=when, fault=fault)  # the broker: no worker target
        duration = (round(draw(st.floats(0.5, bounds.max_duration_s)), 1)
                    if fault in lasting else None)
        targets = (TARGETS if after is not None and after.fault != "broker-restart"
                   else tuple(t for t in TARGETS if t != "last"))
        return Step(when=when, fault=fault, target=draw(st.sampled_from(targets)),
                    duration_s=duration)

    @st.composite
    def schedule(draw: Any) -> tuple[Step, ...]:
        # Swarm testing (Groce et al., ISSTA 2012): each schedule draws from a subset
        # of the faults of its own, so some schedules repeat one kind, which a bug
        # that needs the same fault twice wants, and no kind crowds out the others.
        kinds = tuple(draw(st.lists(st.sampled_from(bounds.faults), min_size=1,
                                    max_size=len(bounds.faults), unique=True)))
        n = draw(st.integers(1, bounds.max_steps))
        steps: list[Step] = []
        for _ in range(n):
            steps.append(draw(step(kinds, steps[-1] if steps else None)))
        return tuple(steps)

    return schedule().filter(lambda steps: faulted_s(steps) <= bounds.max_faulted_s)


def faulted_s(steps: Sequence[Step]) -> float:
    """The schedule's time under a lasting fault (durations summed)."""
    return sum(s.duration_s or 0.0 for s in steps)


def step_dict(step: Step) -> dict[str, Any]:
    """One step as the scenario file writes it."""
    when: dict[str, Any] = {}
    for key in ("after_s", "processed", "holding_unacked"):
        value = getattr(step.when, key)
        if value is not None:
            when[key] = value
    when["timeout_s"] = step.when.timeout_s
    out: dict[str, Any] = {"when": when, "fault": step.fault}
    if vocab.FAULT_KINDS[step.fault].broker_level is False:
        out["target"] = step.target
    if step.duration_s is not None:
        out["duration_s"] = step.duration_s
    if step.count is not None:
        out["count"] = step.count
    return out


def schedule_key(steps: Sequence[Step]) -> str:
    """A schedule's identity (its steps as written), for the verdict cache."""
    text = json.dumps([step_dict(s) for s in steps], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe(steps: Sequence[Step]) -> str:
    """One line: ``kill busiest after 10 processed; pause random 3.5 s after 2.0 s``."""
    parts = []
    for s in steps:
        w = s.when
        trigger = (f"after {w.after_s:g} s" if w.after_s is not None else
                   f"after {w.processed} processed" if w.processed is not None else
                   f"when holding {w.holding_unacked} unacked")
        lasting = f" {s.duration_s:g} s" if s.duration_s is not None else ""
        target = "" if vocab.FAULT_KINDS[s.fault].broker_level else f" {s.target}"
        parts.append(f"{s.fault}{target}{lasting} {trigger}")
    return "; ".join(parts) or "no fault"


def write_scenario(source: Path, scenario: Scenario, steps: Sequence[Step], out: Path,
                   name: str) -> Path:
    """The source scenario file with ``steps`` as its schedule and ``name`` as its
    name, at ``out``: a file ``harness run`` accepts as it is (checked by loading it
    back)."""
    from harness.scenario import load_scenario

    raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ExploreError(f"{source}: not a scenario mapping")
    raw["name"] = name
    raw["description"] = (f"Found by harness explore from {scenario.name}: "
                          f"{describe(steps)}.")
    raw["schedule"] = [step_dict(s) for s in steps]
    if not steps:
        raw.pop("schedule")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    load_scenario(out)  # ScenarioError if the harness would not run it
    return out


@dataclass
class Example:
    """One schedule run for real: its verdict (exit code) and where it is."""

    steps: tuple[Step, ...]
    exit_code: int
    violated: tuple[str, ...]  # the gated claims whose invariant was false
    run_dir: Path | None
    scenario_file: Path
    faults_injected: int
    fault_kinds: frozenset[str] = frozenset()  # the faults that fired
    evidence: dict[str, str] = dataclasses.field(default_factory=dict)  # claim -> summary
    rerun: str = ""  # the harness run command of this very run (its seed)
    error: str | None = None  # the run could not be made (the harness's own failure)


@dataclass
class Exploration:
    examples: list[Example] = dataclasses.field(default_factory=list)
    found: Example | None = None
    stopped_by_budget: bool = False
    interrupted: bool = False
    search_s: float = 0.0  # the search's wall time
    found_after_s: float | None = None  # from the search's start to the first violation

    @property
    def faults_injected(self) -> int:
        return sum(e.faults_injected for e in self.examples)

    @property
    def fault_kinds(self) -> set[str]:
        return {k for e in self.examples for k in e.fault_kinds}


# A runner of one schedule: (scenario file, steps) -> the example.
RunOne = Callable[[Path, tuple[Step, ...]], Example]


@dataclass
class LiveLine:
    """The line ``explore`` prints before each run, so a person (or a CI log) can
    follow it: the phase, examples run, faults injected, the best failure so far
    (the smallest failing schedule seen) and, while shrinking, the shrink step."""

    examples: int  # the search's bound
    shrink_runs: int
    budget_s: float
    started: float = dataclasses.field(default_factory=time.monotonic)
    ran: int = 0  # search examples run
    faults: int = 0
    kinds: set[str] = dataclasses.field(default_factory=set)
    best: Example | None = None
    phase: str = "search"  # "search", "shrink" (confirm and shrink), "rate"
    later_runs: int = 0  # runs of the shrink and the rate

    def seen(self, ex: Example) -> None:
        if self.phase == "search":
            self.ran += 1
        else:
            self.later_runs += 1
        self.faults += ex.faults_injected
        self.kinds |= ex.fault_kinds
        if ex.violated and (self.best is None or len(ex.steps) < len(self.best.steps)):
            self.best = ex

    def line(self, next_steps: tuple[Step, ...]) -> str:
        minutes = (time.monotonic() - self.started) / 60.0
        where = {"search": f"example {self.ran + 1} of <={self.examples}",
                 "shrink": f"shrink run {self.later_runs + 1} of <={self.shrink_runs}",
                 }.get(self.phase, f"reproduction run {self.later_runs + 1}")
        best = (f"{describe(self.best.steps)} [{', '.join(self.best.violated)}]"
                if self.best is not None else "none yet")
        kinds = f" ({', '.join(sorted(self.kinds))})" if self.kinds else ""
        return (f"explore | {where} | {self.faults} fault(s) injected{kinds} | best failure: "
                f"{best} | {minutes:.1f} of {self.budget_s / 60.0:.0f} min | next: "
                f"{describe(next_steps)}")


class _Stop(Exception):
    """Raised inside the Hypothesis test: stop the search (a violation, Ctrl-C).
    The verdict is cached, so a replay Hypothesis makes raises it again, never runs."""


def database_key(scenario: Scenario, bounds: Bounds) -> bytes:
    """Where the failures of one scenario under one set of bounds are kept."""
    text = json.dumps({"scenario": scenario.name, "bounds": dataclasses.asdict(bounds)},
                      sort_keys=True, default=str)
    return b"rmq-harness-explore:" + hashlib.sha256(text.encode()).hexdigest().encode()


def encode_steps(steps: Sequence[Step]) -> bytes:
    return json.dumps([step_dict(s) for s in steps], sort_keys=True).encode()


def decode_steps(raw: bytes) -> tuple[Step, ...] | None:
    """A kept schedule, or None when it no longer reads (a changed format)."""
    try:
        items = json.loads(raw)
        out = []
        for d in items:
            when = When(**{k: v for k, v in d["when"].items()
                           if k in ("after_s", "processed", "holding_unacked", "timeout_s")})
            out.append(Step(when=when, fault=str(d["fault"]), target=str(d.get("target", "one")),
                            duration_s=d.get("duration_s"), count=d.get("count")))
        return tuple(out)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def explore(source: Path, scenario: Scenario, bounds: Bounds, run_one: RunOne, *,
            examples: int, time_budget_s: float, seed: int, out_dir: Path,
            database_dir: Path | None, clock: Callable[[], float] = time.monotonic
            ) -> Exploration:
    """Run up to ``examples`` schedules until one breaks an invariant or the time
    budget is spent: the failures kept for this scenario and these bounds first,
    then the scenario's own schedule, then generated ones.

    The failures are kept in Hypothesis's example database (``database_dir``) under
    a key of the scenario and the bounds, written and read by this function only:
    Hypothesis's own use of it would delete a kept failure that one replay did not
    reproduce (a real run is not deterministic) or that the budget skipped. Each
    schedule runs once; a replay Hypothesis asks for gets the cached verdict. A run
    that raises is an example with an error (no verdict), never a failure; Ctrl-C
    stops the search and is raised again after it."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis.database import DirectoryBasedExampleDatabase

    from harness.signals import Interrupted

    if not 1 <= examples <= EXAMPLES_MAX:
        raise ExploreError(f"--examples must be 1..{EXAMPLES_MAX}")
    if not 0 < time_budget_s <= TIME_BUDGET_MAX_S:
        raise ExploreError(f"--time-budget-s must be in (0, {TIME_BUDGET_MAX_S:g}]")
    result = Exploration()
    cache: dict[str, Example] = {}
    started = clock()
    deadline = started + time_budget_s
    n = 0
    interrupt: list[Interrupted] = []

    def judge(steps: tuple[Step, ...]) -> Example | None:
        nonlocal n
        key = schedule_key(steps)
        if key in cache:
            return cache[key]
        if interrupt or clock() >= deadline or n >= examples:
            result.stopped_by_budget = result.stopped_by_budget or clock() >= deadline
            return None
        n += 1
        path = out_dir / f"example-{n:03d}.yaml"
        write_scenario(source, scenario, steps, path, f"{scenario.name}-explore-{n:03d}")
        try:
            ex = run_one(path, steps)
        except Interrupted as exc:
            interrupt.append(exc)
            result.interrupted = True
            return None
        except Exception as exc:  # noqa: BLE001 - the harness's failure: no verdict, said
            ex = Example(steps, vocab.EXIT_UNDECIDED, (), None, path, 0,
                         error=f"{type(exc).__name__}: {exc}")
        cache[key] = ex
        result.examples.append(ex)
        return ex

    def found(ex: Example | None) -> bool:
        if ex is not None and ex.violated:
            result.found = ex
            result.found_after_s = clock() - started
            return True
        return False

    db = DirectoryBasedExampleDatabase(str(database_dir)) if database_dir is not None else None
    dbkey = database_key(scenario, bounds)
    kept = [k for k in (decode_steps(raw) for raw in sorted(db.fetch(dbkey))) if k] if db else []
    for steps in [*kept, *([tuple(scenario.schedule)] if scenario.schedule else [])]:
        if found(judge(steps)):
            break
    if result.found is None and not interrupt:

        @settings(max_examples=examples, deadline=None, database=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                  report_multiple_bugs=False)
        @hseed(seed)
        @given(schedule_strategy(bounds))
        def search(steps: tuple[Step, ...]) -> None:
            ex = judge(steps)
            if found(ex) or interrupt:
                raise _Stop(schedule_key(steps))

        with contextlib.suppress(_Stop):
            search()
    result.search_s = clock() - started
    if interrupt:
        raise interrupt[0]
    if db is not None and result.found is not None:
        db.save(dbkey, encode_steps(result.found.steps))
    return result


def keep_failure(database_dir: Path | None, scenario: Scenario, bounds: Bounds,
                 steps: Sequence[Step]) -> None:
    """Keep ``steps`` (the minimal schedule) with the scenario's failures."""
    if database_dir is None:
        return
    from hypothesis.database import DirectoryBasedExampleDatabase

    DirectoryBasedExampleDatabase(str(database_dir)).save(database_key(scenario, bounds),
                                                           encode_steps(steps))


# -- the command ---------------------------------------------------------------------------

def explore_gate(scenario: Scenario, gate: frozenset[str] | None) -> frozenset[str]:
    """The invariants a schedule is judged by: the user's ``--gate``, else the safety
    invariants every run judges (``verdicts.ALWAYS_JUDGED``) and, where the scenario
    names them, redelivery-after-crash and dead-letter. Not the scenario's other
    claims: concurrency, distribution and scaling measure a fault-free run."""
    from harness.verdicts import ALWAYS_JUDGED

    if gate is not None:
        return gate
    return frozenset(ALWAYS_JUDGED) | (
        frozenset(scenario.claims) & {"redelivery-after-crash", "dead-letter"})


def run_explore(source: Path, scenario: Scenario, bounds: Bounds, opts: Any, console: Any,
                *, examples: int, time_budget_s: float, seed: int,
                shrink_runs: int = SHRINK_RUNS_DEFAULT, reruns: int = RERUNS_DEFAULT,
                rate_runs: int = RATE_RUNS_DEFAULT) -> int:
    """``harness explore``: the search on real runs (one broker for all on docker,
    a vhost each), then the found schedule confirmed and shrunk (``shrink``, at most
    ``shrink_runs`` runs, a majority of ``reruns`` each) and its reproduction rate
    measured (``rate_runs`` fresh runs), all within ``time_budget_s``; its report,
    and the exit code: 1 when a schedule broke a gated invariant (``explore_gate``),
    0 when none did, 2 when no example ran to a verdict."""
    import random
    import shlex

    from harness.options import portable_rerun
    from harness.runner import run_scenario, suite_broker
    from harness.scenario import load_scenario
    from harness.signals import Interrupted
    from harness.verdicts import invariant_verdict

    if not 0 <= rate_runs <= RERUNS_MAX * 2:
        raise ExploreError(f"--rate-runs must be 0..{RERUNS_MAX * 2}")
    shrink((), lambda s: False, budget_runs=shrink_runs, reruns=reruns)  # checks both
    gate = explore_gate(scenario, opts.gate)
    deadline = time.monotonic() + time_budget_s
    out_root = opts.out / f"explore-{time.strftime('%Y%m%d-%H%M%S')}-{scenario.name}"
    out_root.mkdir(parents=True, exist_ok=True)
    database_dir = opts.out / ".explore-db"
    rng = random.Random(seed)
    console.print(f"[bold]explore {scenario.name}[/bold]  seed={seed}  backend={opts.backend}  "
                  f"faults={','.join(bounds.faults)}  max steps={bounds.max_steps}  "
                  f"examples<={examples}  budget={time_budget_s:g} s  "
                  f"invariants={','.join(sorted(gate))}  out={out_root}")
    shrunk: Shrunk | None = None
    rate: tuple[int, int] | None = None
    later: list[Example] = []  # the runs of the confirmation, the shrink and the rate
    interrupted = False
    live = LiveLine(examples, shrink_runs, time_budget_s)
    with suite_broker(opts, console) as run_opts:
        def run_one(path: Path, steps: tuple[Step, ...]) -> Example:
            sc = load_scenario(path)
            one = dataclasses.replace(run_opts, seed=rng.randrange(2**32), out=out_root,
                                      progress=False, steps_optional=True)
            console.print(f"[bold]{live.line(steps)}[/bold]")
            outcome = run_scenario(sc, one, console)
            bad = {r.claim: r.summary for r in outcome.results
                   if r.claim in gate and invariant_verdict(r) is False}
            fired, kinds = _faults_fired(outcome.run_dir)
            ex = Example(steps, outcome.exit_code, tuple(sorted(bad)), outcome.run_dir, path,
                         fired, kinds, bad, outcome.rerun)
            live.seen(ex)
            return ex

        result = explore(source, scenario, bounds, run_one, examples=examples,
                         time_budget_s=time_budget_s, seed=seed, out_dir=out_root,
                         database_dir=database_dir)
        if result.found is not None:
            found = result.found

            def fails(steps: tuple[Step, ...]) -> bool:
                n = len(later) + 1
                path = out_root / f"shrink-{n:03d}.yaml"
                write_scenario(source, scenario, steps, path, f"{scenario.name}-shrink-{n:03d}")
                ex = run_one(path, steps)
                later.append(ex)
                return bool(set(ex.violated) & set(found.violated))  # the same invariant

            console.print(f"[bold]confirming and shrinking[/bold] {describe(found.steps)} "
                          f"(at most {shrink_runs} runs, a majority of {reruns} each)")
            try:
                live.phase = "shrink"
                shrunk = shrink(found.steps, fails, budget_runs=shrink_runs, reruns=reruns,
                                failed_once=True,
                                should_stop=lambda: time.monotonic() >= deadline)
                if shrunk.confirmed and rate_runs and time.monotonic() < deadline:
                    live.phase = "rate"
                    rate = reproduction_rate(shrunk.steps, fails, rate_runs)
            except Interrupted:
                interrupted = True
    console.print()
    for i, ex in enumerate(result.examples, 1):
        word = ("FAIL" if ex.violated else "PASS" if ex.exit_code == vocab.EXIT_OK
                else "ERROR" if ex.error else "UNKNOWN")
        where = ex.error or str(ex.run_dir)
        console.print(f"  {i:3d}. {word:7s} {describe(ex.steps)}  ({where})")
    rerun = ["harness", "explore", portable_rerun(str(source)), "--seed", str(seed),
             "--examples", str(examples), "--max-steps", str(bounds.max_steps),
             "--faults", ",".join(bounds.faults), "--time-budget-s", f"{time_budget_s:g}"]
    tail = result.examples[0].rerun.partition(f"--backend {opts.backend}")[2] \
        if result.examples and result.examples[0].rerun else ""
    console.print(f"rerun the search: {shlex.join(rerun)} --backend {opts.backend}{tail}")
    if result.found is None:
        ran = len(result.examples)
        decided = [e for e in result.examples if e.exit_code == vocab.EXIT_OK]
        budget = " (the time budget ended the search)" if result.stopped_by_budget else ""
        console.print(f"no violation in {ran} example(s){budget} ({result.faults_injected} "
                      f"fault(s) injected, {len(result.fault_kinds)} distinct fault kind(s): "
                      f"{', '.join(sorted(result.fault_kinds)) or 'none'}); "
                      f"{ran - len(decided)} undecided")
        written = write_summary(out_root, scenario, seed, opts.backend, bounds, result,
                                None, None, None)
        console.print(f"summary: {written}")
        _report(out_root, None, console)
        return vocab.EXIT_OK if decided else vocab.EXIT_UNDECIDED
    found = result.found
    minimal: Path | None = None
    timeline_run: Path | None = found.run_dir  # the minimal's failing run, once there is one
    kept = out_root / f"{scenario.name}-found.yaml"
    write_scenario(source, scenario, found.steps, kept, f"{scenario.name}-found")
    console.print(f"[red]violated[/red]: {', '.join(found.violated)} by the schedule: "
                  f"{describe(found.steps)}")
    for claim, summary in found.evidence.items():
        console.print(f"  {claim}: {summary}")
    console.print(f"  scenario: {kept}  (its run: {found.run_dir})")
    console.print(f"  rerun that run: {found.rerun}")
    if interrupted:
        console.print("[yellow]interrupted while confirming or shrinking: the schedule above "
                      "is the one found[/yellow]")
    elif shrunk is not None and shrunk.confirmed is not True:
        why = ("the budget ended before a majority of runs" if shrunk.confirmed is None
               else "it did not fail again in a majority of runs: a flaky failure")
        console.print(f"[yellow]not confirmed[/yellow]: {why} ({shrunk.runs_used} runs)")
    elif shrunk is not None:
        minimal = out_root / f"{scenario.name}-minimal.yaml"
        write_scenario(source, scenario, shrunk.steps, minimal, f"{scenario.name}-minimal")
        keep_failure(database_dir, scenario, bounds, shrunk.steps)
        how = ("the budget ended it" if shrunk.exhausted
               else "no simpler schedule fails in most of its runs")
        console.print(f"[bold]minimal[/bold]: {describe(shrunk.steps)}  "
                      f"({len(found.steps)} -> {len(shrunk.steps)} step(s); "
                      f"{shrunk.runs_used} runs, {shrunk.tried} candidates; {how})")
        if rate is not None:
            console.print(f"  reproduces {rate[0]} of {rate[1]} fresh runs")
        console.print(f"  scenario: {minimal}")
        run_tail = found.rerun.partition(" --seed ")[2].partition(" ")[2]
        console.print(f"  run it again: {shlex.join(['harness', 'run', str(minimal)])} "
                      f"{run_tail}".rstrip())
        key = schedule_key(shrunk.steps)
        runs = [e for e in later if schedule_key(e.steps) == key
                and set(e.violated) & set(found.violated)]
        if runs:
            console.print(f"  a failing run of it: {runs[-1].run_dir}")
            timeline_run = runs[-1].run_dir
    written = write_summary(out_root, scenario, seed, opts.backend, bounds, result, shrunk,
                            rate, minimal)
    console.print(f"summary: {written}")
    _report(out_root, timeline_run, console)
    return vocab.EXIT_VIOLATED


def _report(out_root: Path, timeline_run: Path | None, console: Any) -> None:
    """``explore.html``: a presentation, so a failure to draw it is said and changes
    no verdict."""
    from harness.htmlreport import write_explore_report

    try:
        console.print(f"report: {write_explore_report(out_root, timeline_run)}")
    except Exception as exc:  # noqa: BLE001 - the search's result stands without its page
        console.print(f"[yellow]explore.html not written: {type(exc).__name__}: {exc}[/yellow]")


SUMMARY_FILE: Final = "explore.json"


def write_summary(out_root: Path, scenario: Scenario, seed: int, backend: str,
                  bounds: Bounds, result: Exploration, shrunk: Shrunk | None,
                  rate: tuple[int, int] | None, minimal: Path | None) -> Path:
    """``explore.json`` in the search's directory: what the console printed, for a CI
    step or a benchmark to read (``benchmarks/bench_explore.py``)."""
    def one(ex: Example) -> dict[str, Any]:
        return {"schedule": describe(ex.steps), "steps": [step_dict(s) for s in ex.steps],
                "exit_code": ex.exit_code, "violated": list(ex.violated),
                "faults_injected": ex.faults_injected, "fault_kinds": sorted(ex.fault_kinds),
                "run_dir": str(ex.run_dir) if ex.run_dir else None, "error": ex.error}

    doc: dict[str, Any] = {
        "scenario": scenario.name, "seed": seed, "backend": backend,
        "faults": list(bounds.faults), "max_steps": bounds.max_steps,
        "examples": [one(e) for e in result.examples],
        "search_s": round(result.search_s, 3),
        "faults_injected": result.faults_injected,
        "fault_kinds": sorted(result.fault_kinds),
        "found": one(result.found) if result.found else None,
        "found_after_s": (round(result.found_after_s, 3)
                          if result.found_after_s is not None else None),
        "shrink": None if shrunk is None else {
            "confirmed": shrunk.confirmed, "runs_used": shrunk.runs_used,
            "candidates": shrunk.tried, "exhausted": shrunk.exhausted,
            "schedule": describe(shrunk.steps), "steps": len(shrunk.steps)},
        "reproduces": list(rate) if rate else None,
        "minimal_scenario": str(minimal) if minimal else None,
    }
    path = out_root / SUMMARY_FILE
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


def _faults_fired(run_dir: Path) -> tuple[int, frozenset[str]]:
    """The fault invocations a run recorded (ok) and their kinds, from its history."""
    path = run_dir / "history.jsonl"
    n, kinds = 0, set()
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if '"type":"fault"' not in line:
                    continue
                ev = json.loads(line)
                if ev.get("phase", "invoke") == "invoke" and ev.get("ok") is True:
                    n += 1
                    kinds.add(str(ev.get("fault")))
    except (OSError, ValueError):
        return 0, frozenset()
    return n, frozenset(kinds)


# -- shrinking ---------------------------------------------------------------------------------



def simpler(steps: tuple[Step, ...]) -> list[tuple[Step, ...]]:
    """The candidates one step simpler than ``steps``, most aggressive first: a step
    fewer (``_without``); then per step an earlier trigger (half the seconds, half the count), a
    shorter fault (half the duration), the simplest target (``one``). Each candidate
    is strictly smaller in (steps, trigger values, durations, target), so shrinking
    ends."""
    out: list[tuple[Step, ...]] = []
    for i in range(len(steps)):
        out.append(_without(steps, i))
    for i, s in enumerate(steps):
        w = s.when
        variants: list[Step] = []
        if w.after_s is not None and w.after_s > MIN_AFTER_S:
            variants.append(dataclasses.replace(s, when=dataclasses.replace(
                w, after_s=max(MIN_AFTER_S, round(w.after_s / 2, 1)))))
        if w.processed is not None and w.processed > 1:
            variants.append(dataclasses.replace(s, when=dataclasses.replace(
                w, processed=max(1, w.processed // 2))))
        if w.holding_unacked is not None and w.holding_unacked > 1:
            variants.append(dataclasses.replace(s, when=dataclasses.replace(
                w, holding_unacked=max(1, w.holding_unacked // 2))))
        if s.duration_s is not None and s.duration_s > MIN_DURATION_S:
            variants.append(dataclasses.replace(
                s, duration_s=max(MIN_DURATION_S, round(s.duration_s / 2, 1))))
        if s.target not in ("one", "broker") and not vocab.FAULT_KINDS[s.fault].broker_level:
            variants.append(dataclasses.replace(s, target="one"))
        out.extend((*steps[:i], v, *steps[i + 1:]) for v in variants)
    return out


def _without(steps: tuple[Step, ...], i: int) -> tuple[Step, ...]:
    """``steps`` without step ``i``. A next step that targeted its worker (``last``)
    takes its target word (``one``, ``busiest``, ...; resolved again when it fires):
    left as ``last``, it would name the step before, or after a dropped first step
    nobody, so it would never be taken and the candidate's runs would test a
    schedule with a step fewer still."""
    rest = list(steps[:i] + steps[i + 1:])
    gone = steps[i]
    if (i + 1 < len(steps) and steps[i + 1].target == "last"
            and not vocab.FAULT_KINDS[gone.fault].broker_level):
        rest[i] = dataclasses.replace(steps[i + 1], target=gone.target)
    return tuple(rest)


@dataclass
class Shrunk:
    """The smallest schedule found that still fails in most of its runs."""

    steps: tuple[Step, ...]
    runs_used: int
    tried: int
    # Every run of a schedule: key -> verdicts (True: it failed).
    outcomes: dict[str, list[bool]] = dataclasses.field(default_factory=dict)
    exhausted: bool = False  # the budget (runs or time) ended the shrink
    # The schedule given failed in most of its runs (None: the budget ran out first).
    confirmed: bool | None = None


def shrink(steps: tuple[Step, ...], fails: Callable[[tuple[Step, ...]], bool], *,
           budget_runs: int, reruns: int = RERUNS_DEFAULT, failed_once: bool = False,
           should_stop: Callable[[], bool] = lambda: False) -> Shrunk:
    """Delta debugging of the project's own (not Hypothesis's shrinker, which has a
    wall-clock limit of its own, cannot budget real runs and raises ``Flaky`` when a
    replay disagrees): first the schedule given must fail in a majority of
    ``reruns`` runs (``failed_once``: its first run, the search's, counts), else it
    is reported unconfirmed and not shrunk; then take the first simpler candidate
    (``simpler``) that fails by majority, and start again from it, until none does,
    ``budget_runs`` runs are spent or ``should_stop`` says the time is up. The
    schedule returned always failed by majority, unless ``confirmed`` is not True.
    ``fails`` runs a schedule once for real."""
    if not 1 <= reruns <= RERUNS_MAX or reruns % 2 == 0:
        raise ExploreError(f"--reruns must be odd, 1..{RERUNS_MAX}")
    if not 0 <= budget_runs <= SHRINK_RUNS_MAX:
        raise ExploreError(f"--shrink-runs must be 0..{SHRINK_RUNS_MAX}")
    result = Shrunk(steps, 0, 0)
    need = reruns // 2 + 1
    if failed_once:
        result.outcomes[schedule_key(steps)] = [True]

    def majority(candidate: tuple[Step, ...]) -> bool | None:
        """True/False by majority, None when the budget ran out first."""
        runs = result.outcomes.setdefault(schedule_key(candidate), [])
        while runs.count(True) < need and runs.count(False) < need:
            if result.runs_used >= budget_runs or should_stop():
                return None
            result.runs_used += 1
            runs.append(fails(candidate))
        return runs.count(True) >= need

    result.confirmed = majority(steps)
    if result.confirmed is not True:
        result.exhausted = result.confirmed is None
        return result
    current = steps
    while True:
        progressed = False
        for candidate in simpler(current):
            result.tried += 1
            verdict = majority(candidate)
            if verdict is None:
                result.exhausted = True
                result.steps = current
                return result
            if verdict:
                current = candidate
                progressed = True
                break
        if not progressed:
            result.steps = current
            return result


def reproduction_rate(steps: tuple[Step, ...], fails: Callable[[tuple[Step, ...]], bool],
                      runs: int) -> tuple[int, int]:
    """(failed, runs) of ``runs`` fresh runs of ``steps``."""
    failed = sum(1 for _ in range(runs) if fails(steps))
    return failed, runs
