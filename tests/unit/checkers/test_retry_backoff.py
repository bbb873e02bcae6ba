"""retry-backoff: per-task gaps that grow exponentially (jitter modes too)."""

from __future__ import annotations

import random
from collections.abc import Callable
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
    retry_backoff,
)

# -- retry-backoff ----------------------------------------------------------------

def retry_history(factor: float = 1.0, fail_times: tuple[int, ...] = (1, 2, 3),
                  base_ms: int = 200, max_attempts: int = 4, extra_attempt: bool = False,
                  report_end: bool = True, caps: dict[str, Any] | None = None) -> H:
    """Tasks that fail ``k`` times; attempt a+1 arrives ``factor`` x the backoff later."""
    h = start(caps, retry_base_ms=base_ms, max_attempts=max_attempts)
    t = 1010.0
    for n, k in enumerate(fail_times):
        ident = f"r{n}"
        h.publish(ident, directives={"sleep_ms": 0, "fail_times": k}, ts=t)
        attempts = min(k, max_attempts - 1) + 1 + (1 if extra_attempt else 0)
        for a in range(1, attempts + 1):
            w = W1 if a % 2 else W2
            h.received(ident, w, attempt=a, ts=t)
            if a <= k and a < attempts:
                if report_end:
                    h.failed(ident, w, attempt=a, ts=t + 0.01)
                    h.retry_scheduled(ident, w, attempt=a + 1, ts=t + 0.02)
                t += 0.02 + factor * base_ms * 2 ** (a - 1) / 1000.0
            else:
                h.processed(ident, w, attempt=a, ts=t + 0.01).acked(ident, w, ts=t + 0.02)
        t += 1.0
    return h


def test_retry_backoff_true() -> None:
    r = retry_backoff.check(retry_history(1.1).finish().build(), {})
    assert r.valid is True, r.summary
    assert r.evidence["gaps"] == 1 + 2 + 3
    assert r.evidence["per_attempt"]["3"]["expected_s"] == 0.8


def test_retry_backoff_true_measured_from_receipts() -> None:
    r = retry_backoff.check(retry_history(1.0, report_end=False).finish().build(), {})
    assert r.valid is True, r.summary


def test_retry_backoff_false_no_backoff() -> None:
    r = retry_backoff.check(retry_history(0.01).finish().build(), {})
    assert r.valid is False
    assert r.evidence["out_of_bounds"] == 6
    assert r.evidence["worst_gaps"][0]["gap_s"] < r.evidence["worst_gaps"][0]["lo_s"]
    assert r.violated_at_ts == pytest.approx(1010.022)  # the first early retry's arrival


def test_retry_backoff_false_too_slow_beyond_slack() -> None:
    r = retry_backoff.check(retry_history(3.0, base_ms=1000).finish().build(), {})
    assert r.valid is False and "too long" in r.summary
    # When the first gap's bound ran out: after the failure, before the late retry came.
    assert r.violated_at_ts is not None and 1010.01 < r.violated_at_ts < 1013.02


def test_retry_backoff_false_retries_past_the_limit() -> None:
    h = retry_history(1.0, fail_times=(5,), max_attempts=3, extra_attempt=True)
    r = retry_backoff.check(h.finish().build(), {})
    assert r.valid is False
    assert r.evidence["wrong_attempts"]["r0"]["expected_attempts"] == 3
    assert r.violated_at_ts == pytest.approx(1011.46)  # when attempt 4 arrived


def test_retry_backoff_params_override_base() -> None:
    h = retry_history(1.0, base_ms=200).finish().build()
    assert retry_backoff.check(h, {"base_ms": 2000}).valid is False


@pytest.mark.parametrize("case", ["no_directives", "no_fail_tasks", "no_received"])
def test_retry_backoff_unknown(case: str) -> None:
    if case == "no_directives":
        h = retry_history(caps={**CAPS, "directives": False})
    elif case == "no_fail_tasks":
        h = start().publish("a", directives={"sleep_ms": 5}).task("a", W1)
    else:
        h = start().publish("a", directives={"fail_times": 2}).processed("a", W1)
    r = retry_backoff.check(h.finish().build(), {})
    assert r.valid is None, r.summary
    if case == "no_directives":
        assert "directives" in r.summary


# -- backoff means growth -------------------------------------------------------------

def backoff_run(delay_s: Callable[[int], float], fail_times: tuple[int, ...] = (4, 4, 3, 2, 1),
                base_ms: int = 200) -> H:
    """Tasks that fail k times; attempt a+1 is received delay_s(a) after attempt a failed."""
    h = start_ready(retry_base_ms=base_ms)
    t = 1010.0
    for n, k in enumerate(fail_times):
        ident = f"r{n}"
        h.publish(ident, directives={"sleep_ms": 0, "fail_times": k}, ts=t)
        for a in range(1, k + 2):
            w = (W1, W2)[a % 2]
            h.received(ident, w, attempt=a, ts=t)
            if a <= k:
                h.failed(ident, w, attempt=a, ts=t + 0.01)
                t += 0.01 + delay_s(a)
            else:
                h.processed(ident, w, attempt=a, ts=t + 0.01).acked(ident, w, ts=t + 0.02)
        t += 0.1
    return h.finish()


def test_backoff_exponential_with_overhead_is_true() -> None:
    r = retry_backoff.check(backoff_run(lambda a: 0.2 * 2 ** (a - 1) + 0.2).build(), {})
    assert r.valid is True, r.summary
    assert r.evidence["growth"]["median"] == pytest.approx(2.0, abs=0.6)


@pytest.mark.parametrize("name,delay", [("fixed 900 ms", lambda a: 0.9),
                                        ("linear", lambda a: 0.2 * a)])
def test_backoff_fixed_or_linear_is_false_with_gaps_quoted(
        name: str, delay: Callable[[int], float]) -> None:
    r = retry_backoff.check(backoff_run(delay).build(), {})
    assert r.valid is False, (name, r.summary)
    assert "expected" in r.summary and "attempt" in r.summary


def test_backoff_full_jitter_true_under_the_envelope_false_when_flat() -> None:
    rng = random.Random(3)
    ok = backoff_run(lambda a: rng.uniform(0, 0.2 * 2 ** (a - 1)) + 0.05,
                     fail_times=(4,) * 12).build()
    assert retry_backoff.check(ok, {"jitter": "full"}).valid is True
    # An immediate retry hides under a lower bound of 0, not under the growth rule.
    flat = backoff_run(lambda a: rng.uniform(0, 0.1), fail_times=(4,) * 12).build()
    r = retry_backoff.check(flat, {"jitter": "full"})
    assert r.valid is False and "does not grow" in r.summary


def test_backoff_jitter_with_too_few_gaps_is_unknown() -> None:
    few = backoff_run(lambda a: 0.2 * 2 ** (a - 1), fail_times=(4,) * 3).build()
    assert retry_backoff.check(few, {"jitter": "full"}).valid is None


def test_backoff_unknown_jitter_word_is_unknown() -> None:
    r = retry_backoff.check(backoff_run(lambda a: 0.2 * 2 ** (a - 1)).build(),
                            {"jitter": "some"})
    assert r.valid is None and "jitter" in r.summary
