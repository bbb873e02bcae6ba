"""The broker's log as evidence: channels the broker closed for ``consumer_timeout``.

RabbitMQ closes a channel whose oldest unacked delivery is older than its
``consumer_timeout`` (406 PRECONDITION_FAILED, "delivery acknowledgement on
channel N timed out") and requeues everything the channel held. That is a cut of
the worker's consumer that no nemesis made: the scenario configured it
(``cluster.consumer_timeout_ms``) and the broker did it. The harness learns of it
from the broker's own log, never from the worker (which may report nothing, or
report a reconnect for any reason)::

    2026-12-07 06:32:28.852969+00:00 [error] <0.802.0> Channel error on connection
    <0.793.0> (127.0.0.1:54314 -> 127.0.0.1:21202, vhost: '/', user: 'guest'), channel 1:
    ... operation none caused a channel exception precondition_failed: delivery
    acknowledgement on channel 1 timed out. Timeout value used: 3000 ms. ...

The line names the connection by its peer address, so whose channel it was is the
harness's own observation too: ``OwnerSampler`` records, while the run lasts,
which worker holds which peer address (a process's local ports on the local
backend, a container's address on docker: ``Cluster.connection_owners``), as
``connection_owner`` events; ``record_consumer_timeouts`` then gives each closed
channel the worker that held that address last before the close. A close whose
peer no sighting names is recorded without a worker: it explains nothing.

Written by hand: no maintained library parses RabbitMQ's log lines.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from harness import vocab
from harness.history import Event, Recorder

# How often the sampler looks (a connection that a consumer timeout closes has
# lived at least ``MIN_CONSUMER_TIMEOUT_MS``, a second, so it is seen before).
SAMPLE_INTERVAL_S: Final = 0.5
# A bound on what the parser reads of a log (a run's log is ~100 KB).
MAX_LOG_CHARS: Final = 50_000_000
MAX_TIMEOUTS: Final = 10_000

_HEAD_RE: Final = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)?) \[error\] "
    r"<[^>]*> Channel error on connection <[^>]*> \((?P<peer>\S+) -> [^,]*, "
    r"vhost: '(?P<vhost>[^']*)', user: '[^']*'\), channel (?P<channel>\d+):")
_ANSI_RE: Final = re.compile(r"\x1b\[[0-9;]*m")
_TIMEOUT_RE: Final = re.compile(
    r"precondition_failed: delivery acknowledgement on channel (?P<channel>\d+) timed out\. "
    r"Timeout value used: (?P<ms>\d+) ms")


@dataclass(frozen=True)
class ChannelTimeout:
    """One channel the broker closed because a delivery went unacked too long."""

    ts: float
    peer: str  # "host:port" of the client's end, as the broker saw it
    vhost: str
    channel: int
    timeout_ms: int


def _parse_ts(text: str) -> float | None:
    try:
        stamp = dt.datetime.fromisoformat(text.replace(" ", "T", 1).replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:  # RabbitMQ writes the offset; a log without is UTC
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def _plain(text: str) -> str:
    """The log without terminal colours (the console log of a container has them)."""
    return _ANSI_RE.sub("", text[:MAX_LOG_CHARS])


def parse_consumer_timeouts(text: str) -> list[ChannelTimeout]:
    """The consumer-timeout channel closes in a RabbitMQ 3.x log, in log order.
    A channel error's head line and its reason line are consecutive lines with the
    same timestamp; a head whose next line is another reason is skipped."""
    out: list[ChannelTimeout] = []
    lines = _plain(text).splitlines()
    for i, line in enumerate(lines[:-1]):
        head = _HEAD_RE.match(line)
        if head is None:
            continue
        why = _TIMEOUT_RE.search(lines[i + 1])
        ts = _parse_ts(head["ts"])
        if why is None or ts is None or why["channel"] != head["channel"]:
            continue
        out.append(ChannelTimeout(ts, head["peer"], head["vhost"], int(head["channel"]),
                                  int(why["ms"])))
        if len(out) >= MAX_TIMEOUTS:
            break
    return out


def owner_at(peer: str, ts: float, sightings: list[Event],
             exits: list[Event] | None = None) -> str | None:
    """The worker that held ``peer`` at ``ts``: the latest ``connection_owner``
    sighting of that address (``host:port``, else the host alone: a container's
    address) at or before ``ts``; nobody's when that worker exited between the
    sighting and ``ts`` (its connections died with it: the address is stale)."""
    host = peer.rsplit(":", 1)[0]
    best: tuple[float, str] | None = None
    for ev in sightings:
        seen = str(ev.get("peer", ""))
        if (ev.ts <= ts and ev.worker and seen in (peer, host)
                and (best is None or ev.ts >= best[0])):
            best = (ev.ts, ev.worker)
    if best is None:
        return None
    if any(e.worker == best[1] and best[0] < e.ts <= ts for e in exits or ()):
        return None
    return best[1]


def record_consumer_timeouts(recorder: Recorder, log_text: str, vhost: str,
                             sightings: list[Event], exits: list[Event] | None = None
                             ) -> int:
    """Record a ``consumer_timeout`` event (source ``broker``) for every close of a
    channel of ``vhost`` in ``log_text``, with the worker the harness saw holding
    its peer address (``owner_at``; ``exits``: the workers' ``worker_exited``).
    Returns how many."""
    n = 0
    for c in parse_consumer_timeouts(log_text):
        if c.vhost != vhost:
            continue
        recorder.record(vocab.CONSUMER_TIMEOUT, "broker", ts=c.ts,
                        worker=owner_at(c.peer, c.ts, sightings, exits), peer=c.peer,
                        channel=c.channel, timeout_ms=c.timeout_ms)
        n += 1
    return n


def unparsed_timeouts(text: str) -> int:
    """How many consumer timeouts the log announces (RabbitMQ's warning line) beyond
    the channel closes ``parse_consumer_timeouts`` read: a log worded otherwise (a
    version the parser does not know) must make the run undecided, not leave a
    duplicate unexplained."""
    warned = len(re.findall(r"timed out waiting for delivery acknowledgement", _plain(text)))
    return max(0, warned - len(parse_consumer_timeouts(text)))


class OwnerSampler:
    """A thread that records which worker holds which peer address
    (``connection_owner`` events, each pair once per change) until stopped."""

    def __init__(self, owners: Callable[[], Mapping[str, str]], recorder: Recorder,
                 interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self._owners = owners
        self._recorder = recorder
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._seen: dict[str, str] = {}
        self._thread = threading.Thread(target=self._loop, name="owner-sampler", daemon=True)

    def start(self) -> OwnerSampler:
        self._thread.start()
        return self

    def sample(self) -> None:
        try:
            owners = dict(self._owners())
        except Exception:  # a backend between states (a worker restarting): next time
            return
        for peer, worker in owners.items():
            if self._seen.get(peer) != worker:
                self._seen[peer] = worker
                self._recorder.record(vocab.CONNECTION_OWNER, "harness", worker=worker,
                                      peer=peer)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
