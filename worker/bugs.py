"""Planted bugs of the reference worker (``WORKER_BUG=<name>``), for detection-power runs.

Each name switches on one realistic mistake in the worker; the harness runs the
worker with it and must report the claim the mistake breaks. An empty
``WORKER_BUG`` is the correct worker. ``KNOWN_BUGS`` is what the harness imports;
``BUG_CLAIMS`` names the claim(s) that should catch each bug.
"""

from __future__ import annotations

from typing import Final

AUTO_ACK: Final = "auto-ack"
ACK_BEFORE_PROCESS: Final = "ack-before-process"
REQUEUE_ON_FAILURE: Final = "requeue-on-failure"
NO_DEAD_LETTER_EXCHANGE: Final = "no-dead-letter-exchange"
UNLIMITED_PREFETCH: Final = "unlimited-prefetch"
NO_BACKOFF: Final = "no-backoff"
ACK_BEFORE_REPUBLISH: Final = "ack-before-republish"
NO_RECONNECT: Final = "no-reconnect"
HEALTH_ALWAYS_OK: Final = "health-always-ok"
SIGTERM_ACKS_INFLIGHT: Final = "sigterm-acks-inflight"
EXCLUSIVE_CONSUMER: Final = "exclusive-consumer"
IGNORE_CONCURRENCY: Final = "ignore-concurrency"
# The bugs of workers that keep the contract but not the reference worker's habits.
DEAD_LETTER_ON_REDELIVERY: Final = "dead-letter-on-redelivery"
DOUBLE_ACK: Final = "double-ack"
FIXED_DELAY_RETRY: Final = "fixed-delay-retry"
ACK_AND_DROP_WHEN_BUSY: Final = "ack-and-drop-when-busy"
NEVER_ACK_REDELIVERED: Final = "never-ack-redelivered"
SIDE_EFFECT_EVERY_ATTEMPT: Final = "side-effect-every-attempt"
IGNORE_DELIVERY_LIMIT: Final = "ignore-delivery-limit"
# Bugs no hand-written scenario provokes: they need a combination of faults or a
# timing that only a search of the fault space (``harness explore``) finds.
STALE_ACK_AFTER_TWO_RECONNECTS: Final = "stale-ack-after-two-reconnects"
TRANSIENT_RETRY_QUEUES: Final = "transient-retry-queues"
# A bug only an orchestrator's reaction shows (``--backend swarm``): the liveness
# beat is taken only while the worker holds no task ("alive = idle"), so a task
# longer than the liveness bound reads as a hang and the orchestrator replaces a
# worker that was doing its job.
BEAT_WHEN_IDLE: Final = "beat-when-idle"

KNOWN_BUGS: Final[tuple[str, ...]] = (
    AUTO_ACK,
    ACK_BEFORE_PROCESS,
    REQUEUE_ON_FAILURE,
    NO_DEAD_LETTER_EXCHANGE,
    UNLIMITED_PREFETCH,
    NO_BACKOFF,
    ACK_BEFORE_REPUBLISH,
    NO_RECONNECT,
    HEALTH_ALWAYS_OK,
    SIGTERM_ACKS_INFLIGHT,
    EXCLUSIVE_CONSUMER,
    IGNORE_CONCURRENCY,
    DEAD_LETTER_ON_REDELIVERY,
    DOUBLE_ACK,
    FIXED_DELAY_RETRY,
    ACK_AND_DROP_WHEN_BUSY,
    NEVER_ACK_REDELIVERED,
    SIDE_EFFECT_EVERY_ATTEMPT,
    IGNORE_DELIVERY_LIMIT,
)

# Planted bugs that need a search (``harness explore`` from a fault-free scenario):
# the worker accepts them like the others; ``harness mutants`` does not run them,
# because no one scenario of scenarios/ provokes them.
SEARCH_BUGS: Final[tuple[str, ...]] = (
    STALE_ACK_AFTER_TWO_RECONNECTS,
    TRANSIENT_RETRY_QUEUES,
)
# Planted bugs the orchestrator reveals (its health-driven replacement): not in
# ``harness mutants`` either; ``tests/integration/test_swarm.py`` runs them.
ORCHESTRATOR_BUGS: Final[tuple[str, ...]] = (BEAT_WHEN_IDLE,)

# bug -> claim ids (docs/claims.md) that a suitable scenario must turn false.
BUG_CLAIMS: Final[dict[str, tuple[str, ...]]] = {
    AUTO_ACK: ("no-loss", "redelivery-after-crash"),
    ACK_BEFORE_PROCESS: ("no-loss", "redelivery-after-crash"),
    REQUEUE_ON_FAILURE: ("dead-letter",),
    NO_DEAD_LETTER_EXCHANGE: ("dead-letter", "no-loss"),
    UNLIMITED_PREFETCH: ("even-distribution",),
    NO_BACKOFF: ("retry-backoff",),
    ACK_BEFORE_REPUBLISH: ("no-loss",),
    NO_RECONNECT: ("partition-recovery", "health-check"),
    HEALTH_ALWAYS_OK: ("health-check",),
    SIGTERM_ACKS_INFLIGHT: ("graceful-shutdown", "no-loss"),
    EXCLUSIVE_CONSUMER: ("even-distribution",),
    IGNORE_CONCURRENCY: ("concurrency",),
    DEAD_LETTER_ON_REDELIVERY: ("no-loss", "redelivery-after-crash"),
    DOUBLE_ACK: ("exactly-once-ack", "no-duplicate-processing"),
    FIXED_DELAY_RETRY: ("retry-backoff",),
    ACK_AND_DROP_WHEN_BUSY: ("no-loss",),
    NEVER_ACK_REDELIVERED: ("exactly-once-ack",),
    SIDE_EFFECT_EVERY_ATTEMPT: ("no-duplicate-processing",),
    IGNORE_DELIVERY_LIMIT: ("dead-letter",),
    STALE_ACK_AFTER_TWO_RECONNECTS: ("no-duplicate-processing", "exactly-once-ack"),
    TRANSIENT_RETRY_QUEUES: ("no-loss",),
    # No claim of the guide turns false: the history shows swarm's replacement.
    BEAT_WHEN_IDLE: (),
}
