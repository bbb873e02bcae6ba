"""The scenario model: what a validated scenario YAML becomes.

``harness.scenario`` parses and validates the YAML into these dataclasses (and
names file, line and field on any error); everything downstream only sees these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from harness import vocab

# The claim ids, the faults and the reporting modes: ``harness.vocab``.
CLAIMS = vocab.CLAIMS
FAULTS = vocab.FAULTS

# Targets: one of these words, or a worker name ("worker-2").
REPORTING_MODES = vocab.REPORTING_MODES

TARGET_WORDS: Final = ("one", "random", "busiest", "all", "last", "killed")

# Values of ``crash`` directive.
CRASH_POINTS: Final = ("during", "after_process")


@dataclass(frozen=True)
class Distribution:
    """A directive value: a constant, ``{uniform: [lo, hi]}`` or ``{choice: [...]}``."""

    kind: str  # "const" | "uniform" | "choice"
    values: tuple[Any, ...]


@dataclass(frozen=True)
class TaskGroup:
    """``count`` tasks with their own directives (placed at seeded positions)."""

    count: int
    directives: dict[str, Distribution] = field(default_factory=dict)
    poison: bool = False  # body is not JSON


@dataclass(frozen=True)
class Workload:
    tasks: int = 100
    directives: dict[str, Distribution] = field(default_factory=dict)
    groups: tuple[TaskGroup, ...] = ()
    rate_per_s: float | None = None  # publish rate limit; None = as fast as confirms allow
    drain_timeout_s: float = 120.0
    publish_timeout_s: float = 60.0


@dataclass(frozen=True)
class ClusterSpec:
    workers: int = 3
    concurrency: int = 10
    queue: str = "go.logger"
    dead_letter_queue: str | None = None  # default "<queue>.dlq"
    retry_base_ms: int = 1000
    max_attempts: int = 4
    heartbeat_s: int = 10
    grace_s: float = 10.0  # SIGTERM grace period
    restart_policy: str = "never"  # "never" | "always" (like compose's restart: always)
    queue_type: str = "classic"  # "classic" | "quorum"
    # x-delivery-limit of a quorum queue (RABBITMQ_DELIVERY_LIMIT): the broker
    # dead-letters a message delivered more often. None: no limit.
    delivery_limit: int | None = None
    # The broker's ``consumer_timeout`` (ms): a delivery unacked this long gets its
    # channel closed (406 PRECONDITION_FAILED) and requeued. None: the broker's own.
    consumer_timeout_ms: int | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # The tasks' wire format (``vocab.TASK_FORMATS``, ``harness.formats``): it names
    # the queues the checkers observe unless the scenario or a flag names them.
    task_format: str = vocab.FORMAT_CONTRACT_V1

    @property
    def dlq(self) -> str:
        """The dead-letter queue: the scenario's, else the format's (Dramatiq's
        ``<queue>.XQ``; ``<queue>.dlq`` for contract v1, and for Celery, which has
        none of its own: a queue that does not exist reads as empty)."""
        if self.dead_letter_queue:
            return self.dead_letter_queue
        if self.task_format == vocab.FORMAT_DRAMATIQ:
            return f"{self.queue}.XQ"
        return f"{self.queue}.dlq"

    @property
    def retry_held_by_workers(self) -> bool:
        """Do the workers hold delayed retries unacked until due (Dramatiq's .DQ), rather
        than the broker holding them (a TTL queue)?"""
        return self.task_format == vocab.FORMAT_DRAMATIQ

    @property
    def retry_prefix(self) -> str | None:
        """Queues whose names start so hold delayed retries (their depth is work not
        yet done): contract v1's ``<queue>.retry.*``, Dramatiq's ``<queue>.DQ``;
        Celery has none (a countdown retry goes back to the work queue)."""
        if self.task_format == vocab.FORMAT_CONTRACT_V1:
            return f"{self.queue}.retry."
        if self.task_format == vocab.FORMAT_DRAMATIQ:
            return f"{self.queue}.DQ"
        return None


@dataclass(frozen=True)
class When:
    """When a schedule step fires; measured from the previous step's firing.

    Exactly one of: ``after_s`` (seconds), ``processed`` (the run's total count of
    ``processed`` events reaches N), ``holding_unacked`` (some worker holds at
    least N unacked tasks).
    """

    after_s: float | None = None
    processed: int | None = None
    holding_unacked: int | None = None
    timeout_s: float = 60.0  # give up waiting; the step is recorded as not fired


@dataclass(frozen=True)
class Step:
    when: When
    fault: str
    target: str = "one"
    duration_s: float | None = None  # heal after this long (pause, partition, ...)
    count: int | None = None  # for ``scale``: the new number of workers
    line: int = 0  # where it was written, for messages


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    claims: tuple[str, ...]
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    workload: Workload = field(default_factory=Workload)
    schedule: tuple[Step, ...] = ()
    description: str = ""
    guide: str = ""  # the guide's words this scenario tests
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-claim checker params
