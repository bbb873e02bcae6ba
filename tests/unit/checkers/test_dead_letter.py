"""dead-letter: what was asked to fail reaches the DLQ once, nothing else does."""

from __future__ import annotations

from typing import Any

import pytest
from histories import (
    CAPS,
    W1,
    W2,
    H,
    ids,
    start,
)

from harness.checkers import (
    dead_letter,
)

# -- dead-letter ------------------------------------------------------------------

def dl_history(caps: dict[str, Any] | None = None) -> H:
    h = start(caps, max_attempts=3)
    for i in ids(5):
        h.publish(i, directives={"sleep_ms": 1}).task(i, W1)
    h.publish("fa", directives={"fail_always": True})
    h.received("fa", W1).failed("fa", W1, permanent=True).dead_lettered("fa", W1)
    h.publish("po", poison=True)
    h.received("po", W2).failed("po", W2, permanent=True).dead_lettered("po", W2)
    h.publish("ft", directives={"fail_times": 5})
    for a in (1, 2, 3):
        h.received("ft", W1, attempt=a).failed("ft", W1, attempt=a)
    h.dead_lettered("ft", W1, reason="max_attempts")
    h.publish("ok2", directives={"fail_times": 1})
    h.received("ok2", W1).failed("ok2", W1).received("ok2", W2, attempt=2)
    h.processed("ok2", W2, attempt=2).acked("ok2", W2)
    return h


def test_dead_letter_true() -> None:
    r = dead_letter.check(dl_history().finish(dlq=["fa", "po", "ft"]).build(), {})
    assert r.valid is True, r.summary
    assert r.evidence["expected_by_reason"] == {"fail_always": 1, "poison": 1,
                                                "max_attempts": 1}


def test_dead_letter_false_no_dlx_and_requeue_loop() -> None:
    r = dead_letter.check(dl_history().finish(main=["ft"], dlq=["po"]).build(), {})
    assert r.valid is False
    assert r.evidence["missing_ids"] == ["fa", "ft"]
    assert "no DLX" in r.evidence["missing_where"]["fa"]
    assert "main queue" in r.evidence["missing_where"]["ft"]


def test_dead_letter_false_duplicated_and_unexpected() -> None:
    h = dl_history().finish(dlq=["fa", "po", "ft", "ft", "ok2"])
    r = dead_letter.check(h.build(), {})
    assert r.valid is False
    assert r.evidence["duplicated_ids"] == ["ft"] and r.evidence["unexpected_ids"] == ["ok2"]


def test_dead_letter_without_directives_expects_poison_only() -> None:
    h = dl_history({**CAPS, "directives": False}).finish(dlq=["po"])
    r = dead_letter.check(h.build(), {})
    assert r.valid is True and "note" in r.evidence


@pytest.mark.parametrize("case", ["nothing_expected", "no_dlq_listing", "dlq_listing_failed",
                                  "no_directives_no_poison"])
def test_dead_letter_unknown(case: str) -> None:
    if case == "nothing_expected":
        h = start().publish("a").task("a", W1).finish()
    elif case == "no_dlq_listing":
        h = dl_history().drain().final_queue("main")
    elif case == "dlq_listing_failed":
        h = dl_history().drain().final_queue("main").final_queue("dlq", ok=False)
    else:
        h = start({**CAPS, "directives": False}).publish(
            "fa", directives={"fail_always": True}).finish(main=["fa"])
    r = dead_letter.check(h.build(), {})
    assert r.valid is None, r.summary


def crash_loop(h: H) -> H:
    """A poison message that crashes every worker that takes it (crash_always)."""
    h.publish("px", directives={"crash_always": True, "sleep_ms": 500})
    for n, w in enumerate((W1, W2, W1)):
        h.received("px", w, redelivered=n > 0).worker_exited(w, requested=False)
    return h


def test_a_crash_loop_ended_by_the_delivery_limit_is_dead_lettered() -> None:
    h = crash_loop(dl_history()).finish(dlq=["fa", "po", "ft", "px"])
    r = dead_letter.check(h.build(), {})
    assert r.valid is True, r.summary
    assert r.evidence["expected_by_reason"]["crash_always"] == 1


def test_a_crash_loop_still_looping_is_missing_from_the_dlq() -> None:
    h = crash_loop(dl_history()).finish(main=["px"], dlq=["fa", "po", "ft"])
    r = dead_letter.check(h.build(), {})
    assert r.valid is False
    assert r.evidence["missing_ids"] == ["px"]
    assert "crash loop" in r.evidence["missing_where"]["px"]
    assert "3 reported deliveries" in r.evidence["missing_where"]["px"]


def test_only_a_crash_loop_expected_and_no_dlq_listing_is_unknown() -> None:
    h = crash_loop(start(None)).drain().final_queue("main", ["px"]).final_queue("dlq", ok=False)
    r = dead_letter.check(h.build(), {})
    assert r.valid is None, r.summary


def test_the_brokers_reason_for_each_dead_lettering_is_reported() -> None:
    h = crash_loop(dl_history()).drain().final_queue("main")
    h.add("final_queue", "harness", queue="q.dlq", role="dlq", ids=["fa", "po", "ft", "px"],
          depth=4, ok=True, death_reasons={"fa": "rejected", "po": "rejected",
                                           "ft": "rejected", "px": "delivery_limit"})
    r = dead_letter.check(h.final_queue("retry").build(), {})
    assert r.valid is True, r.summary
    assert r.evidence["dead_lettered_by"] == {"delivery_limit": 1, "rejected": 3}
