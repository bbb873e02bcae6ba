"""The one verdict module: the claims, what a verdict means, and exit codes.

- **The claims** (``CLAIMS``): the guide's words, the invariant a release must
  keep, and how the one maps to the other. A checker's ``ClaimResult.valid`` is
  the verdict on the *guide's claim as stated*. Some guide claims are false even
  for a correct worker (RabbitMQ delivers at least once), so the exit code is
  decided by the *invariant* of each claim instead (``invariant_verdict``): for
  most claims the two are the same; for ``no-duplicate-processing`` the
  invariant is "no duplicate that a fault does not explain" (the checker
  reports it as ``evidence["invariant_holds"]``).
- **From a finished history to the verdicts of a run** (``judge_history``: the
  runner, ``harness check`` and ``benchmarks/false_alarms.py`` all judge
  through it), with two rules that live here, not in the checkers:
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
- **Exit codes** (``overall_exit_code``, ``gate_exit_code``): 0 every gated
  invariant holds, 1 one is violated, 2 undecided; and the audit's row words
  (``verdict_word``: holds, holds with a caveat, false as stated, VIOLATED,
  unknown).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from harness import vocab
from harness.checkers import check_all
from harness.checkers.base import ClaimResult, Valid, observable
from harness.history import History


@dataclass(frozen=True)
class Claim:
    id: str
    guide: str  # the guide's sentence
    invariant: str  # what a correct worker keeps
    guide_holds_for_correct_worker: bool
    why: str = ""  # in RabbitMQ's terms: why it holds, or where the guide is wrong
    caveat: str = ""  # the condition under which a holding claim holds


CLAIMS: Final[dict[str, Claim]] = {
    c.id: c
    for c in (
        Claim("no-loss", "No messages lost!",
              "every confirmed task ends processed, dead-lettered or still queued", True,
              "manual acks, durable queues and persistent messages: the broker keeps a "
              "delivery until it is acked, and requeues it when the connection dies"),
        Claim("exactly-once-ack", "(manual ack: one ack per message)",
              "every confirmed task is settled exactly once, or twice only where the first "
              "settlement's connection died", True,
              "an ack sent just before the connection died may never reach the broker, "
              "which then redelivers: a second settlement is explained by that fault"),
        Claim("no-duplicate-processing",
              "No duplicates! Each message goes to exactly ONE pod",
              "no duplicate processing that a fault does not explain", False,
              "RabbitMQ delivers at least once: a worker that dies after the side effect and "
              "before its ack has its delivery requeued and processed again"),
        Claim("exactly-one-consumer", "Message is locked until acknowledged",
              "overlaps only while the earlier holder's connection is dead", False,
              "a delivery is requeued when the broker considers the connection dead "
              "(heartbeat timeout), while a paused or cut-off worker may still be working"),
        Claim("redelivery-after-crash", "If pod crashes, message is redelivered to another pod",
              "every task unacked on a killed worker is redelivered and completed", True,
              "the broker requeues a dead connection's unacked deliveries and redelivers "
              "them with redelivered=true"),
        Claim("retry-backoff", "Exponential backoff for retries",
              "attempt k+1 waits base*2^(k-1) within the tolerance", True,
              "per-tier TTL queues dead-letter back to the work queue when the TTL expires"),
        Claim("dead-letter", "Nack ... send to DLQ",
              "permanent failures and poison bodies end in the DLQ exactly once", True,
              "basic.nack with requeue=false routes through the queue's dead-letter exchange",
              caveat="only where the work queue is declared with a dead-letter exchange"),
        Claim("even-distribution", "Each pod gets ~100 messages (round-robin)",
              "per-worker share within the bound of the mean", True,
              "the broker dispatches round-robin among consumers with free prefetch",
              caveat="with prefetch = concurrency and tasks of equal cost; unlimited prefetch "
                     "lets the first consumer take the backlog"),
        Claim("concurrency", "1 pod x 10 concurrent workers = 10 tasks processing simultaneously",
              "peak simultaneous tasks per worker equals WORKER_CONCURRENCY", True,
              "prefetch = concurrency keeps that many deliveries unacked at once"),
        Claim("linear-scaling", "1 pod -> 10 tasks/sec ... 100 pods -> 1000 tasks/sec",
              "efficiency T(N)/(N*T(1)) stays above the bound", True,
              "consumers are independent while the queue has a backlog",
              caveat="until the broker, the queue or the machine saturates"),
        Claim("health-check", "Health checks ... restart if unhealthy",
              "/healthcheck turns 503 without the broker and 200 after reconnect", True,
              "a closed or heartbeat-dead connection is visible to the worker; the probe "
              "must report it"),
        Claim("graceful-shutdown", "HPA scales back to 5 pods",
              "on SIGTERM in-flight tasks finish and are acked, or are requeued", True,
              "basic.cancel stops new deliveries; unacked ones are requeued when the "
              "connection closes"),
        Claim("partition-recovery", "Network issues causing duplicate delivery?",
              "after the network heals the worker reconnects and consumes again", True,
              "heartbeats detect the dead TCP connection; the worker must reconnect"),
    )
}


def invariant_verdict(result: ClaimResult) -> Valid:
    """The verdict on the invariant a release must keep (what gates the exit code)."""
    if result.valid is None:
        return None
    if "invariant_holds" in result.evidence:
        holds = result.evidence["invariant_holds"]
        return holds if isinstance(holds, bool) else None
    return result.valid


ALWAYS_JUDGED: Final = ("no-loss", "exactly-once-ack", "no-duplicate-processing")
# Invariants that gate the exit code by default (what a correct worker keeps).
DEFAULT_GATE: Final = frozenset({
    "no-loss", "exactly-once-ack", "no-duplicate-processing", "dead-letter", "health-check",
    "graceful-shutdown", "partition-recovery", "redelivery-after-crash",
})



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


def not_gated(results: Iterable[ClaimResult], gating: Iterable[str] | None) -> list[str]:
    """The claims a default gate leaves out: not observable with the worker's events."""
    if gating is not None:
        return []
    return sorted({r.claim for r in results if not observable(r)})


def overall_exit_code(results: Iterable[ClaimResult], gating: set[str] | None = None) -> int:
    """0: every gated claim's invariant holds; 1: one is violated; 2: otherwise.

    The exit code follows the invariant a release must keep (``claims.invariant_verdict``),
    not the guide's wording: an explained duplicate falsifies "No duplicates!" but
    does not fail the run.

    ``gating`` None gates every result the worker's events could show at all
    (``checkers.base.observable``: a claim they cannot show is unknown and stays
    out of a default gate, see ``not_gated``); a gate the user names is kept
    whole. A gated claim with no result, or nothing gated at all, is unknown
    (2): a run that checked nothing does not pass.
    """
    by_claim: dict[str, list[ClaimResult]] = {}
    for r in results:
        if gating is None and not observable(r):
            continue
        by_claim.setdefault(r.claim, []).append(r)
    wanted = set(by_claim) if gating is None else set(gating)
    if not wanted:
        return 2
    verdicts = [invariant_verdict(r) for claim in wanted for r in by_claim.get(claim, [])]
    if any(v is False for v in verdicts):
        return 1
    if any(claim not in by_claim for claim in wanted) or any(v is None for v in verdicts):
        return 2
    return 0


def verdict_word(claim: str, guide_valid: Valid, invariant_valid: Valid) -> str:
    if invariant_valid is False:
        return "VIOLATED"
    if invariant_valid is None or guide_valid is None:
        return "unknown"
    if guide_valid is False:
        return "false as stated"
    return "holds with a caveat" if CLAIMS[claim].caveat else "holds"


def reference_verdict(claim: str) -> str:
    """The row docs/claims.md gives a correct worker (the reference worker's audit)."""
    return verdict_word(claim, CLAIMS[claim].guide_holds_for_correct_worker, True)


run_word = vocab.run_word  # the word of an exit code, defined in vocab
