"""What the broker says about the end of a run: the drain (the broker decides
when the work is over, the workers' word may only extend the wait), the
observation windows of the claims that need the record to reach past a bound,
and the final read of every queue the scenario names."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Final

from harness import vocab
from harness.broker import BrokerAdmin, QueueInfo
from harness.cluster.base import ClusterError
from harness.history import Recorder
from harness.live import LiveState
from harness.model import Scenario

DRAIN_POLL_S: Final = 0.5
# Consecutive empty polls before the drain counts as done...
DRAIN_STABLE_POLLS: Final = 3
# ...and they must span twice the management API's statistics interval, since its
# unacked counts lag by up to one interval: 500 ms on the brokers the harness
# starts, RabbitMQ's default 5 s on a broker it was given.
STATS_INTERVAL_OWNED_S: Final = 0.5
STATS_INTERVAL_DEFAULT_S: Final = 5.0
# The workers must have written no activity event (a task's, or ready; connection
# churn aside) for max(this, 3 x the longest task).
DRAIN_QUIET_MIN_S: Final = 2.0
# A worker's own in-flight report (received, no settlement yet) may hold a drain
# the broker calls done this much longer, never more: the worker's word can extend
# the wait, not veto the broker's evidence (acks are optional in the contract).
DRAIN_SELF_REPORT_EXTRA_S: Final = 10.0
FINAL_DRAIN_MAX: Final = 1_000_000
# How long the run may go on after the drain so that every judged claim's
# observation windows close (health's up bound is 30 s after the broker returns).
WINDOW_WAIT_MAX_S: Final = 45.0
WINDOW_POLL_S: Final = 0.5
# The claims whose checkers report ``record_needed_until_ts`` when undecided.
WINDOWED_CLAIMS: Final = frozenset({"health-check", "partition-recovery"})


class BrokerWatch:
    """The broker's evidence at the end of a run (see the module doc). Problems it
    finds go into ``problems``, the run's list."""

    def __init__(self, admin: BrokerAdmin, scenario: Scenario, recorder: Recorder,
                 live: LiveState, problems: list[str], owned_broker: bool,
                 read_ids: bool = True) -> None:
        self.admin = admin
        self.scenario = scenario
        self.recorder = recorder
        self.live = live
        self.problems = problems
        # The brokers the harness starts have a 0.5 s statistics interval; a broker
        # it was given has RabbitMQ's default, 5 s.
        self.owned_broker = owned_broker
        # False for queues the harness does not own (``--backend external``): the final
        # state is counted, never read (see ``capture_final_state``).
        self.read_ids = read_ids
        # The broker's semantics, read by capture_final_state (result.json's "broker").
        self.semantics: dict[str, Any] | None = None

    def wait_drained(self, timeout_s: float, longest_task_s: float = 0.0) -> bool:
        """Until the broker says the work is done (bounded by ``timeout_s``).

        The broker decides: the main and retry queues empty and nothing unacked on
        the main queue, over polls spanning twice the statistics interval; and the
        workers quiet (no task event and no ``ready`` for max(DRAIN_QUIET_MIN_S,
        3 x the longest task); a worker that only reconnects, refused over and
        over, holds no task),
        so a consumer that still holds deliveries the lagging counters do not show
        yet keeps the drain open. A worker's self-reported in-flight set extends
        the wait by at most DRAIN_SELF_REPORT_EXTRA_S. When the bound expires with
        the queues empty but deliveries held unacked by live connections, the
        holders are recorded (``drain.held``): the worker's failure, for
        exactly-once-ack to judge, not a missing observation."""
        queue = self.scenario.cluster.queue
        stats_s = (STATS_INTERVAL_OWNED_S if self.owned_broker
                   else STATS_INTERVAL_DEFAULT_S)
        stable_s = max(DRAIN_STABLE_POLLS * DRAIN_POLL_S, 2 * stats_s)
        # Bounded by a quarter of the drain bound: very long tasks must not make the
        # drain impossible.
        quiet_s = max(DRAIN_QUIET_MIN_S, min(3 * longest_task_s, timeout_s / 4))
        extra_s = max(DRAIN_SELF_REPORT_EXTRA_S, 3 * longest_task_s)
        deadline = time.monotonic() + timeout_s
        started = time.monotonic()
        empty_since: float | None = None
        unacked = depth = retry = 0
        while time.monotonic() < deadline:
            try:
                depth = self.admin.passive_depth(queue) or 0
                # Retry queues by name from the management API, their depth over AMQP:
                # the API's counts lag (seen: 0 for a TTL queue holding 30 messages).
                retry = sum(max(q.messages, self.admin.passive_depth(q.name) or 0)
                            for q in self.retry_queues())
                info = self.admin.queue_info(queue)
                unacked = info.unacked if info is not None else 0
            except (ClusterError, OSError) as exc:
                self.recorder.record(vocab.DRAIN_POLL_ERROR, "harness", error=str(exc))
                depth, retry, unacked = 1, 0, 0
            now = time.monotonic()
            if depth + retry + unacked == 0:
                empty_since = empty_since if empty_since is not None else now
            else:
                empty_since = None
            quiet = self.live.quiet_for() >= quiet_s
            self_reported = self.live.total_in_flight()
            if (empty_since is not None and now - empty_since >= stable_s and quiet
                    and (self_reported == 0 or now - empty_since >= extra_s)):
                self.recorder.record(vocab.DRAIN, "harness", complete=True,
                                     waited_s=round(now - started, 3),
                                     self_reported_in_flight=self_reported)
                return True
            time.sleep(DRAIN_POLL_S)
        held: list[dict[str, Any]] = []
        # Held: the broker's queues empty (main and retry: a message waiting out its
        # delay would come back to the main queue on its own), deliveries unacked,
        # the workers idle.
        if depth == 0 and retry == 0 and unacked > 0 and self.live.quiet_for() >= quiet_s:
            with contextlib.suppress(ClusterError, OSError):
                held = [{"connection": c.name or c.mgmt_name, "unacked": c.unacked,
                         "peer": f"{c.peer_host}:{c.peer_port}"}
                        for c in self.admin.connections() if c.unacked > 0]
        reason = (f"{unacked} deliveries held unacked by live consumers after {timeout_s} s "
                  "with the queues empty" if held else f"queues not empty after {timeout_s} s")
        self.recorder.record(vocab.DRAIN, "harness", complete=False, waited_s=timeout_s,
                             reason=reason, held=held, unacked=unacked)
        return False

    def retry_queues(self) -> list[QueueInfo]:
        """The queues that hold delayed retries (``ClusterSpec.retry_prefix``)."""
        prefix = self.scenario.cluster.retry_prefix
        return [] if prefix is None else self.admin.list_queues(prefix)

    def wait_windows(self) -> None:
        """Until no judged claim is undecided only because the record ends too soon
        (a health bound, a partition's recovery bound): bounded by WINDOW_WAIT_MAX_S,
        so a bug cannot escape to ``unknown`` by the run finishing early."""
        from harness.checkers import check_all
        from harness.checkers.index import NEEDED_UNTIL

        # Only the claims with observation windows: judging every claim of a large
        # history (a poison task looping) on every poll would cost more than it waits.
        claims = [c for c in self.scenario.claims if c in WINDOWED_CLAIMS]
        if not claims:
            return
        deadline = time.monotonic() + WINDOW_WAIT_MAX_S
        waited = False
        while time.monotonic() < deadline:
            # The record reaches "now" only through events: the harness's own mark
            # extends it while nothing else happens (a probe that never changes).
            if waited:
                self.recorder.record(vocab.WINDOW_WAIT, "harness")
            results = check_all(self.recorder.snapshot(), claims, self.scenario.params)
            needed = [float(r.evidence[NEEDED_UNTIL]) for r in results
                      if r.valid is None and isinstance(r.evidence.get(NEEDED_UNTIL), int | float)]
            if not needed:
                if waited:
                    self.recorder.record(vocab.WINDOWS_CLOSED, "harness")
                return
            waited = True
            time.sleep(min(WINDOW_POLL_S, max(0.0, max(needed) - time.time()) + 0.05))
        self.recorder.record(vocab.WINDOW_WAIT, "harness")
        self.recorder.record(vocab.WINDOWS_CLOSED, "harness", complete=False,
                             waited_s=WINDOW_WAIT_MAX_S)

    def drain_held(self) -> bool:
        """Did the drain end with deliveries held by idle consumers (``drain.held``)?"""
        drains = list(self.recorder.snapshot().of_type(vocab.DRAIN))
        return bool(drains and drains[-1].get("held"))

    def main_queue_ids(self) -> int:
        return sum(len(ev.get("ids") or ()) for ev in self.recorder.snapshot().of_type(
            vocab.FINAL_QUEUE) if ev.get("role") == "main")

    def check_contradiction(self) -> None:
        """A drain the broker called complete leaves nothing in the main queue: a
        final read that finds tasks there says the drain's evidence was wrong, so
        the run cannot count them as "still queued, so not lost"."""
        # Where the workers hold what waits (Dramatiq's .DQ: its worker holds delayed
        # messages unacked until due), the retry queues must be empty too.
        roles = {"main", "retry"} if self.scenario.cluster.retry_held_by_workers else {"main"}
        found = [ev for ev in self.recorder.snapshot().of_type(vocab.FINAL_QUEUE)
                 if ev.get("role") in roles and ev.get("ids")]
        if found:
            n = sum(len(ev.get("ids") or ()) for ev in found)
            self.recorder.record(vocab.DRAIN_CONTRADICTION, "harness", tasks=n)
            self.problems.append(f"the drain was declared complete, yet the final read found "
                                 f"{n} task(s) in the {' and '.join(sorted(roles))} queue(s)")

    def capture_final_state(self) -> None:
        """Record the broker's semantics, then what is left in every queue the
        scenario names (destructive read). For queues the harness does not own
        (``read_ids`` False) only their depth, by a passive declare: an empty queue
        is fully known (no id left), a non-empty one is recorded ``partial`` (its ids
        unread), which the checkers treat as an unread final state."""
        c = self.scenario.cluster
        queues: list[tuple[str, str]] = [(c.queue, "main"), (c.dlq, "dlq")]
        try:
            queues += [(q.name, "retry") for q in self.retry_queues()]
        except (ClusterError, OSError) as exc:
            self.problems.append(f"could not list the retry queues: {exc}")
        try:
            self.semantics = self.admin.semantics([name for name, _ in queues])
        except (ClusterError, OSError) as exc:
            # What the broker is does not decide a verdict: said, not a run problem.
            self.semantics = {"error": str(exc)}
        self.recorder.record(vocab.BROKER_SEMANTICS, "harness", **self.semantics)
        for name, role in queues:
            try:
                before = self.admin.passive_depth(name)
                if not self.read_ids:
                    depth = before or 0
                    self.recorder.record(vocab.FINAL_QUEUE, "harness", queue=name, role=role,
                                         ids=[], depth=depth, ok=True,
                                         exists=before is not None, partial=depth > 0,
                                         counted_only=True)
                    continue
                reasons: dict[str, str] = {}
                ids = self.admin.drain_ids(name, FINAL_DRAIN_MAX,
                                           reasons=reasons if role == "dlq" else None)
                # depth is the broker's count; ids may be fewer only if the read was cut
                # off at FINAL_DRAIN_MAX, which checkers then treat as partial.
                extra: dict[str, Any] = {"death_reasons": reasons} if role == "dlq" else {}
                self.recorder.record(vocab.FINAL_QUEUE, "harness", queue=name, role=role, ids=ids,
                                     depth=max(before or 0, len(ids)), ok=True,
                                     exists=before is not None or bool(ids),
                                     partial=(before or 0) > len(ids), **extra)
            except (ClusterError, OSError) as exc:
                self.recorder.record(vocab.FINAL_QUEUE, "harness", queue=name, role=role, ids=[],
                                     depth=0, ok=False, error=str(exc))
                self.problems.append(f"could not read queue {name}: {exc}")
