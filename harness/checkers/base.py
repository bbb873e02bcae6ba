"""Checker contract: a pure function of the history returning a ClaimResult.

``valid`` is ``True`` (the claim holds), ``False`` (violated, with evidence) or
``None`` (unknown: the evidence to decide is missing). Combining keeps the worst
(False < None < True); a checker that raises gives ``unknown``, never ``True``.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from harness.history import History
from harness.vocab import word

Valid = bool | None

# Number of offending ids quoted in a result; the counts are always complete.
OFFENDERS_MAX: Final = 10

# Evidence key a checker sets False when its claim cannot be observed at all with
# the worker's events (exactly-once-ack without ``acked`` events). Such a result
# is unknown, never true; an unlisted invariant is then left out, and a default
# gate (not one the user named) does not wait on it.
OBSERVABLE: Final = "observable"

# A parameter ``checkers.check_all`` gives no-loss, exactly-once-ack and
# redelivery-after-crash when the run's event preset says a kill can drop lines
# already written (``harness.presets.Preset.lines_cut_by_kill``, the reason) and a
# worker process died: a task the killed process held, shown neither processed nor
# settled and received by nobody again (``facts.cut_by_kill``), is undecided.
LINES_CUT: Final = "lines_cut_by_kill"


@dataclass(frozen=True)
class ClaimResult:
    claim: str
    valid: Valid
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    # Duplicates, redeliveries etc. that a fault explains: shown, not a violation.
    explained: dict[str, Any] = field(default_factory=dict)
    # Where a checker can pin it: the wall-clock ts by which the history showed
    # the violation (e.g. a health bound that expired). None: not pinned.
    violated_at_ts: float | None = None

    @property
    def verdict(self) -> str:
        return word(self.valid)

    def to_dict(self) -> dict[str, Any]:
        return {
            "claim": self.claim,
            "valid": self.verdict,
            "summary": self.summary,
            "evidence": self.evidence,
            "explained": self.explained,
            **({"violated_at_ts": self.violated_at_ts} if self.violated_at_ts is not None
               else {}),
        }


Checker = Callable[[History, Mapping[str, Any]], ClaimResult]


def unknown(claim: str, reason: str, **evidence: Any) -> ClaimResult:
    return ClaimResult(claim, None, reason, dict(evidence))


def worst(values: Iterable[Valid]) -> Valid:
    """Combine verdicts: any False is False; else any unknown is unknown; else True.

    An empty combination is unknown: nothing was checked, so nothing holds.
    """
    seen = False
    result: Valid = True
    for v in values:
        seen = True
        if v is False:
            return False
        if v is None:
            result = None
    return result if seen else None


def first(ids: Iterable[Any], n: int = OFFENDERS_MAX) -> list[Any]:
    """The first ``n`` offenders, sorted so reports are stable."""
    return sorted(ids, key=str)[:n]


def run_checker(claim: str, fn: Checker, history: History,
                params: Mapping[str, Any]) -> ClaimResult:
    """Run one checker; a crash becomes ``unknown`` with the error as evidence."""
    try:
        result = fn(history, params)
    except Exception as exc:
        return ClaimResult(
            claim,
            None,
            f"checker crashed: {type(exc).__name__}: {exc}",
            {"traceback": traceback.format_exc(limit=5)},
        )
    if result.valid not in (True, False, None):
        return ClaimResult(claim, None, f"checker returned an invalid verdict {result.valid!r}")
    return result


def observable(r: ClaimResult) -> bool:
    """Could the worker's events show this claim at all (``OBSERVABLE``)?"""
    return r.evidence.get(OBSERVABLE) is not False
