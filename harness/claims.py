"""The claims: the guide's words, the invariant a release must keep, and how the
one maps to the other.

A checker's ``ClaimResult.valid`` is the verdict on the *guide's claim as
stated*. Some guide claims are false even for a correct worker (RabbitMQ
delivers at least once), so the exit code is decided by the *invariant* of each
claim instead: for most claims the two are the same; for
``no-duplicate-processing`` the invariant is "no duplicate that a fault does not
explain" (the checker reports it as ``evidence["invariant_holds"]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from harness.checkers.base import ClaimResult, Valid


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
