"""The Workload role: the harness as a client that publishes tasks.

``Publisher`` publishes the run's tasks (``harness.tasks``) with publisher
confirms and records one ``publish`` event per task (outcome ``ok`` | ``fail`` |
``unknown``, see ``harness.history``).

Outcomes:
- ``ok``      the broker confirmed the message (Basic.Ack, no Basic.Return before it);
- ``fail``    the broker nacked it, returned it as unroutable (mandatory), or it was
              never sent (``error`` "not sent ..."): definitely not in the queue;
- ``unknown`` sent, but no answer came (the connection died, or the time ran out):
              it may or may not be in the queue. Unknown is not failure.

The publisher runs pika's ``SelectConnection`` ioloop in the calling thread and keeps
up to ``window`` unconfirmed messages outstanding (pipelined confirms).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import pika
import pika.exceptions
import pika.frame
import pika.spec
from pika.adapters.select_connection import SelectConnection

from harness import vocab
from harness.cluster.base import ClusterError
from harness.history import Recorder
from harness.tasks import Task

SOURCE: Final = "workload"
MAX_RECONNECT_ATTEMPTS: Final = 5
RECONNECT_BASE_DELAY_S: Final = 0.5
RECONNECT_MAX_DELAY_S: Final = 8.0
FIRST_CONNECT_ATTEMPTS: Final = 3
MAX_CONNECTIONS: Final = 20  # connections opened in one publish call, reconnects included
CONNECT_TIMEOUT_S: Final = 10.0
TICK_S: Final = 0.05  # how often the ioloop looks at ``stop`` and the deadline
CLOSE_GRACE_S: Final = 1.0  # after the deadline, how long a clean close may take
HEARTBEAT_S: Final = 10


# --------------------------------------------------------------------------- publisher


@dataclass(frozen=True)
class PublishStats:
    ok: int
    fail: int
    unknown: int
    elapsed_s: float
    rate: float  # confirmed (ok) messages per second over elapsed_s
    connections: int = 1  # connections opened (1 + successful reconnects)

    @property
    def total(self) -> int:
        return self.ok + self.fail + self.unknown


class _Attempt:
    """The state of one connection: its channel, delivery tags and returns."""

    def __init__(self) -> None:
        self.connection: SelectConnection | None = None
        self.channel: Any = None
        self.opened = False
        self.open_error: str | None = None
        self.close_reason: str | None = None
        self.next_tag = 1
        self.outstanding: OrderedDict[int, int] = OrderedDict()  # delivery tag -> task index
        self.returned: dict[int, str] = {}  # task index -> reply text
        self.finished = False  # we asked for the close (done, stopped, timed out)


class Publisher:
    """Publishes tasks with pipelined publisher confirms; one ``publish`` event each.

    ``publish`` raises ``ClusterError`` only when the first connection cannot be
    opened at all; every later broker fault ends in recorded outcomes.
    """

    def __init__(
        self,
        amqp_url: str,
        queue: str,
        recorder: Recorder,
        window: int = 1000,
        timeout_s: float = 60.0,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        try:
            self._params = pika.URLParameters(amqp_url)
        except Exception as e:  # pika raises several kinds for a bad URL
            raise ValueError(f"bad AMQP URL {amqp_url!r}: {e}") from None
        if "heartbeat" not in amqp_url:
            self._params.heartbeat = HEARTBEAT_S
        self._params.connection_attempts = 1
        self._params.retry_delay = 0
        # Named, so the broker's connection list tells the harness's own from the
        # workers' (``cluster.external`` checks a kill by a worker's connection closing).
        self._params.client_properties = {"connection_name": "harness-publisher"}
        self.amqp_url = amqp_url
        self.queue = queue
        self.recorder = recorder
        self.window = window
        self.timeout_s = timeout_s
        self._reset([], None, None)

    # -- state ------------------------------------------------------------------
    def _reset(
        self,
        tasks: Sequence[Task],
        rate_per_s: float | None,
        stop: threading.Event | None,
    ) -> None:
        self._tasks = tasks
        self._rate = rate_per_s
        self._stop = stop
        self._next = 0  # index of the next task to send
        self._done: list[bool] = [False] * len(tasks)
        self._counts = {"ok": 0, "fail": 0, "unknown": 0}
        self._index_of: dict[str, int] = {}
        self._deadline = 0.0
        self._tokens = 0.0
        self._last_refill = 0.0
        self._stopping = False  # stop requested: send nothing more, wait for confirms
        self._pump_scheduled = False
        self._att: _Attempt | None = None

    def _finish(self, idx: int, outcome: str, error: str | None = None) -> None:
        if self._done[idx]:
            return
        self._done[idx] = True
        self._counts[outcome] += 1
        task = self._tasks[idx]
        extra: dict[str, Any] = {} if error is None else {"error": error}
        self.recorder.record(
            vocab.PUBLISH,
            SOURCE,
            id=task.id,
            outcome=outcome,
            directives=task.directives,
            poison=task.poison,
            **extra,
        )

    def _fail_unsent(self, error: str) -> None:
        for idx in range(self._next, len(self._tasks)):
            self._finish(idx, "fail", error)
        self._next = len(self._tasks)

    def _unknown_outstanding(self, att: _Attempt, error: str) -> None:
        for idx in att.outstanding.values():
            self._finish(idx, "unknown", error)
        att.outstanding.clear()

    # -- the public call --------------------------------------------------------
    def publish(
        self,
        tasks: Sequence[Task],
        rate_per_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> PublishStats:
        """Publish ``tasks`` in order; return when every one has an outcome.

        ``rate_per_s`` limits the send rate (token bucket); ``stop`` ends sending
        early (tasks not yet sent are recorded as ``fail``, "not sent"). All of it
        is bounded by ``timeout_s``.
        """
        if rate_per_s is not None and rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0 or None, got {rate_per_s}")
        self._reset(tasks, rate_per_s, stop)
        self._index_of = {t.id: i for i, t in enumerate(tasks)}
        if len(self._index_of) != len(tasks):
            raise ValueError("task ids must be unique")
        t0 = time.monotonic()
        self._deadline = t0 + self.timeout_s
        self._last_refill = t0
        self._tokens = 1.0
        connections = 0
        failures = 0  # consecutive failed connection attempts
        last_error = ""
        while True:
            if self._next >= len(tasks) or self._stopping:
                break
            if stop is not None and stop.is_set():
                break
            if time.monotonic() >= self._deadline:
                last_error = "timeout"
                break
            att = self._run_connection()
            if att.opened:
                connections += 1
                failures = 0
                last_error = att.close_reason or ""
            else:
                failures += 1
                last_error = att.open_error or "connection failed"
                if connections == 0 and failures >= FIRST_CONNECT_ATTEMPTS:
                    raise ClusterError(
                        f"cannot open an AMQP connection to {self._safe_url()}: {last_error}; "
                        "check that the broker runs and the URL is right"
                    )
                if connections > 0 and failures >= MAX_RECONNECT_ATTEMPTS:
                    break
            if self._next >= len(tasks) or self._stopping:
                break
            if connections >= MAX_CONNECTIONS:
                last_error = f"{connections} connections lost, the last: {last_error}"
                break
            if not att.opened or att.close_reason is not None:
                backoff = RECONNECT_BASE_DELAY_S * (2 ** max(0, failures - 1))
                self._sleep(min(RECONNECT_MAX_DELAY_S, backoff))
        stopped = self._stopping or (stop is not None and stop.is_set())
        if connections == 0 and tasks and not stopped:
            raise ClusterError(
                f"cannot open an AMQP connection to {self._safe_url()} within "
                f"{self.timeout_s:g} s: {last_error}; check that the broker runs"
            )
        if stopped:
            self._fail_unsent("not sent: publishing was stopped")
        elif time.monotonic() >= self._deadline:
            self._fail_unsent("not sent: publish timeout")
        else:
            self._fail_unsent(f"not sent: could not reconnect ({last_error})")
        elapsed = max(time.monotonic() - t0, 1e-9)
        c = self._counts
        return PublishStats(
            ok=c["ok"],
            fail=c["fail"],
            unknown=c["unknown"],
            elapsed_s=elapsed,
            rate=c["ok"] / elapsed,
            connections=max(connections, 1),
        )

    def _safe_url(self) -> str:
        p = self._params
        return f"amqp://{p.host}:{p.port}"

    def _sleep(self, delay_s: float) -> None:
        end = min(time.monotonic() + delay_s, self._deadline)
        while True:
            now = time.monotonic()
            if now >= end or (self._stop is not None and self._stop.is_set()):
                return
            time.sleep(min(TICK_S, end - now))

    # -- one connection ---------------------------------------------------------
    def _run_connection(self) -> _Attempt:
        att = _Attempt()
        self._att = att
        remaining = self._deadline - time.monotonic()
        self._params.socket_timeout = max(0.5, min(CONNECT_TIMEOUT_S, remaining))
        self._params.stack_timeout = max(1.0, min(CONNECT_TIMEOUT_S, remaining))
        self._params.blocked_connection_timeout = max(1.0, remaining)
        try:
            conn = SelectConnection(
                parameters=self._params,
                on_open_callback=lambda c: self._on_open(att, c),
                on_open_error_callback=lambda c, err: self._on_open_error(att, c, err),
                on_close_callback=lambda c, reason: self._on_closed(att, c, reason),
            )
        except Exception as e:  # a bad host name and the like
            att.open_error = f"{type(e).__name__}: {e}"
            return att
        att.connection = conn
        ioloop = conn.ioloop
        # Hard stop: whatever happens, the loop ends shortly after the deadline.
        hard = max(0.0, self._deadline - time.monotonic()) + 3 * CLOSE_GRACE_S
        ioloop.call_later(hard, lambda: self._hard_stop(att))
        ioloop.call_later(TICK_S, lambda: self._tick(att))
        try:
            ioloop.start()
        finally:
            with contextlib.suppress(Exception):
                ioloop.close()
        # Whatever is still outstanding got no answer on this connection.
        self._unknown_outstanding(att, att.close_reason or "connection closed")
        return att

    def _hard_stop(self, att: _Attempt) -> None:
        if att.close_reason is None:
            att.close_reason = "timeout: connection did not close"
        self._unknown_outstanding(att, "publish timeout")
        assert att.connection is not None
        att.connection.ioloop.stop()

    def _abort(self, att: _Attempt) -> None:
        conn = att.connection
        if conn is not None and not conn.is_closed:
            with contextlib.suppress(Exception):
                conn._adapter_disconnect_stream()  # pika has no public abort

    def _close(self, att: _Attempt) -> None:
        att.finished = True
        conn = att.connection
        if conn is not None and not (conn.is_closing or conn.is_closed):
            try:
                conn.close()
            except Exception:
                conn.ioloop.stop()
        elif conn is not None and conn.is_closed:
            conn.ioloop.stop()

    def _on_open(self, att: _Attempt, conn: SelectConnection) -> None:
        conn.channel(on_open_callback=lambda ch: self._on_channel_open(att, ch))

    def _on_open_error(self, att: _Attempt, conn: SelectConnection, err: BaseException) -> None:
        att.open_error = _describe(err)
        conn.ioloop.stop()

    def _on_closed(self, att: _Attempt, conn: SelectConnection, reason: BaseException) -> None:
        if att.close_reason is None:
            lost = f"connection lost: {_describe(reason)}"
            att.close_reason = "closed by us" if att.finished else lost
        self._unknown_outstanding(att, att.close_reason)
        conn.ioloop.stop()

    def _on_channel_open(self, att: _Attempt, ch: Any) -> None:
        att.channel = ch
        ch.add_on_close_callback(lambda c, reason: self._on_channel_closed(att, reason))
        ch.add_on_return_callback(lambda c, m, p, b: self._on_return(att, m, p))
        ch.confirm_delivery(
            ack_nack_callback=lambda frame: self._on_confirm(att, frame),
            callback=lambda _frame: self._on_confirm_ok(att),
        )

    def _on_confirm_ok(self, att: _Attempt) -> None:
        att.opened = True
        self._pump(att)

    def _on_channel_closed(self, att: _Attempt, reason: BaseException) -> None:
        if att.close_reason is None and not att.finished:
            what = (
                "connection lost"
                if isinstance(reason, pika.exceptions.ConnectionClosed)
                else "channel closed"
            )
            att.close_reason = f"{what}: {_describe(reason)}"
        self._unknown_outstanding(att, att.close_reason or "channel closed")
        self._close(att)

    def _on_return(self, att: _Attempt, method: Any, props: Any) -> None:
        idx = self._index_of.get(getattr(props, "message_id", None) or "")
        if idx is not None:
            att.returned[idx] = f"returned: {method.reply_code} {method.reply_text}"

    def _on_confirm(self, att: _Attempt, frame: pika.frame.Method) -> None:
        method = frame.method
        ack = isinstance(method, pika.spec.Basic.Ack)
        tag = int(method.delivery_tag)
        out = att.outstanding
        if method.multiple:
            while out:
                first = next(iter(out))
                if first > tag:
                    break
                _, idx = out.popitem(last=False)
                self._settle(att, idx, ack)
        else:
            idx = out.pop(tag, -1)
            if idx >= 0:
                self._settle(att, idx, ack)
        if not self._pump_scheduled:
            self._pump(att)

    def _settle(self, att: _Attempt, idx: int, ack: bool) -> None:
        if not ack:
            self._finish(idx, "fail", "nacked")
            att.returned.pop(idx, None)
        else:
            returned = att.returned.pop(idx, None)
            if returned is None:
                self._finish(idx, "ok")
            else:
                self._finish(idx, "fail", returned)

    def _tick(self, att: _Attempt) -> None:
        if att.connection is None or att.connection.is_closed:
            return
        now = time.monotonic()
        if now >= self._deadline:
            att.close_reason = "publish timeout"
            self._unknown_outstanding(att, "publish timeout")
            self._close(att)
            # A broker that does not answer never sends Close-Ok: drop the socket.
            att.connection.ioloop.call_later(CLOSE_GRACE_S, lambda: self._abort(att))
            return
        if self._stop is not None and self._stop.is_set():
            self._stopping = True
        if att.opened:
            self._pump(att)
        att.connection.ioloop.call_later(TICK_S, lambda: self._tick(att))

    def _pump(self, att: _Attempt) -> None:
        """Send as many tasks as the window and the rate allow."""
        self._pump_scheduled = False
        if att.finished or att.channel is None or att.close_reason is not None:
            return
        ch = att.channel
        if not ch.is_open:
            return
        n = len(self._tasks)
        if self._stopping or self._next >= n:
            if not att.outstanding:
                self._close(att)
            return
        room = self.window - len(att.outstanding)
        if room <= 0:
            return
        if self._rate is not None:
            now = time.monotonic()
            burst = max(1.0, self._rate * TICK_S)
            self._tokens = min(burst, self._tokens + (now - self._last_refill) * self._rate)
            self._last_refill = now
            allowed = int(self._tokens)
            if allowed <= 0:
                wait = (1.0 - self._tokens) / self._rate
                self._pump_scheduled = True
                att.connection.ioloop.call_later(wait, lambda: self._pump(att))  # type: ignore[union-attr]
                return
            room = min(room, allowed)
            self._tokens -= room
        queue = self.queue
        tasks = self._tasks
        out = att.outstanding
        end = min(n, self._next + room)
        try:
            for idx in range(self._next, end):
                task = tasks[idx]
                props = pika.BasicProperties(
                    message_id=task.id, delivery_mode=2, content_type="application/json"
                )
                ch.basic_publish("", queue, task.body, props, mandatory=True)
                out[att.next_tag] = idx  # sent: from here on it ends ok, fail or unknown
                att.next_tag += 1
                self._next = idx + 1
        except Exception as e:  # the channel or connection went away under us
            att.close_reason = att.close_reason or f"publish failed: {_describe(e)}"
            self._unknown_outstanding(att, att.close_reason)
            self._close(att)


def _describe(err: BaseException | None) -> str:
    if err is None:
        return "unknown reason"
    text = str(err) or repr(err)
    return f"{type(err).__name__}: {text}"[:300]
