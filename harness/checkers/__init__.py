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

from harness import vocab
from harness.checkers import (
    concurrency,
    dead_letter,
    distribution,
    exactly_once_ack,
    exactly_one_consumer,
    facts,
    graceful_shutdown,
    health,
    no_duplicate,
    no_loss,
    partition_recovery,
    redelivery,
    retry_backoff,
    scaling,
)
from harness.checkers.base import (
    LINES_CUT,
    OBSERVABLE,
    Checker,
    ClaimResult,
    run_checker,
    unknown,
)
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
    claims = list(claims)
    distorted, silent = _distorted(history, claims)
    cut = _lines_cut(history)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for claim in claims:
            fn = CHECKERS.get(claim)
            if fn is None:
                results.append(unknown(claim, f"no checker for claim {claim!r} yet"))
                continue
            params = params_by_claim.get(claim, {})
            if cut and claim in LINES_CUT_CLAIMS:
                params = {**params, LINES_CUT: cut}
            if claim in distorted and claim in PARTLY_OBSERVABLE and not silent:
                # The checker judges what the events still show (retry-backoff: counts).
                params = {**params, PARTLY_OBSERVABLE[claim]: distorted[claim]}
            elif claim in distorted:
                # Silent: undecided and gated (exit 2), never out of the gate.
                results.append(unknown(claim, distorted[claim]) if silent else
                               unknown(claim, distorted[claim], **{OBSERVABLE: False}))
                continue
            results.append(run_checker(claim, fn, history, params))
    finally:
        if gc_was_enabled:
            gc.enable()
    return results


__all__ = ["CHECKERS", "check_all"]


# Checkers that judge the part of their claim an event preset does not distort, told
# by this parameter (the reason); any other distorted claim is unknown outright.
PARTLY_OBSERVABLE: Final[Mapping[str, str]] = {
    "retry-backoff": retry_backoff.GAPS_UNOBSERVABLE,
    "no-loss": no_loss.UNSEEN_CRASHES,
    "no-duplicate-processing": no_duplicate.UNSEEN_PROCESSINGS,
}


def _distorted(history: History, claims: Iterable[str]) -> tuple[dict[str, str], bool]:
    """Claims the run's event preset cannot show (``harness.presets``: the harness's
    knowledge of a framework's log lines, recorded in ``run_started``), each with
    the reason: unknown and not observable, whatever those lines seem to say. A
    preset run in which no line became an event shows nothing at all (``silent``):
    every claim is undecided (a worker logging below the preset's level), not a
    loss."""
    from harness.checkers.index import get

    idx = get(history)
    caps = idx.capabilities
    kind = str(caps.get("events", "?"))
    if not kind.startswith("preset:"):
        return {}, False
    name = kind.removeprefix("preset:")
    # Receipts: both frameworks log one per attempt at the level the preset needs; a
    # worker one level too quiet still logs retries (Dramatiq at INFO), which show no
    # processing at all: undecided, never every task lost.
    if idx.count(vocab.RECEIVED) == 0:
        return {c: f"no line of the worker matched --events {name}: is it logging at the "
                   "preset's level (Celery: -l info)?" for c in claims}, True
    raw = caps.get("unobservable")
    out = ({str(c): f"not observable with --events {name}: {why}" for c, why in raw.items()}
           if isinstance(raw, dict) else {})
    after_death = caps.get("unobservable_after_death")
    if isinstance(after_death, dict) and _a_process_died(idx):
        for c, why in after_death.items():
            out.setdefault(str(c), f"not observable with --events {name}: {why}")
    return out, False


# The claims that judge a task by what a killed process's lines show of it
# (``base.LINES_CUT``).
LINES_CUT_CLAIMS: Final = frozenset({no_loss.CLAIM, exactly_once_ack.CLAIM, redelivery.CLAIM})


def _lines_cut(history: History) -> str:
    """Why a kill in this run may have dropped lines already written (the run's
    event preset says its lines can be, ``Preset.lines_cut_by_kill``, and the
    harness's record has a sudden death: ``facts.sudden_deaths``), else empty."""
    from harness.checkers.index import get

    idx = get(history)
    why = idx.capabilities.get("lines_cut_by_kill")
    if not isinstance(why, str) or not why or not facts.sudden_deaths(idx):
        return ""
    return f"{why} (--events {str(idx.capabilities.get('events', '?')).removeprefix('preset:')})"


def _a_process_died(idx: Any) -> bool:
    """A worker process ended during the run proper, so a processing may have left
    no log line: an exit before the drain (a kill, a terminate, a crash of the
    main process, an exit nobody asked for), a task with a ``crash`` directive
    (under Celery's prefork pool it kills only a pool child, which no exit shows),
    or a pool child's death that the framework's own supervisor logged
    (``vocab.PROCESS_DIED``, read by the preset: it can only make claims undecided).
    The harness's own record otherwise, never the worker's."""
    if idx.crash_directives or idx.count(vocab.PROCESS_DIED):
        return True
    end = idx.end_ts
    return any(end is None or ev.ts < end for ev in idx.worker_exited)
