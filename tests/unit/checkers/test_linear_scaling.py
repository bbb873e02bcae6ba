"""linear-scaling: throughput per phase grows with the number of workers."""

from __future__ import annotations

import pytest
from histories import (
    W1,
    H,
    start,
)

from harness.checkers import (
    scaling,
)

# -- linear-scaling ---------------------------------------------------------------

def scaling_history(rates: dict[int, float], tasks: int = 2000, phase_s: float = 8.0,
                    ready_delay_s: float | None = None) -> H:
    """Phases of N workers (keys) each processing at ``rates[N]`` tasks/s overall."""
    counts = list(rates)
    h = start(workers=counts[0], concurrency=1)
    for i in range(tasks):
        h.publish(f"t{i}", ts=1000.5)
    h.add("publish_started", "harness", ts=1000.0, tasks=tasks)
    t = 1000.0
    n = 0
    for p, count in enumerate(counts):
        p_start = t
        if p:
            h.fault("scale", "cluster", ts=t, count=count)
            if ready_delay_s is not None:
                for k in range(counts[p - 1], count):
                    h.ready(f"worker-{k + 1}", ts=t + ready_delay_s)
        step = 1.0 / rates[count]
        s = p_start
        while s < p_start + phase_s and n < tasks:
            h.processed(f"t{n}", W1, ts=s)
            n += 1
            s += step
        t = p_start + phase_s
    return h


def test_scaling_true() -> None:
    r = scaling.check(scaling_history({1: 10.0, 2: 20.0, 4: 39.0, 8: 76.0}).build(), {})
    assert r.valid is True, r.summary
    assert [c["workers"] for c in r.evidence["curve"]] == [1, 2, 4, 8]
    assert r.evidence["bends_at"] is None


def test_scaling_false_bends() -> None:
    r = scaling.check(scaling_history({1: 10.0, 2: 19.0, 4: 25.0, 8: 26.0}).build(), {})
    assert r.valid is False and r.evidence["bends_at"] == 4
    assert r.evidence["curve"][2]["efficiency"] == pytest.approx(25 / 40, abs=0.02)


def test_scaling_phase_starts_when_new_workers_are_ready() -> None:
    h = scaling_history({1: 10.0, 2: 20.0}, phase_s=9.0, ready_delay_s=1.5).build()
    r = scaling.check(h, {})
    assert r.evidence["phases"][1]["start"] == "scale, new workers ready"
    assert r.valid is True, r.summary


@pytest.mark.parametrize("case", ["one_phase", "no_t1", "backlog_ran_out", "phase_too_short"])
def test_scaling_unknown(case: str) -> None:
    if case == "one_phase":
        h = scaling_history({1: 10.0})
    elif case == "no_t1":
        h = scaling_history({2: 20.0, 4: 40.0})
    elif case == "backlog_ran_out":
        h = scaling_history({1: 10.0, 2: 20.0, 4: 40.0}, tasks=200)
    else:
        h = scaling_history({1: 10.0, 2: 20.0}, phase_s=5.0)
    r = scaling.check(h.build(), {})
    assert r.valid is None, r.summary
    if case == "backlog_ran_out":
        assert "4 worker(s): the backlog ran out" in r.summary
