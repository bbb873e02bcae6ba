"""The consumer: connection, topology, consume, ack, retry, dead-letter, reconnect.

Threads:

* the main thread owns the pika ``BlockingConnection`` (the "connection
  thread"). It loops on ``process_data_events(time_limit=0.2)`` so heartbeats
  flow while tasks run, and it is the only thread that touches pika objects;
* a ``ThreadPoolExecutor`` of WORKER_CONCURRENCY threads runs the tasks. A pool
  thread never touches pika: it puts its outcome on a completion queue and asks
  the connection thread to drain that queue with
  ``connection.add_callback_threadsafe``. The main loop also drains after every
  ``process_data_events`` call, so an outcome whose wake-up call was lost with
  a dying connection is still settled (as ``ack_failed``).

Every delivery records the connection generation it arrived on. Delivery tags
are only valid on their own channel, so an outcome from an older generation is
never acked on a newer connection: it is reported as ``ack_failed`` and the
broker redelivers the message (it was unacked when its connection died).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from worker.bugs import (
    ACK_AND_DROP_WHEN_BUSY,
    ACK_BEFORE_PROCESS,
    ACK_BEFORE_REPUBLISH,
    AUTO_ACK,
    BEAT_WHEN_IDLE,
    DEAD_LETTER_ON_REDELIVERY,
    DOUBLE_ACK,
    EXCLUSIVE_CONSUMER,
    FIXED_DELAY_RETRY,
    IGNORE_CONCURRENCY,
    IGNORE_DELIVERY_LIMIT,
    NEVER_ACK_REDELIVERED,
    NO_BACKOFF,
    NO_DEAD_LETTER_EXCHANGE,
    NO_RECONNECT,
    REQUEUE_ON_FAILURE,
    SIDE_EFFECT_EVERY_ATTEMPT,
    SIGTERM_ACKS_INFLIGHT,
    STALE_ACK_AFTER_TWO_RECONNECTS,
    TRANSIENT_RETRY_QUEUES,
    UNLIMITED_PREFETCH,
)
from worker.config import Config
from worker.events import EventEmitter
from worker.health import HealthState
from worker.tasks import (
    PermanentError,
    PoisonError,
    Task,
    TaskContext,
    TaskError,
    TransientError,
    message_task_id,
    parse_message,
    run_task,
)

log = logging.getLogger("worker")

POLL_S: Final = 0.2  # upper bound of one process_data_events call
RECONNECT_MIN_S: Final = 0.25
ATTEMPT_HEADER: Final = "x-attempt"
MAX_ATTEMPT_HEADER: Final = 1_000_000


class FatalError(Exception):
    """A condition retrying cannot fix (e.g. conflicting queue arguments): exit 2."""


class _Reconnect(Exception):
    """Leave the consume loop and reconnect (reason in the message)."""


def attempt_of(properties: BasicProperties) -> int:
    """The attempt number from header ``x-attempt`` (absent or invalid = 1)."""
    headers = properties.headers or {}
    raw = headers.get(ATTEMPT_HEADER)
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    try:
        value = int(raw) if raw is not None and not isinstance(raw, bool) else 1
    except (TypeError, ValueError):
        return 1
    return min(max(value, 1), MAX_ATTEMPT_HEADER)


MAX_REPLY_TO: Final = 255  # AMQP's limit on a routing key (a queue name)


@dataclass
class Delivery:
    generation: int
    delivery_tag: int
    redelivered: bool
    properties: BasicProperties
    body: bytes
    task_id: str | None
    attempt: int
    # True only under WORKER_BUG=auto-ack / ack-before-process: the broker already
    # forgot this message, so there is nothing left to ack or nack.
    settled_on_receipt: bool = False


@dataclass
class Completion:
    delivery: Delivery
    kind: str  # "ack" | "retry" | "dead_letter"
    reason: str  # for dead_letter: permanent | max_attempts | poison
    processed_ts: float | None = None  # when the side effect was done (for a completion)


def reconnect_delays(max_s: float, rng: random.Random | None = None) -> Callable[[int], float]:
    """Capped exponential backoff with jitter: 0.25 s doubling to ``max_s``.

    The jitter takes the delay uniformly from [d/2, d] so workers restarted
    together do not reconnect in lockstep.
    """
    r = rng or random.Random()

    def delay(failures: int) -> float:
        base: float = min(max_s, RECONNECT_MIN_S * float(1 << min(failures, 30)))
        return base * (0.5 + 0.5 * r.random())

    return delay


class Worker:
    def __init__(self, config: Config, events: EventEmitter, health: HealthState) -> None:
        self.cfg = config
        self.events = events
        self.health = health
        pool_size = config.concurrency
        if config.bug == IGNORE_CONCURRENCY:
            # The pool was built with its default size of 1 (the WORKER_CONCURRENCY value
            # only reached basic_qos), so tasks run one at a time while prefetch stays.
            pool_size = 1
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="task")
        self._completions: queue.Queue[Completion] = queue.Queue()
        self._stop = threading.Event()
        self._force = threading.Event()
        self._stop_reason = ""
        self._generation = 0
        self._conn: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._pub: BlockingChannel | None = None
        self._consumer_tag: str | None = None
        self._in_flight_lock = threading.Lock()
        self._in_flight = 0
        self._double_acked = -1  # WORKER_BUG=double-ack: the generation it last did so
        self._draining = False
        self._backoff = reconnect_delays(config.reconnect_max_s)

    # -- signals ---------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        if self._stop.is_set():
            log.warning("second %s: leaving without waiting for in-flight tasks", reason)
            self._force.set()
            return
        self._stop_reason = reason
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # -- in-flight accounting ------------------------------------------------------
    def _in_flight_add(self, n: int) -> int:
        with self._in_flight_lock:
            self._in_flight += n
            value = self._in_flight
        self.health.set(in_flight=value)
        return value

    @property
    def in_flight(self) -> int:
        with self._in_flight_lock:
            return self._in_flight

    # -- main loop -------------------------------------------------------------------
    def run(self) -> int:
        """Run until SIGTERM/SIGINT. Returns the exit code (0, or 2 on FatalError)."""
        failures = 0
        log.info("worker %s: queue %s on %s, concurrency %d, prefetch %d",
                 self.cfg.worker_id, self.cfg.queue, self.cfg.broker_display(),
                 self.cfg.concurrency, self.cfg.prefetch)
        try:
            while not self._stop.is_set():
                try:
                    self._connect()
                    failures = 0
                    self._consume_loop()
                except _Reconnect as exc:
                    self._lost(str(exc))
                except pika.exceptions.AMQPError as exc:
                    self._lost(_describe(exc))
                except OSError as exc:
                    self._lost(f"{type(exc).__name__}: {exc}")
                if self._stop.is_set():
                    break
                if self.cfg.bug == NO_RECONNECT and self._generation > 0:
                    # Only the start-up connect was wrapped in a retry loop; after a loss the
                    # process idles (health answers 503) until it is stopped.
                    while not self._stop.is_set():
                        self._wait(1.0)
                    break
                delay = self._backoff(failures)
                failures += 1
                log.info("reconnecting in %.2f s", delay)
                self._wait(delay)
        except FatalError as exc:
            print(f"worker: {exc}", flush=True, file=sys.stderr)
            self._close_connection()
            self._pool.shutdown(wait=False, cancel_futures=True)
            return 2
        return self._shutdown()

    def _wait(self, seconds: float) -> None:
        """Sleep while disconnected, settling finished tasks as ack_failed."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            self._drain()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, POLL_S))

    def _connect(self) -> None:
        params = self.cfg.connection_parameters()
        conn = pika.BlockingConnection(params)
        self._generation += 1
        self._conn = conn
        self.health.set(connected=True, consuming=False)
        self.events.emit("connected", generation=self._generation)
        self._channel = conn.channel()
        self._channel.add_on_cancel_callback(self._on_broker_cancel)
        self._pub = conn.channel()
        self._pub.confirm_delivery()
        self._declare_topology(self._channel)
        bug = self.cfg.bug
        # WORKER_BUG=unlimited-prefetch: "0 = no limit, more throughput": one consumer
        # then takes the whole backlog (and only WORKER_CONCURRENCY run at a time).
        prefetch = 0 if bug == UNLIMITED_PREFETCH else self.cfg.prefetch
        self._channel.basic_qos(prefetch_count=prefetch)
        if self._stop.is_set():
            return
        self._consumer_tag = self._channel.basic_consume(
            self.cfg.queue, self._on_message,
            # WORKER_BUG=auto-ack: "acks are slow": the broker forgets each message as it
            # sends it (and ignores the prefetch), so a dying worker loses what it holds.
            auto_ack=bug == AUTO_ACK,
            # WORKER_BUG=exclusive-consumer: "each message goes to exactly one pod" read as
            # "one consumer per queue": every other worker gets ACCESS_REFUSED.
            exclusive=bug == EXCLUSIVE_CONSUMER,
        )
        self.health.set(consuming=True)
        self.events.emit("ready", queue=self.cfg.queue, generation=self._generation)

    def _declare_topology(self, ch: BlockingChannel) -> None:
        cfg = self.cfg
        main_args: dict[str, Any] = {"x-dead-letter-exchange": cfg.dlx}
        if cfg.bug == NO_DEAD_LETTER_EXCHANGE:
            # The DLX and DLQ get declared but the work queue never points at them, so a
            # basic_nack(requeue=False) drops the message.
            del main_args["x-dead-letter-exchange"]
        if cfg.queue_type == "quorum":
            main_args["x-queue-type"] = "quorum"
            if cfg.delivery_limit and cfg.bug != IGNORE_DELIVERY_LIMIT:
                # WORKER_BUG=ignore-delivery-limit: "our tasks never crash a worker":
                # a poison message that does crashes one worker after another, forever.
                main_args["x-delivery-limit"] = cfg.delivery_limit
        try:
            ch.exchange_declare(cfg.dlx, exchange_type="direct", durable=True)
            ch.queue_declare(cfg.dlq, durable=True)
            ch.queue_bind(cfg.dlq, cfg.dlx, routing_key=cfg.queue)
            ch.queue_declare(cfg.queue, durable=True, arguments=main_args)
            for delay_ms in cfg.retry_delays_ms():
                ch.queue_declare(
                    cfg.retry_queue(delay_ms),
                    # WORKER_BUG=transient-retry-queues: "a retry waits seconds there, it
                    # need not survive a restart": a broker restart deletes the queue
                    # with the retries in it. Only a restart while retries wait shows it.
                    durable=cfg.bug != TRANSIENT_RETRY_QUEUES,
                    arguments={
                        "x-message-ttl": delay_ms,
                        "x-dead-letter-exchange": "",
                        "x-dead-letter-routing-key": cfg.queue,
                    },
                )
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code in (403, 406):  # ACCESS_REFUSED, PRECONDITION_FAILED
                raise FatalError(
                    f"cannot declare the topology of queue {cfg.queue!r}: {exc.reply_text} "
                    "(delete the conflicting queue/exchange or change RABBITMQ_QUEUE/DLX/DLQ)"
                ) from None
            raise

    def _consume_loop(self) -> None:
        conn = self._conn
        assert conn is not None
        while not self._stop.is_set():
            conn.process_data_events(time_limit=POLL_S)
            self._drain()
            # The broker can close a channel and keep the connection (406 for an ack of
            # an unknown delivery tag, a consumer_timeout): a blocking connection raises
            # nothing then, and a consumer on a closed channel gets no more deliveries.
            for ch in (self._channel, self._pub):
                if ch is None or not ch.is_open:
                    raise _Reconnect("a channel was closed by the broker")

    def _lost(self, reason: str) -> None:
        self.health.set(connected=False, consuming=False)
        self.events.emit("connection_lost", reason=reason)
        log.warning("connection lost: %s", reason)
        self._close_connection()
        self._drain()

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._channel = None
        self._pub = None
        self._consumer_tag = None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception as exc:  # closing a half-dead connection may fail any way
                log.debug("close failed: %s", exc)

    def _on_broker_cancel(self, frame: Any) -> None:
        # Queue deleted or a quorum leader moved: reconnect and redeclare.
        self.health.set(consuming=False)
        raise _Reconnect("consumer cancelled by broker")

    # -- delivery -> pool ---------------------------------------------------------
    def _on_message(
        self, ch: BlockingChannel, method: Basic.Deliver, props: BasicProperties, body: bytes
    ) -> None:
        attempt = attempt_of(props)
        task_id = message_task_id(body, props.message_id)
        d = Delivery(
            generation=self._generation,
            delivery_tag=method.delivery_tag,
            redelivered=bool(method.redelivered),
            properties=props,
            body=body,
            task_id=task_id,
            attempt=attempt,
            settled_on_receipt=self.cfg.bug == AUTO_ACK,
        )
        self.events.emit("received", id=task_id, redelivered=d.redelivered, attempt=attempt)
        if self.cfg.bug == ACK_BEFORE_PROCESS:
            # "Ack at once so a slow task does not hold the message": from here on only
            # this process knows about the task, and it dies with it.
            ch.basic_ack(method.delivery_tag)
            d.settled_on_receipt = True
            self.events.emit("acked", id=task_id, reason="processed")
        if self.cfg.bug == ACK_AND_DROP_WHEN_BUSY and self.in_flight >= max(
                1, self.cfg.concurrency // 2):
            # "The internal buffer is full: ack it so the broker does not redeliver, and
            # shed the load": the task is gone, and only this process knew.
            ch.basic_ack(method.delivery_tag)
            self.events.emit("acked", id=task_id, reason="processed")
            return
        self._in_flight_add(1)
        self._pool.submit(self._process, d)

    def _process(self, d: Delivery) -> None:
        """Pool thread: run the task, then hand the outcome to the connection thread."""
        try:
            completion = self._run(d)
        except BaseException as exc:  # never lose a delivery to a bug in _run
            log.exception("task %s: unexpected error", d.task_id)
            completion = Completion(d, "retry" if d.attempt < self.cfg.max_attempts
                                    else "dead_letter", "max_attempts")
            self.events.emit("failed", id=d.task_id, attempt=d.attempt, permanent=False,
                             error=f"{type(exc).__name__}: {exc}")
        self._completions.put(completion)
        self._wake()

    def _run(self, d: Delivery) -> Completion:
        first = not d.redelivered and d.attempt == 1
        task: Task | None = None
        if self.cfg.bug == DEAD_LETTER_ON_REDELIVERY and d.redelivered:
            # A "poison guard": "a message that comes back must have crashed a pod", so
            # every redelivery goes to the DLQ, including the work of a pod that was killed.
            self._failed(d, True, "poison guard: redelivered")
            return Completion(d, "dead_letter", "poison")
        try:
            task = parse_message(d.body, d.properties.message_id)

            def processed(started_ts: float) -> None:
                self.events.emit_required(
                    "processed", id=d.task_id, attempt=d.attempt, started_ts=started_ts
                )

            run_task(task, d.attempt, first, TaskContext(emit_processed=processed))
            return Completion(d, "ack", "processed", processed_ts=time.time())
        except PoisonError as exc:
            self._failed(d, True, f"poison: {exc}")
            return Completion(d, "dead_letter", "poison")
        except PermanentError as exc:
            self._failed(d, True, str(exc))
            return Completion(d, "dead_letter", "permanent")
        except (TransientError, OSError, ValueError) as exc:
            # OSError/ValueError: the processed line could not be written.
            error = str(exc) if isinstance(exc, TaskError) else f"{type(exc).__name__}: {exc}"
            if self.cfg.bug == SIDE_EFFECT_EVERY_ATTEMPT and isinstance(exc, TransientError):
                # The side effect ran before the step that failed, so a retry does it again.
                self.events.emit("processed", id=d.task_id, attempt=d.attempt,
                                 started_ts=time.time())
            self._failed(d, False, error)
            if d.attempt < self.cfg.max_attempts:
                return Completion(d, "retry", "retry")
            return Completion(d, "dead_letter", "max_attempts")

    def _failed(self, d: Delivery, permanent: bool, error: str) -> None:
        self.events.emit("failed", id=d.task_id, attempt=d.attempt, permanent=permanent,
                         error=error)

    def _wake(self) -> None:
        conn = self._conn
        if conn is None:
            return
        # Closed or closing: the main loop drains anyway.
        with contextlib.suppress(Exception):
            conn.add_callback_threadsafe(self._drain)

    # -- settlement on the connection thread -----------------------------------------
    def _drain(self) -> None:
        # Every loop of the worker (consuming, waiting to reconnect, shutting down)
        # comes here each POLL_S: the liveness beat (worker/health.py).
        if self.cfg.bug != BEAT_WHEN_IDLE or self.in_flight == 0:
            self.health.beat()
        if self._draining:  # no reentrance from a callback inside a blocking call
            return
        self._draining = True
        try:
            while True:
                try:
                    c = self._completions.get_nowait()
                except queue.Empty:
                    return
                try:
                    self._settle(c)
                finally:
                    self._in_flight_add(-1)
        finally:
            self._draining = False

    def _settle(self, c: Completion) -> None:
        d = c.delivery
        ch = self._channel
        if d.settled_on_receipt:
            self._settle_forgotten(c)
            return
        if self._stale(d):
            self.events.emit(
                "ack_failed", id=d.task_id, outcome=c.kind,
                reason=f"delivery of connection {d.generation}, now connection {self._generation}",
            )
            return
        if ch is None or not ch.is_open:
            self.events.emit("ack_failed", id=d.task_id, outcome=c.kind,
                             reason="connection lost before the ack")
            return
        try:
            if c.kind == "ack":
                if self.cfg.bug == NEVER_ACK_REDELIVERED and d.redelivered:
                    # "A redelivered task was probably done already": processed, never
                    # acked, held until the connection closes.
                    return
                self._complete(ch, c)
                ch.basic_ack(d.delivery_tag)
                self.events.emit("acked", id=d.task_id, reason="processed")
                if self.cfg.bug == DOUBLE_ACK and self._double_acked != self._generation:
                    # A retry of the ack "to be sure": the broker closes the channel with
                    # 406 PRECONDITION_FAILED (unknown delivery tag) and requeues all the
                    # channel held unacked, once per connection.
                    self._double_acked = self._generation
                    ch.basic_ack(d.delivery_tag)
            elif c.kind == "retry":
                self._retry(ch, d)
            else:
                # WORKER_BUG=requeue-on-failure: "nack it so it is not lost": requeue=True puts
                # a task that can never succeed straight back, and it loops forever.
                ch.basic_nack(d.delivery_tag, requeue=self.cfg.bug == REQUEUE_ON_FAILURE)
                self.events.emit("dead_lettered", id=d.task_id, reason=c.reason,
                                 attempt=d.attempt)
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.events.emit("ack_failed", id=d.task_id, reason=_describe(exc), outcome=c.kind)
            raise

    def _stale(self, d: Delivery) -> bool:
        """Was ``d`` delivered on an earlier connection? Its tag means nothing on this
        one (an ack of it would ack another message, or an unknown tag: 406)."""
        if self.cfg.bug == STALE_ACK_AFTER_TWO_RECONNECTS:
            # "One bit is enough to tell the old connection from the new one": a flag
            # that flips on each reconnect. After two reconnects within one task's run
            # the old delivery looks current, and its tag is acked on the new channel.
            return d.generation % 2 != self._generation % 2
        return d.generation != self._generation

    def _complete(self, ch: BlockingChannel, c: Completion) -> None:
        """The optional completion of contract v1 (docs/worker-contract.md): a task
        with a ``reply_to`` gets a message there after its side effect and before its
        ack, for a load generator's publish-to-processed latency and loss by id. Not
        mandatory and not confirmed: the reply queue is the publisher's, and a
        completion lost with it costs a figure, never the task."""
        d = c.delivery
        reply_to = d.properties.reply_to
        if not reply_to or len(reply_to) > MAX_REPLY_TO or d.task_id is None:
            return
        body = json.dumps({"id": d.task_id, "worker": self.cfg.worker_id,
                           "processed_ts": c.processed_ts or time.time(),
                           "redelivered": d.redelivered, "attempt": d.attempt})
        ch.basic_publish("", reply_to, body.encode(),
                         BasicProperties(content_type="application/json",
                                         correlation_id=d.properties.correlation_id,
                                         message_id=d.task_id))

    def _settle_forgotten(self, c: Completion) -> None:
        """Settle a delivery the broker no longer holds (WORKER_BUG=auto-ack/ack-before-process).

        Nothing can be acked or nacked: a success is only logged, a retry or a
        dead-letter is a publish (to the tier queue, or to the DLX).
        """
        d = c.delivery
        if c.kind == "ack":
            if self.cfg.bug == AUTO_ACK:  # the ack-before-process code said "acked" on receipt
                self.events.emit("acked", id=d.task_id, reason="processed")
            return
        ch, pub = self._channel, self._pub
        if ch is None or not ch.is_open or pub is None or not pub.is_open:
            self.events.emit("ack_failed", id=d.task_id, outcome=c.kind,
                             reason="connection lost before the publish (message already acked)")
            return
        try:
            if c.kind == "retry":
                self._retry(ch, d)
                return
            try:
                pub.basic_publish(self.cfg.dlx, self.cfg.queue, d.body, d.properties,
                                  mandatory=True)
            except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
                log.error("dead-letter publish of %s not confirmed (%s): task dropped",
                          d.task_id, type(exc).__name__)
                return
            self.events.emit("dead_lettered", id=d.task_id, reason=c.reason, attempt=d.attempt)
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.events.emit("ack_failed", id=d.task_id, reason=_describe(exc), outcome=c.kind)
            raise

    def _retry(self, ch: BlockingChannel, d: Delivery) -> None:
        delay_ms = self.cfg.retry_delay_ms(d.attempt)
        if self.cfg.bug == FIXED_DELAY_RETRY:
            # "One retry queue is enough": every attempt waits the first tier's delay.
            delay_ms = self.cfg.retry_delay_ms(1)
        target = self.cfg.retry_queue(delay_ms)
        if self.cfg.bug == NO_BACKOFF:
            # The delay is computed and logged, but the copy goes back to the work queue, so
            # the next attempt starts at once.
            target = self.cfg.queue
        p = d.properties
        headers = dict(p.headers or {})
        headers[ATTEMPT_HEADER] = d.attempt + 1
        props = BasicProperties(
            message_id=p.message_id,
            content_type=p.content_type or "application/json",
            correlation_id=p.correlation_id,
            reply_to=p.reply_to,  # the completion of the attempt that succeeds goes there
            delivery_mode=2,
            headers=headers,
        )
        if self.cfg.bug == ACK_BEFORE_REPUBLISH and not d.settled_on_receipt:
            # Ack first "so it cannot be processed twice", wait out the backoff in the
            # process, then a fire-and-forget publish straight to the work queue (no
            # confirm): a worker that dies during the wait loses the task.
            ch.basic_ack(d.delivery_tag)
            self.events.emit("acked", id=d.task_id, reason="retry")
            conn = self._conn

            def republish() -> None:
                if ch.is_open:
                    ch.basic_publish("", self.cfg.queue, d.body, props)

            if conn is not None:
                conn.call_later(delay_ms / 1000.0, republish)
            self.events.emit("retry_scheduled", id=d.task_id, attempt=d.attempt + 1,
                             delay_ms=delay_ms, queue=self.cfg.queue)
            return
        pub = self._pub
        assert pub is not None
        try:
            pub.basic_publish("", target, d.body, props, mandatory=True)
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            if d.settled_on_receipt:  # auto-ack / ack-before-process: no original to keep
                log.error("retry publish of %s to %s not confirmed (%s): task dropped",
                          d.task_id, target, type(exc).__name__)
                return
            # Not confirmed: keep the original, the broker redelivers it.
            log.warning("retry publish of %s to %s not confirmed (%s): requeueing",
                        d.task_id, target, type(exc).__name__)
            ch.basic_nack(d.delivery_tag, requeue=True)
            return
        self.events.emit("retry_scheduled", id=d.task_id, attempt=d.attempt + 1,
                         delay_ms=delay_ms, queue=target)
        if d.settled_on_receipt:
            return
        ch.basic_ack(d.delivery_tag)
        self.events.emit("acked", id=d.task_id, reason="retry")

    # -- shutdown --------------------------------------------------------------------------
    def _shutdown(self) -> int:
        reason = self._stop_reason or "stop"
        self.health.set(shutting_down=True, consuming=False)
        conn, ch = self._conn, self._channel
        deadline = time.monotonic() + self.cfg.shutdown_grace_s
        if conn is not None and conn.is_open and ch is not None:
            try:
                if self._consumer_tag is not None and ch.is_open:
                    ch.basic_cancel(self._consumer_tag)
                self._consumer_tag = None
                if self.cfg.bug == SIGTERM_ACKS_INFLIGHT and self.in_flight > 0:
                    # "Ack what we hold so the broker does not hand it to another pod as a
                    # duplicate", then leave without finishing it: every in-flight task is lost.
                    ch.basic_ack(delivery_tag=0, multiple=True)
                else:
                    while self.in_flight > 0 and time.monotonic() < deadline and \
                            not self._force.is_set():
                        conn.process_data_events(time_limit=POLL_S)
                        self._drain()
                    self._drain()
            except (pika.exceptions.AMQPError, OSError) as exc:
                self.health.set(connected=False)
                self.events.emit("connection_lost", reason=_describe(exc))
                self._drain()
        else:
            # Nothing can be acked without a connection; finished tasks become ack_failed.
            self._drain()
        left = self.in_flight
        self.events.emit("shutdown", reason=reason, in_flight=left)
        self._close_connection()
        self.health.set(connected=False)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if left:
            log.warning("%d task(s) still running after the grace period: left unacked", left)
        return 0


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"[:300]
