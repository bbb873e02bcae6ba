"""health-check: the probe turns unhealthy in an outage and healthy again after it."""

from __future__ import annotations

from typing import Any

import pytest
from histories import (
    CAPS,
    W1,
    W2,
    H,
    start,
    start_ready,
)

from harness.checkers import (
    health,
)
from harness.checkers.index import NEEDED_UNTIL

# -- health-check -----------------------------------------------------------------

def outage(down: bool = True, up: bool = True, caps: dict[str, Any] | None = None) -> H:
    h = start(caps)
    for w in (W1, W2):
        h.health(w, True, ts=1001.0)
    h.fault("broker-restart", "broker", ts=1010.0, completed_ts=1018.0)
    if down:
        h.health(W1, False, ts=1010.3).health(W2, False, ts=1011.0)
    if up:
        h.health(W1, True, ts=1020.0).health(W2, True, ts=1022.0)
    h.add("run_finished", "harness", ts=1060.0)
    return h


def test_health_true() -> None:
    r = health.check(outage().build(), {})
    assert r.valid is True, r.summary
    rows = {x["worker"]: x for x in r.evidence["per_worker"]}
    assert rows[W2]["down_after_s"] == 1.0 and rows[W2]["up_after_completed_s"] == 4.0


def test_health_false_always_ok() -> None:
    r = health.check(outage(down=False, up=False).build(), {})
    assert r.valid is False and r.evidence["never_unhealthy"] == 2
    # Pinned: the down bound after the outage began is when the violation showed.
    assert r.violated_at_ts == 1010.0 + r.evidence["down_bound_s"]


def test_health_false_never_healthy_again() -> None:
    r = health.check(outage(up=False).build(), {})
    assert r.valid is False and r.evidence["never_healthy_again"] == 2
    assert r.violated_at_ts == 1018.0 + r.evidence["up_bound_s"]


@pytest.mark.parametrize("case", ["no_capability", "no_health_events", "no_outage",
                                  "record_too_short"])
def test_health_unknown(case: str) -> None:
    if case == "no_capability":
        h = outage(caps={**CAPS, "health": False})
    elif case == "no_health_events":
        h = start().fault("broker-restart", "broker", completed_ts=1010.0)
    elif case == "no_outage":
        h = start().health(W1, True)
    else:
        h = start().health(W1, True, ts=1001.0).fault("broker-restart", "broker", ts=1010.0,
                                                      completed_ts=1018.0)
        h.health(W1, False, ts=1010.5)
    r = health.check(h.build(), {})
    assert r.valid is None, r.summary


# -- a run ends when every window has closed ---------------------------------------------

def test_health_undecided_says_how_long_the_record_must_reach() -> None:
    h = start_ready().publish("a").task("a", W1)
    h.health(W1, True, ts=1001.0).fault("broker-restart", "broker", ts=1002.0,
                                        completed_ts=1005.0)
    r = health.check(h.build(), {"down_bound_s": 15, "up_bound_s": 30})
    assert r.valid is None and r.evidence[NEEDED_UNTIL] == pytest.approx(1017.0)
    # The same record carried past the bound decides it: false (never unhealthy).
    h.add("window_wait", "harness", ts=1017.5)
    assert health.check(h.build(), {"down_bound_s": 15, "up_bound_s": 30}).valid is False
    good = start_ready().health(W1, True, ts=1001.0).fault("broker-restart", "broker", ts=1002.0,
                                                     completed_ts=1005.0)
    good.health(W1, False, ts=1002.5).health(W1, True, ts=1007.0)
    assert health.check(good.build(), {}).valid is True
