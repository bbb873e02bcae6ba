"""Where an orchestrator changed a fault's meaning, said in words for the run's
result: a pure function of the history.

On the swarm backend a task whose HEALTHCHECK fails during a lasting fault is
replaced by swarm, so the fault does not end as scheduled (for a pause: in a
zombie's return, the paused worker resuming with the tasks the broker gave to
others): it ends as a crash of that task. (A paused container is not probed on
Docker 20.10.24, so a pause itself stays a zombie there.) The backend
records this itself (``harness.cluster.swarm``: a ``fault`` event with phase
``heal`` and ``via: replaced`` when a slot's new task starts during the fault,
and the ``worker_started`` of the new task with ``replaces``), from the engine's
task records and events, never from the worker. The claims judge what happened;
these notes say why a scenario written for a zombie may read differently here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from harness import vocab
from harness.history import Event

# What each lasting fault would have ended in without the replacement.
_WOULD_HAVE: Final = {
    "pause": "the paused worker's return (a zombie finishing tasks the broker had "
             "given to others)",
}
NOTES_MAX: Final = 20  # a run with more replacements says how many were left out


def notes(events: Iterable[Event]) -> list[str]:
    """One line per lasting fault that ended because its task was replaced."""
    began: dict[tuple[str, str], float] = {}
    out: list[str] = []
    total = 0
    for ev in events:
        if ev.type != vocab.FAULT:
            continue
        fault, target = str(ev.get("fault")), str(ev.get("target"))
        phase = ev.get("phase", "invoke")
        if phase == "invoke" and ev.get("ok") is True:
            began[(fault, target)] = ev.ts
        elif phase == "heal" and ev.get("via") == "replaced":
            total += 1
            if len(out) >= NOTES_MAX:
                continue
            since = began.pop((fault, target), None)
            into = f" {ev.ts - since:.1f} s into it" if since is not None else ""
            would = _WOULD_HAVE.get(fault, f"the {fault}'s heal")
            out.append(f"{target}: the orchestrator replaced the task during its {fault}"
                       f"{into}: the {fault} ended as a crash of that task, not as {would}")
    if total > len(out):
        out.append(f"... and {total - len(out)} more faults ended by a replacement")
    return out
