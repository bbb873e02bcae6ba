"""The guide audit: run the whole suite and give one row per claim of the guide.

Each claim's row combines the results of every scenario that checked it (the
worst verdict wins) and says, in the guide's words and in RabbitMQ's terms:

- ``holds``: the guide's claim held;
- ``holds with a caveat``: it held, under a condition the guide does not state;
- ``false as stated``: the guide's words are false, but the invariant a release
  must keep held (e.g. duplicates that a crash explains: at-least-once delivery);
- ``VIOLATED``: the invariant itself failed: a bug in the worker;
- ``unknown``: the evidence to decide is missing.

The exit code follows the gated invariants (``DEFAULT_GATE``, or ``--gate``),
not the guide's wording.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.table import Table
from rich.text import Text

import harness
from harness import report, vocab
from harness.checkers.base import ClaimResult, Valid, observable, worst
from harness.junit import write_junit
from harness.options import OptionsError, RunOptions, RunOutcome, check_format, worker_identity
from harness.runner import run_scenario, suite_broker
from harness.scenario import backends_for, load_scenario, restarts_broker, scenarios_dir
from harness.signals import Interrupted
from harness.verdicts import (
    CLAIMS,
    DEFAULT_GATE,
    invariant_verdict,
    run_word,
    verdict_word,
)

SCENARIOS_DIR: Final = scenarios_dir()

# The suite, in running order: (scenario file, backends it can run on).
SUITE: Final = (
    "no-duplicates.yaml",
    "crash-recovery.yaml",
    "crash-after-process.yaml",
    "load-balancing.yaml",
    "retry-backoff.yaml",
    "dead-letter.yaml",
    "zombie-pause.yaml",
    "zombie-blackhole.yaml",
    "health-check.yaml",
    "graceful-shutdown.yaml",
    "partition-recovery.yaml",
    "concurrency.yaml",
    "linear-scaling.yaml",
    "broker-restart-quorum.yaml",
)


VERDICT_STYLES: Final = {
    "holds": "bold green", "holds with a caveat": "green", "false as stated": "bold magenta",
    "VIOLATED": "bold red", "unknown": "bold yellow",
}


@dataclass(frozen=True)
class ClaimRow:
    claim: str
    guide: str
    verdict: str
    guide_valid: Valid
    invariant_valid: Valid
    evidence: str
    why: str
    scenarios: tuple[str, ...]
    # False when no result of the claim could be observed with the worker's events.
    observable: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim, "guide": self.guide, "verdict": self.verdict,
                "guide_claim": vocab.word(self.guide_valid),
                "invariant": vocab.word(self.invariant_valid),
                "evidence": self.evidence, "why": self.why, "scenarios": list(self.scenarios),
                "observable": self.observable}


def _telling(results: list[tuple[str, ClaimResult]]) -> tuple[str, ClaimResult]:
    """The result that decides the row: the first false, else unknown, else true."""
    for want in (False, None, True):
        for name, r in results:
            if invariant_verdict(r) is want or (want is False and r.valid is False):
                return name, r
    return results[0]


def rows_from(outcomes: Sequence[RunOutcome], skipped: dict[str, str]) -> list[ClaimRow]:
    by_claim: dict[str, list[tuple[str, ClaimResult]]] = {}
    for o in outcomes:
        for r in o.results:
            by_claim.setdefault(r.claim, []).append((o.scenario.name, r))
    rows: list[ClaimRow] = []
    for claim_id, claim in CLAIMS.items():
        results = by_claim.get(claim_id, [])
        if not results:
            reason = skipped.get(claim_id, "no scenario of the suite checked it")
            rows.append(ClaimRow(claim_id, claim.guide, "unknown", None, None, reason,
                                 claim.why, ()))
            continue
        g = worst(r.valid for _, r in results)
        inv = worst(invariant_verdict(r) for _, r in results)
        name, decisive = _telling(results)
        evidence = f"[{name}] {decisive.summary}"
        why = claim.why
        if claim.caveat and g is True and inv is True:
            why = f"{why}; holds {claim.caveat}" if why else claim.caveat
        rows.append(ClaimRow(claim_id, claim.guide, verdict_word(claim_id, g, inv), g, inv,
                             evidence, why, tuple(n for n, _ in results),
                             any(observable(r) for _, r in results)))
    return rows


def exit_code(rows: Sequence[ClaimRow], gate: frozenset[str]) -> int:
    gated = [r.invariant_valid for r in rows if r.claim in gate]
    if any(v is False for v in gated):
        return 1
    if not gated or any(v is None for v in gated):
        return 2
    return 0


def render(console: Console, rows: Sequence[ClaimRow], gate: frozenset[str]) -> None:
    table = Table(title=Text("guide audit: one row per claim"), show_lines=True)
    table.add_column("claim", no_wrap=True)
    table.add_column("the guide says", overflow="fold", max_width=28)
    table.add_column("verdict", no_wrap=True)
    table.add_column("evidence", overflow="fold")
    table.add_column("why, in RabbitMQ's terms", overflow="fold", max_width=40)
    for r in rows:
        gated = " (gates)" if r.claim in gate else ""
        table.add_row(Text(r.claim + gated), Text(r.guide),
                      Text(r.verdict, style=VERDICT_STYLES[r.verdict]), Text(r.evidence),
                      Text(r.why))
    console.print(table)


def default_gate(rows: Sequence[ClaimRow]) -> tuple[frozenset[str], list[str]]:
    """``DEFAULT_GATE`` without the claims no scenario could observe with the
    worker's events (they stay ``unknown`` in their rows), and those claims."""
    unseen = sorted(r.claim for r in rows if r.claim in DEFAULT_GATE and r.scenarios
                    and not r.observable)
    return DEFAULT_GATE - set(unseen), unseen


def run_audit(opts: RunOptions, console: Console, gate: frozenset[str] | None,
              only: Sequence[str] | None = None, junit: Path | None = None) -> int:
    named = gate
    started = time.monotonic()
    started_at = time.time()
    outcomes: list[RunOutcome] = []
    skipped: dict[str, str] = {}
    try:
        with suite_broker(opts, console) as run_opts:
            for filename in SUITE:
                if only and not any(o in filename for o in only):
                    continue
                sc = load_scenario(SCENARIOS_DIR / filename)
                backends = backends_for(sc)  # from its faults (harness.vocab)
                if opts.backend not in backends:
                    for c in sc.claims:
                        skipped.setdefault(
                            c, f"{sc.name} needs --backend {' or '.join(backends)}")
                    console.print(f"[dim]skipping {sc.name}: needs --backend "
                                  f"{'/'.join(backends)}[/dim]")
                    continue
                if opts.broker_url and restarts_broker(sc):
                    for c in sc.claims:
                        skipped.setdefault(c, f"{sc.name} restarts the broker: it needs a "
                                           "broker of its own (no --broker-url)")
                    console.print(f"[dim]skipping {sc.name}: it restarts the broker, and "
                                  "--broker-url's broker is not the harness's[/dim]")
                    continue
                try:
                    check_format(sc, opts)
                except OptionsError as exc:
                    for c in sc.claims:
                        skipped.setdefault(c, f"{sc.name}: not with --format "
                                           f"{opts.task_format} (poison bodies)")
                    console.print(f"[dim]skipping {sc.name}: {exc}[/dim]")
                    continue
                outcomes.append(run_scenario(sc, run_opts, console))
                console.print()
    except Interrupted:
        console.print("interrupted: every process of the run was stopped")
        return 2
    rows = rows_from(outcomes, skipped)
    unseen: list[str] = []
    if named is None:
        gate, unseen = default_gate(rows)
    else:
        gate = named
    render(console, rows, gate)
    for claim in unseen:
        console.print(f"[dim]not gated: {claim} (not observable with this worker's events; "
                      "name it in --gate to require it)[/dim]")
    code = exit_code(rows, gate)
    elapsed = time.monotonic() - started
    word = run_word(code)
    console.print(f"audit: {word} on the gated invariants ({', '.join(sorted(gate))}) "
                  f"in {elapsed:.0f} s")
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / f"audit-{time.strftime('%Y%m%d-%H%M%S')}.json"
    payload = {
        "schema_version": report.RESULT_SCHEMA_VERSION,
        "harness_version": harness.__version__,
        "started_at": report.iso(started_at), "finished_at": report.iso(time.time()),
        "worker": worker_identity(opts),
        "broker": next((o.broker for o in outcomes if o.broker), None),
        "verdict": word, "exit_code": code, "elapsed_s": round(elapsed, 1),
        "backend": opts.backend, "gate": sorted(gate), "not_gated": unseen,
        "reporting": opts.reporting,
        "claims": [r.to_dict() for r in rows],
        "runs": [{"scenario": o.scenario.name, "run_dir": str(o.run_dir), "seed": o.seed,
                  "exit_code": o.exit_code, "rerun": o.rerun} for o in outcomes],
    }
    report.write_result_json(path, payload)
    console.print(f"audit report: {path}")
    try:
        from harness.htmlreport import write_audit_report

        console.print(f"audit page: {write_audit_report(path.with_suffix('.html'), payload)}")
    except Exception as exc:  # noqa: BLE001 - the verdict stands without its pictures
        console.print(f"[yellow]audit page not written: {type(exc).__name__}: {exc}[/yellow]")
    if junit is not None:
        write_junit(junit, outcomes, opts.backend, gate)
        console.print(f"junit: {junit}")
    return code


def markdown_summary(audit: dict[str, Any]) -> str:
    """The audit as Markdown (a CI job summary): the verdict, one row per claim,
    and each run's seed and rerun command."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    gate = set(audit.get("gate") or [])
    lines = [f"## harness audit: {cell(audit.get('verdict'))} "
             f"(exit {cell(audit.get('exit_code'))}, backend {cell(audit.get('backend'))})",
             "", "| claim | the guide says | verdict | invariant | gates | evidence |",
             "|---|---|---|---|---|---|"]
    for r in audit.get("claims", []):
        lines.append(f"| {cell(r.get('claim'))} | {cell(r.get('guide'))} | "
                     f"**{cell(r.get('verdict'))}** | {cell(r.get('invariant'))} | "
                     f"{'yes' if r.get('claim') in gate else ''} | "
                     f"{cell(r.get('evidence'))[:300]} |")
    for claim in audit.get("not_gated") or []:
        lines.append(f"\nnot gated: {cell(claim)} (not observable with this worker's events)")
    lines += ["", "| run | exit | seed | rerun |", "|---|---|---|---|"]
    for run in audit.get("runs", []):
        lines.append(f"| {cell(run.get('scenario'))} | {cell(run.get('exit_code'))} | "
                     f"{cell(run.get('seed'))} | `{cell(run.get('rerun'))}` |")
    return "\n".join(lines) + "\n"


def load_audit(path: Path) -> dict[str, Any]:
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data
