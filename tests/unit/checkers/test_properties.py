"""Hypothesis properties of the checkers on generated valid histories (no broker)."""

from __future__ import annotations

from dataclasses import dataclass

from histories import H
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.checkers import exactly_once_ack, no_duplicate, no_loss
from harness.history import Event, History


@dataclass
class Run:
    events: list[Event]
    ids: list[str]
    workers: list[str]

    def history(self) -> History:
        return History(list(self.events))


@st.composite
def valid_runs(draw: st.DrawFn) -> Run:
    """Confirmed tasks, each received, processed and acked once; final queues empty.

    Worker events of different tasks interleave in a drawn order, with drawn gaps.
    """
    n = draw(st.integers(min_value=1, max_value=30))
    n_workers = draw(st.integers(min_value=1, max_value=4))
    workers = [f"worker-{i + 1}" for i in range(n_workers)]
    tasks = [f"t{i}" for i in range(n)]
    assign = draw(st.lists(st.sampled_from(workers), min_size=n, max_size=n))
    h = H()
    h.run_started()
    for w in workers:
        h.worker_started(w)
    for t in tasks:
        h.publish(t)
    # Each task's three steps in order; tasks interleave by a drawn schedule.
    step = dict.fromkeys(tasks, 0)
    pending = list(tasks)
    while pending:
        i = draw(st.integers(min_value=0, max_value=len(pending) - 1))
        t = pending[i]
        w = assign[tasks.index(t)]
        h.now += draw(st.floats(min_value=0.001, max_value=0.5))
        s = step[t]
        if s == 0:
            h.received(t, w)
        elif s == 1:
            h.processed(t, w)
        else:
            h.acked(t, w)
            pending.pop(i)
        step[t] = s + 1
    h.finish()
    return Run(h.events, tasks, workers)


def _processed_index(run: Run, ident: str) -> int:
    return next(i for i, e in enumerate(run.events)
                if e.type == "processed" and e.id == ident)


def _ts_of(run: Run, type_: str, ident: str, nth: int = 0) -> float:
    return [e for e in run.events if e.type == type_ and e.id == ident][nth].ts


@settings(max_examples=60, deadline=None)
@given(valid_runs())
def test_valid_history_holds(run: Run) -> None:
    h = run.history()
    assert no_loss.check(h, {}).valid is True
    assert exactly_once_ack.check(h, {}).valid is True
    r = no_duplicate.check(h, {})
    assert r.valid is True and r.evidence["invariant_holds"] is True


@settings(max_examples=60, deadline=None)
@given(valid_runs(), st.data())
def test_removing_a_processing_loses_the_task(run: Run, data: st.DataObject) -> None:
    ident = data.draw(st.sampled_from(run.ids))
    del run.events[_processed_index(run, ident)]
    r = no_loss.check(run.history(), {})
    assert r.valid is False
    assert r.evidence["lost"] == 1 and r.evidence["lost_ids"] == [ident]


def _duplicate(run: Run, ident: str, worker: str, gap_s: float) -> tuple[float, float]:
    """Append a second delivery of ``ident`` to ``worker`` after the run's events: a
    redelivery, so of the attempt that was processed (a redelivery keeps it)."""
    last_worker_ts = max(e.ts for e in run.events if e.source not in ("harness",))
    t_received = last_worker_ts + gap_s
    attempt = run.events[_processed_index(run, ident)].get("attempt", 1)
    run.events.append(Event("received", worker, ts=t_received, id=ident, worker=worker,
                            data={"redelivered": True, "attempt": attempt}))
    run.events.append(Event("processed", worker, ts=t_received + 0.01, id=ident,
                            worker=worker, data={"attempt": attempt}))
    return _ts_of(run, "processed", ident), t_received


@settings(max_examples=60, deadline=None)
@given(valid_runs(), st.data())
def test_duplicate_without_fault_is_unexplained(run: Run, data: st.DataObject) -> None:
    ident = data.draw(st.sampled_from(run.ids))
    worker = data.draw(st.sampled_from(run.workers))
    _duplicate(run, ident, worker, data.draw(st.floats(min_value=0.01, max_value=5.0)))
    r = no_duplicate.check(run.history(), {})
    assert r.valid is False
    assert r.evidence["unexplained"] >= 1 and r.evidence["invariant_holds"] is False
    assert ident in r.evidence["unexplained_ids"]


@settings(max_examples=60, deadline=None)
@given(valid_runs(), st.data())
def test_kill_between_the_processings_explains_the_duplicate(run: Run,
                                                              data: st.DataObject) -> None:
    ident = data.draw(st.sampled_from(run.ids))
    first_worker = next(e.worker for e in run.events if e.type == "processed" and e.id == ident)
    assert first_worker is not None
    again_worker = data.draw(st.sampled_from(run.workers))
    first_ts, again_ts = _duplicate(run, ident, again_worker,
                                    data.draw(st.floats(min_value=0.02, max_value=5.0)))
    frac = data.draw(st.floats(min_value=0.0, max_value=1.0))
    kill_ts = first_ts + frac * (again_ts - first_ts)
    # The kill came after the side effect and before the ack (else the broker had the
    # ack and redelivered nothing): the first worker's ack of ``ident`` never happened.
    run.events[:] = [e for e in run.events
                     if not (e.type == "acked" and e.id == ident and e.worker == first_worker)]
    run.events.append(Event("fault", "nemesis", ts=kill_ts,
                            data={"fault": "kill", "target": first_worker, "phase": "invoke",
                                  "ok": True}))
    r = no_duplicate.check(run.history(), {})
    assert r.evidence["unexplained"] == 0 and r.evidence["invariant_holds"] is True
    assert r.valid is False  # the guide's "no duplicates" is still false as worded
    assert r.explained["ids"] == [ident]
