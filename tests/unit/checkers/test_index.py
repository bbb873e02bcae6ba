"""The checker registry, the history index and the facts every checker reads."""

from __future__ import annotations

from typing import Any

import pytest
from histories import (
    W1,
    W2,
    H,
    clean,
    start_ready,
)

from harness.checkers import (
    CHECKERS,
    check_all,
    index,
)
from harness.checkers.base import ClaimResult, run_checker
from harness.history import History
from harness.model import CLAIMS

# -- registry -----------------------------------------------------------------

def test_registry_has_every_claim() -> None:
    from harness.model import CLAIMS

    assert set(CHECKERS) == set(CLAIMS)


def test_check_all_keeps_order_and_unknown_claim_is_unknown() -> None:
    h = clean(10).finish().build()
    res = check_all(h, ["no-loss", "concurrency", "exactly-once-ack"], {})
    assert [r.claim for r in res] == ["no-loss", "concurrency", "exactly-once-ack"]
    assert [r.valid for r in res] == [True, None, True]


def test_crashing_checker_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(history: History, params: Any) -> ClaimResult:
        raise RuntimeError("bug")

    assert run_checker("no-loss", boom, History(), {}).valid is None
    monkeypatch.setitem(CHECKERS, "no-loss", boom)
    (res,) = check_all(clean(3).finish().build(), ["no-loss"])
    assert res.valid is None
    assert "RuntimeError: bug" in res.summary


def test_index_is_cached_and_rebuilt_when_the_history_grows() -> None:
    h = clean(3).build()
    a = index.get(h)
    assert index.get(h) is a
    h.events.extend(H(t0=2000.0).publish("x").events)
    b = index.get(h)
    assert b is not a and b.has("x", index.OK)


# -- robustness ------------------------------------------------------------------

def test_checkers_agree_on_a_history_loaded_from_json() -> None:
    h = clean(60, workers=2).publish("x").received("x", W1).processed("x", W1)
    h.fault("kill", W1).received("x", W2, redelivered=True).processed("x", W2).acked("x", W2)
    built = h.finish().build()
    loaded = History.from_dicts(e.to_dict() for e in built.events)
    claims = ["no-loss", "exactly-once-ack", "no-duplicate-processing",
              "redelivery-after-crash", "even-distribution"]
    a = [(r.claim, r.valid, r.evidence) for r in check_all(built, claims)]
    b = [(r.claim, r.valid, r.evidence) for r in check_all(loaded, claims)]
    assert a == b
    assert [v for _, v, _ in a] == [True, True, False, True, None]  # W1 faulted: 1 eligible


def test_every_claim_has_a_checker() -> None:
    assert set(CHECKERS) == set(CLAIMS)


@pytest.mark.parametrize("claim", sorted(CLAIMS))
def test_empty_history_is_unknown_never_true(claim: str) -> None:
    assert run_checker(claim, CHECKERS[claim], H().build(), {}).valid is None


def test_a_started_ts_is_clamped_to_what_the_harness_saw() -> None:
    """A ``started_ts`` before the receipt or after the report is the worker's
    word outside the facts: kept inside [receipt, processed]."""
    from harness.checkers import facts
    from harness.checkers import index as ix

    h = start_ready().publish("a").received("a", W1, ts=1000.5)
    h.processed("a", W1, ts=1001.0, started_ts=900.0)
    h.publish("b").received("b", W1, ts=1001.1).processed("b", W1, ts=1001.5,
                                                           started_ts=2000.0)
    h.publish("c").received("c", W1, ts=1001.6).processed("c", W1, ts=1002.0,
                                                           started_ts=1001.8)
    hist = h.finish().build()
    idx = ix.get(hist)
    starts = {e.id: facts.start_ts(idx, e) for e in idx.processed.lists[W1]}
    assert starts == {"a": 1000.5, "b": 1001.5, "c": 1001.8}
