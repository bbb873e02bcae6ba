"""The harness's one vocabulary: event types, faults, claims, verdict words.

Defined once here and imported everywhere else. Adding a fault touches the
``FAULT_KINDS`` table and the one module that implements it (a nemesis fault
class and a backend primitive); adding a claim touches ``CLAIMS``, its checker
and its row in ``harness.verdicts``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# -- event types ---------------------------------------------------------------------

# Worker contract v1 (docs/worker-contract.md): the only names a worker's stream
# may give; anything else is a ``foreign_event`` (``harness.cluster.lines``).
RECEIVED: Final = "received"
PROCESSED: Final = "processed"
ACKED: Final = "acked"
FAILED: Final = "failed"
RETRY_SCHEDULED: Final = "retry_scheduled"
DEAD_LETTERED: Final = "dead_lettered"
ACK_FAILED: Final = "ack_failed"
CONNECTED: Final = "connected"
CONNECTION_LOST: Final = "connection_lost"
READY: Final = "ready"
SHUTDOWN: Final = "shutdown"
# The events of a worker at work (the drain's "workers quiet" rule): a task's
# events, and ``ready`` (a consumer back after a fault may get redeliveries its
# lines do not show); not connection churn: a worker refused over and over
# (connected, connection_lost) never gets ready and holds no task.
ACTIVITY_EVENT_TYPES: Final = frozenset({
    RECEIVED, PROCESSED, ACKED, FAILED, RETRY_SCHEDULED, DEAD_LETTERED, ACK_FAILED, READY,
})
WORKER_EVENT_TYPES: Final = ACTIVITY_EVENT_TYPES | {CONNECTED, CONNECTION_LOST, SHUTDOWN}
# A child process of a worker died (Celery's pool supervisor logs it): read only by an
# event preset (``harness.presets``) from the framework's own line, never taken from a
# worker's JSON (there it is a foreign event). It can only make a claim undecided.
PROCESS_DIED: Final = "process_died"
PRESET_EVENT_TYPES: Final = frozenset({PROCESS_DIED})

# What the harness itself records (sources: harness, workload, cluster, nemesis).
RUN_STARTED: Final = "run_started"
RUN_FINISHED: Final = "run_finished"
PUBLISH: Final = "publish"
FAULT: Final = "fault"
HEALTH: Final = "health"
DRAIN: Final = "drain"
FINAL_QUEUE: Final = "final_queue"
WORKER_STARTED: Final = "worker_started"
WORKER_EXITED: Final = "worker_exited"
BROKER_STARTED: Final = "broker_started"
BROKER_STOPPED: Final = "broker_stopped"
FOREIGN_EVENT: Final = "foreign_event"
PUBLISH_STARTED: Final = "publish_started"
PUBLISH_FINISHED: Final = "publish_finished"
WORKERS_NOT_READY: Final = "workers_not_ready"
RECOVERY_WAIT: Final = "recovery_wait"
DRAIN_POLL_ERROR: Final = "drain_poll_error"
DRAIN_CONTRADICTION: Final = "drain_contradiction"
WINDOW_WAIT: Final = "window_wait"
WINDOWS_CLOSED: Final = "windows_closed"
VHOST: Final = "vhost"
BROKER_SEMANTICS: Final = "broker_semantics"
# The broker closed a worker's channel for its consumer_timeout (from the broker's
# log, ``harness.brokerlog``), and which worker held which peer address (the
# harness's own sightings, to name the worker of such a close).
CONSUMER_TIMEOUT: Final = "consumer_timeout"
CONNECTION_OWNER: Final = "connection_owner"

# -- faults --------------------------------------------------------------------------

LOCAL: Final = "local"
DOCKER: Final = "docker"
# Docker Swarm services on this machine's engine (``harness.cluster.swarm``).
SWARM: Final = "swarm"
# Workers the harness does not own (``harness.cluster.external``): its faults are the
# user's command templates, not in any fault's ``backends``.
EXTERNAL: Final = "external"
BACKENDS: Final = (LOCAL, DOCKER, SWARM)


@dataclass(frozen=True)
class FaultKind:
    """What a fault is, in the terms checkers and the schedule need."""

    name: str
    what: str
    # Its invocation cuts the target's broker connection (or its process), so the
    # broker requeues what it held: it explains a redelivery, and a duplicate.
    cuts_connection: bool = False
    broker_level: bool = False  # acts on the broker, not a worker
    lasting: bool = False  # lasts until healed (a ``duration_s`` or a ``heal`` step)
    backends: tuple[str, ...] = BACKENDS


FAULT_KINDS: Final[dict[str, FaultKind]] = {f.name: f for f in (
    FaultKind("kill", "SIGKILL", cuts_connection=True),
    FaultKind("terminate", "SIGTERM, the grace period, then SIGKILL", cuts_connection=True),
    FaultKind("pause", "SIGSTOP / docker pause; healed by resume", cuts_connection=True,
              lasting=True),
    FaultKind("resume", "SIGCONT / docker unpause"),
    FaultKind("restart", "start the worker again", cuts_connection=True),
    FaultKind("broker-restart", "stop the broker and start it again", broker_level=True),
    FaultKind("partition", "disconnect from the network", cuts_connection=True,
              lasting=True, backends=(DOCKER,)),
    FaultKind("blackhole", "iptables DROP both ways", cuts_connection=True, lasting=True,
              backends=(DOCKER, SWARM)),
    FaultKind("reset", "TCP resets", cuts_connection=True, lasting=True,
              backends=(DOCKER, SWARM)),
    FaultKind("close-connections", "the broker closes the worker's connections (management "
              "API), as an operator or a node drain would", cuts_connection=True),
    FaultKind("heal", "heal every active fault"),
    FaultKind("scale", "add or remove workers (count)"),
)}
FAULTS: Final = tuple(FAULT_KINDS)
# A worker's crash (the ``crash`` directive) cuts its connection too; it is not a
# schedule step but the checkers treat it like one.
CONNECTION_FAULTS: Final = frozenset(
    {n for n, f in FAULT_KINDS.items() if f.cuts_connection} | {"crash"})
BROKER_FAULTS: Final = frozenset(
    {n for n, f in FAULT_KINDS.items() if f.broker_level} | {"broker-stop"})
NET_FAULT_NAMES: Final = frozenset({"partition", "blackhole", "reset"})


def unsupported(fault: str, backend: str) -> str | None:
    """Why ``backend`` cannot run ``fault`` (None: it can)."""
    kind = FAULT_KINDS.get(fault)
    if kind is None:
        return f"unknown fault {fault!r}"
    if backend not in kind.backends:
        return f"{fault} needs --backend {' or '.join(kind.backends)}"
    return None


# -- claims and modes ---------------------------------------------------------------

# The claim ids of the guide (rows in ``harness.verdicts``).
CLAIMS: Final = (
    "no-loss",
    "exactly-once-ack",
    "no-duplicate-processing",
    "exactly-one-consumer",
    "redelivery-after-crash",
    "retry-backoff",
    "dead-letter",
    "even-distribution",
    "concurrency",
    "linear-scaling",
    "health-check",
    "graceful-shutdown",
    "partition-recovery",
)

# How the reference worker reports (its WORKER_EVENTS): every contract event, or
# only ``received`` and ``processed`` (the contract's minimum plus receipts), like
# a worker a user brings. The harness must judge both soundly.
REPORTING_MODES: Final = ("full", "minimal")

# Task formats (``harness.formats``): the wire format of a task and who publishes it.
FORMAT_CONTRACT_V1: Final = "contract-v1"
FORMAT_CELERY: Final = "celery"
FORMAT_DRAMATIQ: Final = "dramatiq"
TASK_FORMATS: Final = (FORMAT_CONTRACT_V1, FORMAT_CELERY, FORMAT_DRAMATIQ)

# -- verdict words ------------------------------------------------------------------

TRUE: Final = "true"
FALSE: Final = "false"
UNKNOWN: Final = "unknown"
WORDS: Final[dict[bool | None, str]] = {True: TRUE, False: FALSE, None: UNKNOWN}


def word(valid: bool | None) -> str:
    """``true``, ``false`` or ``unknown``."""
    return WORDS[valid]


# -- exit codes ---------------------------------------------------------------------

# Every command of the project (``harness``, the Locust load file) ends with one.
EXIT_OK: Final = 0  # every gated claim holds: PASS
EXIT_VIOLATED: Final = 1  # one is violated: FAIL
EXIT_UNDECIDED: Final = 2  # the evidence does not decide, or bad input
RUN_WORDS: Final[dict[int, str]] = {EXIT_OK: "PASS", EXIT_VIOLATED: "FAIL"}


def run_word(code: int) -> str:
    """The word of an exit code: PASS (0), FAIL (1), UNKNOWN (anything else)."""
    return RUN_WORDS.get(code, "UNKNOWN")
