"""Detection power: run the suite's scenarios against each planted bug of the
reference worker (``WORKER_BUG=<name>``, see ``worker/bugs.py``) and against the
correct worker, and say which bugs the harness catches, by which claims.

A bug is *caught* when the claim named for it (``MUTANTS``) is violated: its
invariant verdict is ``false``. Other violated claims are listed too. The
correct worker must show no violation and no ``unknown`` (a false alarm).
``first_violation_s`` is when, from the run's start, the history marks the
first violation (an estimate: ``first_violation_s()``); ``time_to_verdict_s`` is the wall time
of the run that judged it, from the harness's start to the verdict.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness import report, vocab
from harness.checkers.base import ClaimResult, observable
from harness.history import History
from harness.model import REPORTING_MODES, Scenario
from harness.options import RunOptions, portable_rerun
from harness.runner import run_scenario, suite_broker
from harness.scenario import load_scenario, scenarios_dir
from harness.signals import Interrupted
from harness.verdicts import invariant_verdict

SCENARIOS_DIR: Final = scenarios_dir()


@dataclass(frozen=True)
class Mutant:
    bug: str
    scenario: str  # file in scenarios/
    claim: str  # the claim that must catch it
    why: str
    # The claim that must catch it with the minimal reporter (only received and
    # processed events), where that differs: per-task acks are not observable then.
    claim_minimal: str | None = None

    def claim_for(self, reporting: str) -> str:
        return self.claim_minimal if reporting == "minimal" and self.claim_minimal else self.claim


# One scenario per bug: the one whose faults or workload provoke it.
MUTANTS: Final[tuple[Mutant, ...]] = (
    Mutant("auto-ack", "crash-recovery.yaml", "no-loss",
           "auto-acked deliveries held by the killed worker are gone"),
    Mutant("ack-before-process", "crash-recovery.yaml", "no-loss",
           "tasks acked on receipt die with the killed worker"),
    Mutant("requeue-on-failure", "dead-letter.yaml", "dead-letter",
           "poison and failing tasks loop in the work queue, never reach the DLQ"),
    Mutant("no-dead-letter-exchange", "dead-letter.yaml", "dead-letter",
           "nacked tasks vanish: the queue has no dead-letter exchange"),
    Mutant("unlimited-prefetch", "scale-up-backlog.yaml", "even-distribution",
           "the first worker buffers the whole backlog; newcomers get nothing"),
    Mutant("no-backoff", "retry-backoff.yaml", "retry-backoff",
           "retries come back at once instead of after base*2^(k-1)"),
    Mutant("ack-before-republish", "retry-crash.yaml", "no-loss",
           "retries acked and held in memory die with the worker"),
    Mutant("no-reconnect", "health-check.yaml", "health-check",
           "after the broker restart the worker never consumes (nor is healthy) again"),
    Mutant("health-always-ok", "health-check.yaml", "health-check",
           "/healthcheck says 200 while the broker is gone"),
    Mutant("sigterm-acks-inflight", "graceful-shutdown.yaml", "graceful-shutdown",
           "SIGTERM acks in-flight tasks that were never processed"),
    Mutant("exclusive-consumer", "load-balancing.yaml", "even-distribution",
           "one exclusive consumer takes every task; the other pods get none"),
    Mutant("ignore-concurrency", "concurrency.yaml", "concurrency",
           "one task at a time whatever WORKER_CONCURRENCY says"),
    Mutant("dead-letter-on-redelivery", "crash-recovery.yaml", "no-loss",
           "a 'poison guard' dead-letters every redelivery: the killed pod's work is dropped"),
    Mutant("double-ack", "no-duplicates.yaml", "no-duplicate-processing",
           "an ack sent twice: the broker closes the channel (406) and redelivers all it held"),
    Mutant("fixed-delay-retry", "retry-backoff.yaml", "retry-backoff",
           "every retry waits the first tier's delay: fixed, not exponential"),
    Mutant("ack-and-drop-when-busy", "load-balancing.yaml", "no-loss",
           "acks and drops deliveries while its buffer is half full"),
    Mutant("never-ack-redelivered", "crash-recovery.yaml", "exactly-once-ack",
           "processes redelivered tasks but never acks them: held until the end"),
    Mutant("side-effect-every-attempt", "retry-backoff.yaml", "no-duplicate-processing",
           "the side effect runs before the transient failure: once per attempt"),
    Mutant("ignore-delivery-limit", "poison-crash-loop.yaml", "dead-letter",
           "no x-delivery-limit on the queue: the poison message crashes worker after "
           "worker and never reaches the DLQ"),
)

# The scenarios the correct worker runs (every scenario a mutant uses).
CONTROL_SCENARIOS: Final = tuple(dict.fromkeys(m.scenario for m in MUTANTS))


# A planted bug often leaves work that never drains (a poison task looping, a
# worker that never reconnects): waiting the scenario's full drain bound for it
# proves nothing more, so a mutant's drain is cut to this.
MUTANT_DRAIN_TIMEOUT_S: Final = 30.0


def with_bug(scenario: Scenario, bug: str | None) -> Scenario:
    if not bug:
        return scenario
    env = {**scenario.cluster.extra_env, "WORKER_BUG": bug}
    workload = dataclasses.replace(
        scenario.workload,
        drain_timeout_s=min(scenario.workload.drain_timeout_s, MUTANT_DRAIN_TIMEOUT_S))
    return dataclasses.replace(scenario, workload=workload,
                               cluster=dataclasses.replace(scenario.cluster, extra_env=env))


@dataclass
class Row:
    bug: str  # "(none)" for the correct worker
    scenario: str
    expected: str
    caught: bool
    violated: list[str]
    unknown: list[str]
    time_to_verdict_s: float
    run_dir: str
    rerun: str
    # Seconds from the run's start to the first violation on record (None: the
    # claim is a property of the whole run, decided at its end; see first_violation_s).
    first_violation_s: float | None = None
    reporting: str = "full"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def first_violation_s(history: History, violated: Sequence[ClaimResult]) -> float | None:
    """Seconds from the run's start to the moment the history marks for the
    earliest of the ``violated`` claims' violations: an estimate, not an exact time.

    A checker that pins the moment gives ``violated_at_ts`` (health: the bound
    that expired; exact). Otherwise it is read off the tasks the checker blames
    (the ids its ``*_ids`` evidence lists, at most ten each): each one's last
    sighting in the history, the earliest of those. For a lost task that is the
    last time it was seen intact (the loss comes at or soon after it: the worker
    holding it dies, or drops it); for a duplicate, its last settlement (at or
    after the second processing). None for a claim with neither (even
    distribution, concurrency: properties of the whole run, known at its end).
    Written here, not in the checkers: only the mutants table needs a time.
    """
    started = next((e.ts for e in history.of_type(vocab.RUN_STARTED)), None)
    if started is None:
        return None
    blamed: set[str] = set()
    moments: list[float] = []
    for r in violated:
        if r.violated_at_ts is not None:
            moments.append(r.violated_at_ts)
            continue
        for key, value in r.evidence.items():
            if key.endswith("_ids") and isinstance(value, list):
                blamed.update(v for v in value if isinstance(v, str))
    if blamed:
        last_seen: dict[str, float] = {}
        for e in history:
            if e.id in blamed:
                last_seen[e.id] = max(last_seen.get(e.id, e.ts), e.ts)
        moments.extend(last_seen.values())
    return round(max(0.0, min(moments) - started), 1) if moments else None


def _run(scenario: Scenario, bug: str | None, opts: RunOptions, console: Console,
         expected: str, reporting: str = "full") -> Row:
    started = time.monotonic()
    outcome = run_scenario(with_bug(scenario, bug),
                           dataclasses.replace(opts, reporting=reporting), console)
    elapsed = time.monotonic() - started
    violated = [r.claim for r in outcome.results if invariant_verdict(r) is False]
    # A claim the reporting mode cannot observe (exactly-once-ack without acked
    # events) is unknown by construction, not an alarm; it is never true either.
    unknown = [r.claim for r in outcome.results if invariant_verdict(r) is None
               and observable(r)]
    # The bundled scenarios: the report is read in a checkout, so the rerun names
    # them as a reader types them there, not by this machine's path.
    rerun = portable_rerun(outcome.rerun)
    rerun = rerun if not bug else f"WORKER_BUG={bug} {rerun}"
    first: float | None = None
    history_path = outcome.run_dir / "history.jsonl"
    if violated and history_path.is_file():
        first = first_violation_s(History.load(history_path),
                                  [r for r in outcome.results if r.claim in violated])
    return Row(bug or "(none)", scenario.name, expected, expected in violated, violated,
               unknown, round(elapsed, 1), str(outcome.run_dir), rerun, first, reporting)


def run_mutants(opts: RunOptions, console: Console, bugs: Sequence[str] | None = None,
                control: bool = True, reporting: Sequence[str] = REPORTING_MODES) -> int:
    """Exit 0: every selected bug caught by its claim, in every reporting mode, and
    no false alarm."""
    rows: list[Row] = []
    selected = [m for m in MUTANTS if not bugs or m.bug in bugs]
    try:
        with suite_broker(opts, console) as run_opts:
            for mode in reporting:
                if control:
                    for filename in CONTROL_SCENARIOS:
                        sc = load_scenario(SCENARIOS_DIR / filename)
                        rows.append(_run(sc, None, run_opts, console, "-", mode))
                for m in selected:
                    sc = load_scenario(SCENARIOS_DIR / m.scenario)
                    rows.append(_run(sc, m.bug, run_opts, console, m.claim_for(mode), mode))
    except Interrupted:
        console.print("interrupted: every process of the run was stopped")
        return 2
    render(console, rows)
    caught = sum(1 for r in rows if r.bug != "(none)" and r.caught)
    mutants = sum(1 for r in rows if r.bug != "(none)")
    alarms = [r for r in rows if r.bug == "(none)" and (r.violated or r.unknown)]
    console.print(f"caught {caught} of {mutants} planted bugs; false alarms on the correct "
                  f"worker: {len(alarms)} of {len(rows) - mutants} runs")
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / f"mutants-{time.strftime('%Y%m%d-%H%M%S')}.json"
    report.write_result_json(path, {"backend": opts.backend, "caught": caught,
                                    "mutants": mutants, "false_alarms": len(alarms),
                                    "rows": [r.to_dict() for r in rows]})
    console.print(f"mutants report: {path}")
    print_markdown(console, rows)
    return 0 if caught == mutants and not alarms else 1


def render(console: Console, rows: Sequence[Row]) -> None:
    table = Table(title=Text("planted bugs: caught by which claims"))
    for col in ("bug", "reporting", "scenario", "expected claim", "caught", "violated claims",
                "unknown", "violation seen at", "time to verdict"):
        table.add_column(col)
    for r in rows:
        if r.bug == "(none)":
            ok = not r.violated and not r.unknown
            verdict = Text("no alarm" if ok else "FALSE ALARM",
                           style="green" if ok else "bold red")
        else:
            verdict = Text("yes" if r.caught else "NO", style="green" if r.caught else "bold red")
        table.add_row(r.bug, r.reporting, r.scenario, r.expected, verdict,
                      ", ".join(r.violated) or "-", ", ".join(r.unknown) or "-", _first(r),
                      f"{r.time_to_verdict_s:.0f} s")
    console.print(table)


def _first(r: Row) -> str:
    if not r.violated:
        return "-"
    return "at the end" if r.first_violation_s is None else f"{r.first_violation_s:.1f} s"


def markdown(rows: Sequence[Row]) -> str:
    """One line per bug and scenario, a column pair per reporting mode: which
    claims caught it (or, for the correct worker, whether anything alarmed)."""
    modes = [m for m in REPORTING_MODES if any(r.reporting == m for r in rows)]
    head = "| bug | scenario | expected claim |" + "".join(
        f" {m}: caught | {m}: violated claims | {m}: seen at | {m}: time |" for m in modes)
    lines = [head, "|---|---|---|" + "---|---|---|---|" * len(modes)]
    keys = list(dict.fromkeys((r.bug, r.scenario) for r in rows))
    for bug, scenario in keys:
        cells: list[str] = []
        expected = ""
        for m in modes:
            r = next((x for x in rows if (x.bug, x.scenario, x.reporting) == (bug, scenario, m)),
                     None)
            if r is None:
                cells += ["-", "-", "-", "-"]
                continue
            expected = expected or r.expected
            if r.bug == "(none)":
                caught = "no alarm" if not r.violated and not r.unknown else "FALSE ALARM"
            else:
                caught = ("yes" if r.caught else "**no**") + (
                    f" ({r.expected})" if r.expected != expected else "")
            cells += [caught, ", ".join(r.violated) or "-", _first(r),
                      f"{r.time_to_verdict_s:.0f} s"]
        lines.append(f"| {bug} | {scenario} | {expected} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The README's table sits between these lines; `python scripts/readme_mutants.py
# REPORT.json` rewrites it from a report of `harness mutants` (tests check it).
README_BEGIN: Final = "<!-- mutants table: generated by scripts/readme_mutants.py -->"
README_END: Final = "<!-- end of mutants table -->"


def rows_from_report(data: Mapping[str, Any]) -> list[Row]:
    """The rows of a ``mutants-*.json`` report."""
    return [Row(**r) for r in data["rows"]]


def readme_with_table(readme: str, rows: Sequence[Row]) -> str:
    """``readme`` with the text between the markers replaced by the table."""
    try:
        head, rest = readme.split(README_BEGIN, 1)
        _, tail = rest.split(README_END, 1)
    except ValueError:
        raise ValueError(f"the README has no {README_BEGIN!r} ... {README_END!r} block") from None
    return f"{head}{README_BEGIN}\n{markdown(rows)}\n{README_END}{tail}"


def print_markdown(console: Console, rows: Sequence[Row]) -> None:
    console.print("markdown (for the README):")
    console.print(markdown(rows), markup=False, highlight=False, soft_wrap=True)
