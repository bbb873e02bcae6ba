"""``harness show RUN_DIR``: a recorded run in the terminal.

- without options: one lane per worker (its processings as a bar over the run's
  time, faults on it marked), then the faults in order;
- ``--task ID``: that task's whole story, from the history alone: its publish,
  every delivery (worker, redelivered, attempt), processing, settlement, the
  faults that hit a worker while it held the task, and what the final read of
  the queues found;
- ``--worker NAME``: that worker's events in order.

Pure functions of the history (``lane``, ``task_story``); ``show`` prints them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness import vocab
from harness.history import Event, History

LANE_WIDTH: Final = 72
STORY_MAX: Final = 500  # events shown for one task or worker at most
TASK_EVENTS: Final = frozenset({
    vocab.PUBLISH, vocab.RECEIVED, vocab.PROCESSED, vocab.ACKED, vocab.FAILED,
    vocab.RETRY_SCHEDULED, vocab.DEAD_LETTERED, vocab.ACK_FAILED,
})


def _describe(ev: Event) -> str:
    data = {k: v for k, v in (ev.data or {}).items()
            if k in ("outcome", "redelivered", "attempt", "reason", "delay_ms", "fault",
                     "target", "phase", "ok", "code", "requested", "error", "role", "depth")}
    return ", ".join(f"{k}={v}" for k, v in data.items())


def task_story(history: History, ident: str) -> list[tuple[float, str, str, str]]:
    """(ts, source, what, detail) of everything that concerns task ``ident``: its
    own events, the faults and exits of a worker while it held the task, and
    the final read of the queue that still had it."""
    own = sorted((e for e in history if e.id == ident and e.type in TASK_EVENTS),
                 key=lambda e: e.ts)
    held: list[tuple[str, float, float]] = []  # worker, from receipt to its settlement
    for e in own:
        if e.type == vocab.RECEIVED and e.worker:
            end = next((s.ts for s in own if s.ts >= e.ts and s.worker == e.worker
                        and s.type in (vocab.ACKED, vocab.DEAD_LETTERED, vocab.ACK_FAILED)),
                       float("inf"))
            held.append((e.worker, e.ts, end))
    story = [(e.ts, e.source, e.type, _describe(e)) for e in own]
    for e in history:
        if e.type == vocab.FAULT and e.get("phase", "invoke") == "invoke":
            target = str(e.get("target") or e.worker or "")
            if any(w == target and lo <= e.ts <= hi for w, lo, hi in held) or target == "broker":
                story.append((e.ts, e.source, f"fault {e.get('fault')}", _describe(e)))
        elif e.type == vocab.WORKER_EXITED and any(w == e.worker and lo <= e.ts <= hi
                                                   for w, lo, hi in held):
            story.append((e.ts, "cluster", "worker exited", f"{e.worker}: {_describe(e)}"))
        elif e.type == vocab.FINAL_QUEUE and ident in (e.get("ids") or ()):
            story.append((e.ts, "harness", "final read", f"still in {e.get('queue')}"))
    story.sort(key=lambda x: x[0])
    return story[:STORY_MAX]


def lane(history: History, worker: str, t0: float, t1: float,
         width: int = LANE_WIDTH) -> str:
    """One worker's processings over [t0, t1]: ``#`` where it processed, ``x``
    where a fault hit it, ``.`` idle, ``|`` where it exited."""
    cells = ["."] * width
    span = max(t1 - t0, 1e-9)

    def at(ts: float) -> int:
        return min(width - 1, max(0, int((ts - t0) / span * width)))

    for e in history:
        if e.worker == worker and e.type == vocab.PROCESSED:
            cells[at(e.ts)] = "#"
    for e in history:
        if e.type == vocab.FAULT and str(e.get("target")) == worker \
                and e.get("phase", "invoke") == "invoke":
            cells[at(e.ts)] = "x"
        elif e.type == vocab.WORKER_EXITED and e.worker == worker:
            cells[at(e.ts)] = "|"
    return "".join(cells)


def show(run_dir: Path, console: Console, task: str | None = None,
         worker: str | None = None) -> int:
    history = History.load(run_dir / "history.jsonl")
    events = list(history)
    if not events:
        console.print(f"{run_dir}: the history is empty")
        return 2
    t0 = min(e.ts for e in events)
    if task is not None:
        story = task_story(history, task)
        if not story:
            console.print(f"no event of task {task!r} in {run_dir}")
            return 2
        table = Table(title=Text(f"task {task}"))
        for col in ("t (s)", "source", "what", "detail"):
            table.add_column(col, overflow="fold")
        for ts, source, what, detail in story:
            table.add_row(f"{ts - t0:.3f}", source, what, detail)
        console.print(table)
        return 0
    if worker is not None:
        mine = [e for e in events if e.worker == worker or e.source == worker
                or str(e.get("target")) == worker][:STORY_MAX]
        if not mine:
            console.print(f"no event of worker {worker!r} in {run_dir}")
            return 2
        table = Table(title=Text(f"worker {worker}"))
        for col in ("t (s)", "type", "task", "detail"):
            table.add_column(col, overflow="fold")
        for e in mine:
            table.add_row(f"{e.ts - t0:.3f}", e.type, e.id or "", _describe(e))
        console.print(table)
        return 0
    t1 = max(e.ts for e in events)
    workers = sorted({e.worker for e in events if e.worker and e.type == vocab.WORKER_STARTED})
    console.print(f"{run_dir.name}: {t1 - t0:.1f} s, {len(events)} events "
                  "(# processed, x fault, | exit, . idle)")
    for w in workers:
        n = sum(1 for e in events if e.worker == w and e.type == vocab.PROCESSED)
        console.print(f"{w:>12} {lane(history, w, t0, t1)} {n}")
    for e in history.of_type(vocab.FAULT):
        console.print(f"  {e.ts - t0:8.3f} s  fault {_describe(e)}")
    return 0
