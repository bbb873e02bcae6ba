"""concurrency: the worker runs its configured number of tasks at once, no more."""

from __future__ import annotations

import pytest
from histories import (
    W1,
    H,
    ids,
    start,
)

from harness.checkers import (
    concurrency,
)

# -- concurrency ------------------------------------------------------------------

def conc_history(run_at_once: int, n: int = 40, conc: int = 10, task_s: float = 0.1,
                 gap_s: float = 0.0) -> H:
    h = start(concurrency=conc)
    t = 1010.0
    for i, ident in enumerate(ids(n)):
        wave, slot = divmod(i, run_at_once)
        s = t + wave * (task_s + gap_s + 0.01) + slot * 0.001
        h.publish(ident, ts=1001.0).received(ident, W1, ts=s)
        h.processed(ident, W1, ts=s + task_s, started_ts=s).acked(ident, W1, ts=s + task_s)
    return h


def test_concurrency_true() -> None:
    r = concurrency.check(conc_history(10).finish().build(), {})
    assert r.valid is True, r.summary
    assert r.evidence["peak"] == 10 and r.evidence["throughput_ratio"] > 0.9


def test_concurrency_false_ignores_concurrency() -> None:
    r = concurrency.check(conc_history(1).finish().build(), {})
    assert r.valid is False and r.evidence["peak"] == 1


def test_concurrency_false_above_the_limit() -> None:
    r = concurrency.check(conc_history(20).finish().build(), {})
    assert r.valid is False and "more tasks at once" in r.summary


def test_concurrency_false_slow_between_waves() -> None:
    r = concurrency.check(conc_history(10, gap_s=0.2).finish().build(), {})
    assert r.valid is False and r.evidence["throughput_ratio"] < 0.7


@pytest.mark.parametrize("case", ["small", "no_conc_setting", "nothing"])
def test_concurrency_unknown(case: str) -> None:
    if case == "small":
        h = conc_history(10, n=15)
    elif case == "no_conc_setting":
        h = H().publish("a").task("a", W1)
    else:
        h = start()
    assert concurrency.check(h.finish().build(), {}).valid is None


def test_peak_overlap_touching_intervals_do_not_overlap() -> None:
    assert concurrency.peak_overlap([(0, 1), (1, 2), (2, 3)]) == 1
    assert concurrency.peak_overlap([(0, 2), (1, 3), (1.5, 1.6)]) == 3
