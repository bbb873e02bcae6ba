"""From a finished history to the verdicts of a run (the runner, ``harness check``
and ``benchmarks/false_alarms.py`` all judge through :func:`judge_history`).

Two rules live here, not in the checkers:

- **Invariants are always judged.** ``ALWAYS_JUDGED`` (no-loss, exactly-once-ack,
  no-duplicate-processing) are checked in every run, whatever the scenario's
  ``claims:`` list says: the list adds claims, it cannot drop the invariants.
  "Nothing in the DLQ that should not be there" is part of no-loss (a task
  dead-lettered that the harness did not ask to fail and nobody processed) and
  of exactly-once-ack (a processed task also found in the DLQ is settled
  twice). One that the scenario did not ask for and that cannot be observed
  with the worker's events (exactly-once-ack without any ``acked`` event) is
  left out rather than shown as ``unknown``; it is never ``true``.
- **Problems reach the invariant.** A run problem (a fault that did not take
  effect, a drain that did not finish, a failed capture...) turns every
  ``true`` into ``unknown``, the guide's verdict and the invariant alike: a
  ``false`` whose invariant held (duplicates explained by faults) keeps its
  ``false`` but its invariant becomes ``unknown``. A ``false`` invariant stays:
  its evidence is real.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Final

from harness.checkers import check_all
from harness.checkers.base import ClaimResult, observable
from harness.claims import invariant_verdict
from harness.history import History

ALWAYS_JUDGED: Final = ("no-loss", "exactly-once-ack", "no-duplicate-processing")


def judged_claims(claims: Sequence[str]) -> list[str]:
    """The scenario's claims, then the always-judged invariants it did not list."""
    return [*claims, *(c for c in ALWAYS_JUDGED if c not in claims)]


def judge_history(history: History, claims: Sequence[str],
                  params: Mapping[str, Mapping[str, Any]],
                  problems: Sequence[str]) -> list[ClaimResult]:
    """The verdicts of a run: its checkers on its history (the scenario's claims
    plus the always-judged invariants), then the run's problems applied."""
    listed = set(claims)
    results = [r for r in check_all(history, judged_claims(claims), params)
               if r.claim in listed or observable(r)]
    if not problems:
        return results
    why = "; ".join(problems)
    out: list[ClaimResult] = []
    for r in results:
        if r.valid is True:
            r = ClaimResult(r.claim, None, f"undecided: {why} (checker alone said: {r.summary})",
                            r.evidence, r.explained)
        elif r.valid is False and invariant_verdict(r) is True:
            r = dataclasses.replace(
                r, summary=f"{r.summary}; invariant undecided: {why}",
                evidence={**r.evidence, "invariant_holds": None})
        out.append(r)
    return out
