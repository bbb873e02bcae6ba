"""The one line reader (harness.cluster.lines): how worker output becomes events."""

from __future__ import annotations

import json
import re
from pathlib import Path

from harness.cluster.lines import FOREIGN, MAX_LINE_CHARS, LineReader
from harness.history import History, Recorder


def _reader(pattern: str | None = None) -> tuple[Recorder, LineReader]:
    rec = Recorder(None)
    return rec, LineReader(rec, "worker-1", re.compile(pattern) if pattern else None,
                           clock=lambda: 2000.0)


def test_contract_event_is_recorded_with_the_workers_ts() -> None:
    rec, r = _reader()
    r.feed(json.dumps({"event": "processed", "id": "t1", "worker": "worker-1", "ts": 1999.5,
                       "attempt": 1}))
    (ev,) = rec.snapshot().events
    assert (ev.type, ev.id, ev.worker, ev.ts, ev.get("attempt")) == (
        "processed", "t1", "worker-1", 1999.5, 1)
    assert ev.get("ts_from") is None and ev.get("claimed_worker") is None


def test_foreign_event_is_counted_and_never_interpreted() -> None:
    rec, r = _reader()
    r.feed('{"event": "health", "ok": true, "worker": "worker-1"}')
    r.feed('{"event": "fault", "fault": "kill", "target": "worker-2", "ok": true}')
    r.feed('{"event": "final_queue", "role": "dlq", "ids": ["t1"]}')
    evs = rec.snapshot().events
    assert [e.type for e in evs] == [FOREIGN] * 3
    assert [e.get("name") for e in evs] == ["health", "fault", "final_queue"]
    assert all(e.get("ids") is None and e.get("target") is None for e in evs)
    assert r.foreign == 3


def test_a_field_cannot_rename_the_event_in_the_written_history(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    rec = Recorder(path)
    LineReader(rec, "worker-1", None).feed(
        '{"event": "processed", "id": "t1", "type": "fault", "source": "nemesis", "t": -5}')
    rec.close()
    (ev,) = History.load(path).events
    assert (ev.type, ev.source) == ("processed", "worker-1") and ev.t >= 0


def test_identity_is_the_source_and_a_disagreeing_worker_field_is_reported() -> None:
    rec, r = _reader()
    r.feed('{"event": "acked", "id": "t1", "worker": "worker-9", "ts": 1999}')
    (ev,) = rec.snapshot().events
    assert ev.worker == "worker-1" and ev.get("claimed_worker") == "worker-9"
    assert r.mismatched_worker == 1


def test_future_or_missing_ts_becomes_the_harness_time() -> None:
    rec, r = _reader()
    r.feed('{"event": "processed", "id": "t1", "ts": 2100}')
    r.feed('{"event": "processed", "id": "t2"}')
    r.feed('{"event": "processed", "id": "t3", "ts": true}')
    evs = rec.snapshot().events
    assert [e.ts for e in evs] == [2000.0] * 3
    assert all(e.get("ts_from") == "harness" for e in evs)


def test_seen_ts_is_the_bound_when_given() -> None:
    rec, r = _reader()
    r.feed('{"event": "processed", "id": "t1", "ts": 1500.2}', seen_ts=1500.0)
    assert rec.snapshot().events[0].ts == 1500.0


def test_non_events_and_overlong_lines_are_ignored() -> None:
    rec, r = _reader()
    for line in ("plain text", "{not json", "[1, 2]", '{"id": "t1"}', '{"event": 3}',
                 '{"event": "processed", "id": "t1", "pad": "' + "x" * MAX_LINE_CHARS + '"}'):
        r.feed(line)
    assert rec.snapshot().events == []


def test_regex_lines() -> None:
    rec, r = _reader(r"done (?P<id>\S+)(?: as (?P<event>\w+))?")
    r.feed("done t1")
    r.feed("done t2 as acked")
    r.feed("done t3 as health")
    r.feed("nothing here")
    evs = rec.snapshot().events
    assert [(e.type, e.id) for e in evs] == [("processed", "t1"), ("acked", "t2"),
                                            (FOREIGN, None)]
    assert all(e.worker == "worker-1" and e.ts == 2000.0 for e in evs)


def test_regex_match_without_id_is_skipped() -> None:
    rec, r = _reader(r"done(?: (?P<id>\S+))?")
    r.feed("done")
    assert rec.snapshot().events == []
