"""The terminal report, ``result.json`` and the live progress display (exit codes
live in ``harness.verdicts``).

- ``render_results(console, scenario_name, results, verdict)``: a table
  claim | guide's claim | invariant | summary | evidence, then one line per claim whose result has
  ``explained`` entries (what the faults explain: shown, not a violation), then
  the overall verdict.
- ``write_result_json(path, payload)``: atomic, strict JSON (NaN/inf become null).
- ``Progress``: published / processed / settled counters fed from history events;
  a rich live display on a terminal, a plain line every ``interval_s`` otherwise.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.text import Text

import harness
from harness import credentials, verdicts, vocab
from harness.checkers.base import ClaimResult, Valid
from harness.history import Event
from harness.model import Scenario
from harness.verdicts import invariant_verdict

VERDICT_STYLES: Final = {"true": "bold green", "false": "bold red", "unknown": "bold yellow"}

# Evidence cell limits.
EVIDENCE_SCALARS_MAX: Final = 6
EVIDENCE_LISTS_MAX: Final = 2
EVIDENCE_IDS_MAX: Final = 3
EVIDENCE_CHARS_MAX: Final = 160
# Keys never shown in the evidence cell (long, and in result.json anyway).
EVIDENCE_HIDDEN: Final = frozenset({"traceback"})


def _style(verdict: str) -> str:
    return VERDICT_STYLES.get(verdict, "bold yellow")


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    if value is None:
        return "-"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _ids(values: Iterable[Any], total: int) -> str:
    shown = [_scalar(v) for v in list(values)[:EVIDENCE_IDS_MAX]]
    more = f" +{total - len(shown)}" if total > len(shown) else ""
    return "[" + ", ".join(shown) + more + "]"


def compact(evidence: Mapping[str, Any], max_chars: int = EVIDENCE_CHARS_MAX) -> str:
    """``k=v`` of the counts first, then the first ids of up to two lists.

    Counts keep the checker's order (checkers put the telling ones first); a list
    or set shows its first ids and how many more; a nested mapping shows its size
    (``per_worker={5}``), or its items when it is small and flat.
    """
    scalars: list[str] = []
    lists: list[str] = []
    for key, value in evidence.items():
        if key in EVIDENCE_HIDDEN:
            continue
        if isinstance(value, list | tuple | set | frozenset):
            items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
            if len(lists) < EVIDENCE_LISTS_MAX and items:
                lists.append(f"{key}={_ids(items, len(items))}")
        elif isinstance(value, Mapping):
            flat = all(not isinstance(v, Mapping | list | tuple | set) for v in value.values())
            if flat and 0 < len(value) <= 5:
                inner = ", ".join(f"{k}:{_scalar(v)}" for k, v in value.items())
                scalars.append(f"{key}={{{inner}}}")
            else:
                scalars.append(f"{key}={{{len(value)}}}")
        elif len(scalars) < EVIDENCE_SCALARS_MAX:
            scalars.append(f"{key}={_scalar(value)}")
    text = " ".join(scalars[:EVIDENCE_SCALARS_MAX] + lists)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def render_results(console: Console, scenario_name: str, results: list[ClaimResult],
                   verdict: str) -> None:
    """Print the claims table, the explained lines and the overall verdict."""
    table = Table(title=Text(f"{scenario_name}: claims"), show_lines=False, expand=False)
    table.add_column("claim", no_wrap=True)
    table.add_column("guide's claim", no_wrap=True)
    table.add_column("invariant", no_wrap=True)
    table.add_column("summary", overflow="fold")
    table.add_column("evidence", overflow="fold", style="dim")
    for r in results:
        inv = _word(invariant_verdict(r))
        table.add_row(Text(r.claim), Text(r.verdict, style=_style(r.verdict)),
                      Text(inv, style=_style(inv)), Text(r.summary), Text(compact(r.evidence)))
    if not results:
        table.add_row(Text("-"), Text("unknown", style=_style("unknown")),
                      Text("unknown", style=_style("unknown")),
                      Text("no claim was checked"), Text(""))
    console.print(table)
    for r in results:
        if r.explained:
            line = Text("  explained ", style="cyan")
            line.append(f"{r.claim}: ", style="bold cyan")
            line.append(f"the faults explain {compact(r.explained)} (shown, not a violation)")
            console.print(line)
    final = Text("verdict: ")
    final.append(verdict, style=_style(verdict))
    final.append(f"  ({_tally(results)})")
    console.print(final)


def _word(valid: Valid) -> str:
    return vocab.word(valid)


def _tally(results: Iterable[ClaimResult]) -> str:
    counts = {"true": 0, "false": 0, "unknown": 0}
    for r in results:
        counts[r.verdict] += 1
    return ", ".join(f"{n} {v}" for v, n in counts.items())


def _clean(value: Any) -> Any:
    """JSON-ready: NaN/inf -> None, sets -> sorted lists, tuples -> lists, other -> str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return [_clean(v) for v in sorted(value, key=str)]
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, ClaimResult):
        return _clean(value.to_dict())
    return str(value)


def write_result_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(credentials.redact(json.dumps(_clean(payload), indent=2, allow_nan=False)))
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Progress:
    """Live published / processed / settled counters.

    ``on_event`` is a Recorder listener (called under the recorder's lock), so it
    only bumps integers; a daemon thread turns them into output: a rich progress
    display when the console is a terminal, else a plain line at most every
    ``interval_s`` seconds, and only when a count changed. ``published`` counts
    confirmed publishes, ``processed`` every processed event (redeliveries
    included, so it can pass the total), ``settled`` acks of processed tasks and
    dead-letterings.
    """

    def __init__(self, console: Console | None = None, interval_s: float = 5.0,
                 refresh_s: float = 0.25) -> None:
        self.console = console or Console()
        self.interval_s = max(0.5, float(interval_s))
        self.refresh_s = max(0.05, float(refresh_s))
        self.total = 0
        self.published = 0
        self.publish_failed = 0
        self.publish_unknown = 0
        self.processed = 0
        self.settled = 0
        self.faults = 0
        self._t0 = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rich: RichProgress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._last_line: tuple[int, ...] | None = None

    @property
    def live(self) -> bool:
        return self.console.is_terminal

    def start(self, total: int) -> None:
        if self._thread is not None:
            return
        self.total = max(0, int(total))
        self._t0 = time.monotonic()
        self._stop.clear()
        if self.live:
            self._rich = RichProgress(
                TextColumn("{task.description:>10}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            for name in ("published", "processed", "settled"):
                self._tasks[name] = self._rich.add_task(name, total=self.total or None)
            self._rich.start()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()

    def on_event(self, event: Event) -> None:
        kind = event.type
        if kind == vocab.PROCESSED:
            self.processed += 1
        elif kind == vocab.ACKED:
            if event.get("reason", "processed") != "retry":
                self.settled += 1
        elif kind == vocab.DEAD_LETTERED:
            self.settled += 1
        elif kind == vocab.PUBLISH:
            outcome = event.get("outcome")
            if outcome == "ok":
                self.published += 1
            elif outcome == "fail":
                self.publish_failed += 1
            else:
                self.publish_unknown += 1
        elif kind == vocab.FAULT and event.get("phase", "invoke") == "invoke":
            self.faults += 1

    def stop(self) -> None:
        """Stop the thread and show the final counts (idempotent)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._thread = None
        if self._rich is not None:
            self._push()
            self._rich.stop()
            self._rich = None
        else:
            self._print_line(force=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---- output

    def _loop(self) -> None:
        wait = self.refresh_s if self._rich is not None else self.interval_s
        while not self._stop.wait(wait):
            if self._rich is not None:
                self._push()
            else:
                self._print_line(force=False)

    def _push(self) -> None:
        rich = self._rich
        if rich is None:
            return
        for name, value in (("published", self.published), ("processed", self.processed),
                            ("settled", self.settled)):
            rich.update(self._tasks[name], completed=value)

    def line(self) -> str:
        total = self.total or "?"
        extra = []
        if self.publish_failed or self.publish_unknown:
            extra.append(f"publish failed {self.publish_failed} unknown {self.publish_unknown}")
        if self.faults:
            extra.append(f"faults {self.faults}")
        tail = f" ({'; '.join(extra)})" if extra else ""
        elapsed = time.monotonic() - self._t0
        return (f"progress: published {self.published}/{total} processed {self.processed}/"
                f"{total} settled {self.settled}/{total}{tail} after {elapsed:.0f}s")

    def _print_line(self, force: bool) -> None:
        state = (self.published, self.publish_failed, self.publish_unknown, self.processed,
                 self.settled, self.faults)
        if not force and state == self._last_line:
            return
        self._last_line = state
        self.console.print(Text(self.line()), soft_wrap=True)


# Bumped when a field of result.json changes meaning or goes away (adding one
# does not bump it).
RESULT_SCHEMA_VERSION: Final = 1


def result_payload(scenario: Scenario, run_id: str, seed: int, backend: str,
                   results: list[ClaimResult], code: int, problems: list[str], rerun: str,
                   gate: Iterable[str] | None, started_at: float | None = None,
                   worker: Mapping[str, Any] | None = None,
                   broker: Mapping[str, Any] | None = None,
                   notes: Iterable[str] = ()) -> dict[str, Any]:
    """The content of a run's ``result.json`` (``harness/schemas/result.schema.json``).
    ``broker``: the broker's semantics as observed (``BrokerAdmin.semantics``),
    None when the run ended before it could be read; ``notes``: where an
    orchestrator changed a fault's meaning (``harness.replacements``)."""
    return {
        "schema_version": RESULT_SCHEMA_VERSION,
        "harness_version": harness.__version__,
        "started_at": iso(started_at) if started_at is not None else None,
        "finished_at": iso(time.time()),
        "worker": dict(worker or {}),
        "scenario": scenario.name,
        "scenario_path": scenario.path,
        "run_id": run_id,
        "seed": seed,
        "backend": backend,
        "verdict": verdicts.run_word(code),
        "exit_code": code,
        "problems": problems,
        "rerun": rerun,
        "not_gated": verdicts.not_gated(results, gate),
        "claims": [{**r.to_dict(), "invariant": vocab.word(invariant_verdict(r))}
                   for r in results],
        "params": scenario.params,
        "broker": dict(broker) if broker is not None else None,
        **({"notes": list(notes)} if notes else {}),
    }


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
