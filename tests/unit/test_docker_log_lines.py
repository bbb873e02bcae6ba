"""The docker backend's log follower: a line the engine stamped earlier than one
read before it (stdout and stderr are stamped as each is read, and a framework's
stderr line relayed late can come first) is still an event; only lines from
before the container's latest start are skipped."""

from __future__ import annotations

import io
import json
import time
from types import SimpleNamespace
from typing import Any

from harness.cluster.docker.cluster import DockerCluster
from harness.cluster.lines import LineReader
from harness.history import Recorder


def stamped(ns: int, text: str) -> bytes:
    secs, frac = divmod(ns, 10**9)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"
    return f"{stamp} {text}".encode()


def test_an_earlier_stamped_event_after_a_later_stderr_line_is_kept() -> None:
    rec = Recorder(None)
    w = SimpleNamespace(last_ns=0, reader=LineReader(rec, "worker-1", None))
    out = io.BytesIO()
    base = 1_796_545_199_000_000_000
    event = json.dumps({"event": "processed", "id": "t-73", "worker": "worker-1"})
    handle = DockerCluster._handle_line
    handle(None, w, stamped(base + 885_000_000, "[WARNING] a relayed stderr line"), out, 0)  # type: ignore[arg-type]
    handle(None, w, stamped(base + 884_000_000, event), out, 0)  # type: ignore[arg-type]
    assert [(e.type, e.id) for e in rec.snapshot()] == [("processed", "t-73")]
    # After a restart, what was read before (stamped at or before since_ns) is skipped.
    since = w.last_ns
    handle(None, w, stamped(base + 884_000_000, event), out, since)  # type: ignore[arg-type]
    assert len(rec.snapshot()) == 1


def test_a_follower_of_an_earlier_start_stops_feeding_once_superseded(tmp_path: Any) -> None:
    """A restart whose join of the old follower timed out: the old one must not feed
    the lines the new follower reads again from ``last_ns`` (one event, not two)."""
    import threading

    rec = Recorder(None)
    base = 1_796_545_199_000_000_000
    lines = [stamped(base + i * 1_000_000, json.dumps(
        {"event": "processed", "id": f"t-{i}", "worker": "worker-1"})) + b"\n"
        for i in range(4)]
    w = SimpleNamespace(last_ns=0, reader=LineReader(rec, "worker-1", None),
                        log_lock=threading.Lock(), generation=1,
                        log_path=tmp_path / "worker-1.log")

    def chunks() -> Any:
        yield lines[0] + lines[1]
        w.generation = 2  # a new start took over here
        yield lines[2] + lines[3]

    container = SimpleNamespace(logs=lambda **_: chunks())
    me = SimpleNamespace(_handle_line=lambda *a: DockerCluster._handle_line(None, *a))  # type: ignore[arg-type]
    DockerCluster._follow_logs(me, w, container, 0, 1)  # type: ignore[arg-type]
    assert [e.id for e in rec.snapshot()] == ["t-0", "t-1"]
    # The new start's follower reads on from the last line handled.
    DockerCluster._follow_logs(me, w, SimpleNamespace(logs=lambda **_: iter(lines)),  # type: ignore[arg-type]
                               w.last_ns, 2)
    assert [e.id for e in rec.snapshot()] == ["t-0", "t-1", "t-2", "t-3"]
