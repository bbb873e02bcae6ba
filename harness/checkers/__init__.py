"""The checkers: one pure function per claim of the guide (docs/claims.md).

``CHECKERS`` maps a claim id to its checker; :func:`check_all` runs the requested
claims through :func:`~harness.checkers.base.run_checker`, so a checker that
crashes yields ``unknown``, and a claim without a checker is ``unknown`` too.
The checkers share one per-task index of the history (``harness.checkers.index``),
built on first use and cached on the history.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Mapping
from typing import Any, Final

from harness.checkers import (
    concurrency,
    dead_letter,
    distribution,
    exactly_once_ack,
    exactly_one_consumer,
    graceful_shutdown,
    health,
    no_duplicate,
    no_loss,
    partition_recovery,
    redelivery,
    retry_backoff,
    scaling,
)
from harness.checkers.base import OBSERVABLE, Checker, ClaimResult, run_checker, unknown
from harness.history import History

CHECKERS: Final[dict[str, Checker]] = {
    no_loss.CLAIM: no_loss.check,
    exactly_once_ack.CLAIM: exactly_once_ack.check,
    no_duplicate.CLAIM: no_duplicate.check,
    redelivery.CLAIM: redelivery.check,
    distribution.CLAIM: distribution.check,
    exactly_one_consumer.CLAIM: exactly_one_consumer.check,
    retry_backoff.CLAIM: retry_backoff.check,
    dead_letter.CLAIM: dead_letter.check,
    concurrency.CLAIM: concurrency.check,
    scaling.CLAIM: scaling.check,
    health.CLAIM: health.check,
    graceful_shutdown.CLAIM: graceful_shutdown.check,
    partition_recovery.CLAIM: partition_recovery.check,
}


def check_all(history: History, claims: Iterable[str],
              params_by_claim: Mapping[str, Mapping[str, Any]] | None = None
              ) -> list[ClaimResult]:
    """One result per claim, in the order given.

    The cyclic garbage collector is paused while the checkers run: a history of
    1,000,000 tasks holds millions of tracked objects, every full collection walks
    all of them (about 0.5 s each), and the checkers' many small allocations would
    trigger several. The checkers create no reference cycles to collect.
    """
    params_by_claim = params_by_claim or {}
    results: list[ClaimResult] = []
    distorted = _distorted(history)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for claim in claims:
            fn = CHECKERS.get(claim)
            if fn is None:
                results.append(unknown(claim, f"no checker for claim {claim!r} yet"))
                continue
            if claim in distorted:
                results.append(unknown(claim, distorted[claim], **{OBSERVABLE: False}))
                continue
            results.append(run_checker(claim, fn, history, params_by_claim.get(claim, {})))
    finally:
        if gc_was_enabled:
            gc.enable()
    return results


__all__ = ["CHECKERS", "check_all"]


def _distorted(history: History) -> dict[str, str]:
    """Claims the run's event preset cannot show (``harness.presets``: the harness's
    knowledge of a framework's log lines, recorded in ``run_started``), each with
    the reason: unknown and not observable, whatever those lines seem to say."""
    from harness.checkers.index import get

    caps = get(history).capabilities
    raw = caps.get("unobservable")
    if not isinstance(raw, dict):
        return {}
    kind = caps.get("events", "?")
    return {str(c): f"not observable with --events {str(kind).removeprefix('preset:')}: {why}"
            for c, why in raw.items()}
