"""harness.brokerlog: the broker's log lines of a consumer timeout, and whose they were."""

from __future__ import annotations

from typing import Any

from harness import vocab
from harness.brokerlog import (
    OwnerSampler,
    owner_at,
    parse_consumer_timeouts,
    record_consumer_timeouts,
    unparsed_timeouts,
)
from harness.history import Event, Recorder

# RabbitMQ 3.10.8's own lines (a private node of the harness, 2026-12-07).
LOG = """\
2026-12-07 06:32:24.953784+00:00 [info] <0.874.0> connection <0.874.0> (127.0.0.1:54346 -> 127.0.0.1:21202 - harness-admin): user 'guest' authenticated and granted access to vhost '/'
2026-12-07 06:32:28.852448+00:00 [warning] <0.802.0> Consumer 4 on channel 1 has timed out waiting for delivery acknowledgement. Timeout used: 3000 ms. This timeout value can be configured, see consumers doc guide to learn more
2026-12-07 06:32:28.852969+00:00 [error] <0.802.0> Channel error on connection <0.793.0> (127.0.0.1:54314 -> 127.0.0.1:21202, vhost: '/', user: 'guest'), channel 1:
2026-12-07 06:32:28.852969+00:00 [error] <0.802.0> operation none caused a channel exception precondition_failed: delivery acknowledgement on channel 1 timed out. Timeout value used: 3000 ms. This timeout value can be configured, see consumers doc guide to learn more
2026-12-07 06:32:29.100000+00:00 [error] <0.900.0> Channel error on connection <0.899.0> (127.0.0.1:54400 -> 127.0.0.1:21202, vhost: '/', user: 'guest'), channel 1:
2026-12-07 06:32:29.100000+00:00 [error] <0.900.0> operation basic.ack caused a channel exception precondition_failed: unknown delivery tag 7
2026-12-07 06:32:30.000000+00:00 [error] <0.950.0> Channel error on connection <0.949.0> (172.18.0.5:40000 -> 172.18.0.2:5672, vhost: 'run-a', user: 'guest'), channel 2:
2026-12-07 06:32:30.000000+00:00 [error] <0.950.0> operation none caused a channel exception precondition_failed: delivery acknowledgement on channel 2 timed out. Timeout value used: 5000 ms. This timeout value can be configured, see consumers doc guide to learn more
"""  # noqa: E501


def sighting(ts: float, worker: str, peer: str) -> Event:
    return Event(vocab.CONNECTION_OWNER, "harness", t=0.0, ts=ts, worker=worker,
                 data={"peer": peer})


def test_only_consumer_timeout_closes_are_read() -> None:
    found = parse_consumer_timeouts(LOG)
    assert [(c.peer, c.vhost, c.channel, c.timeout_ms) for c in found] == [
        ("127.0.0.1:54314", "/", 1, 3000), ("172.18.0.5:40000", "run-a", 2, 5000)]
    assert abs(found[0].ts - 1796625148.852969) < 1e-6  # the log's UTC offset is kept


def test_nothing_is_read_from_a_log_without_them() -> None:
    assert parse_consumer_timeouts(LOG.splitlines()[0]) == []
    assert parse_consumer_timeouts("") == []


def test_the_owner_is_the_latest_sighting_of_the_peer_before_the_close() -> None:
    seen = [sighting(10.0, "worker-1", "127.0.0.1:5000"),
            sighting(20.0, "worker-2", "127.0.0.1:5000"),  # the port, reused
            sighting(5.0, "worker-3", "172.18.0.5")]  # a container: its address
    assert owner_at("127.0.0.1:5000", 15.0, seen) == "worker-1"
    assert owner_at("127.0.0.1:5000", 25.0, seen) == "worker-2"
    assert owner_at("127.0.0.1:5000", 9.0, seen) is None  # not seen yet: nobody's
    assert owner_at("172.18.0.5:40000", 6.0, seen) == "worker-3"
    assert owner_at("127.0.0.1:6000", 30.0, seen) is None


def test_recorded_closes_are_the_runs_vhosts_with_their_workers(tmp_path: Any) -> None:
    rec = Recorder(tmp_path / "h.jsonl")
    seen = [sighting(1796625140.0, "worker-1", "127.0.0.1:54314")]
    assert record_consumer_timeouts(rec, LOG, "/", seen) == 1
    ev = next(rec.snapshot().of_type(vocab.CONSUMER_TIMEOUT))
    assert (ev.source, ev.worker, ev.get("peer"), ev.get("timeout_ms")) == (
        "broker", "worker-1", "127.0.0.1:54314", 3000)
    rec.close()


def test_the_sampler_records_each_owner_once_per_change(tmp_path: Any) -> None:
    rec = Recorder(tmp_path / "h.jsonl")
    owners: list[dict[str, str] | None] = [
        {"127.0.0.1:1": "worker-1"}, {"127.0.0.1:1": "worker-1"}, {"127.0.0.1:1": "worker-2"},
        None]  # None: the backend raises (a worker restarting)
    calls = iter(owners)

    def next_owners() -> dict[str, str]:
        got = next(calls)
        if got is None:
            raise RuntimeError("a worker restarting")
        return got

    sampler = OwnerSampler(next_owners, rec)
    for _ in range(4):
        sampler.sample()
    assert [e.worker for e in rec.snapshot().of_type(vocab.CONNECTION_OWNER)] == [
        "worker-1", "worker-2"]
    rec.close()


def test_a_sighting_before_its_workers_exit_names_nobody_after_it() -> None:
    seen = [sighting(10.0, "worker-1", "127.0.0.1:5000")]
    exited = [Event(vocab.WORKER_EXITED, "cluster", t=0.0, ts=15.0, worker="worker-1")]
    assert owner_at("127.0.0.1:5000", 14.0, seen, exited) == "worker-1"
    assert owner_at("127.0.0.1:5000", 25.0, seen, exited) is None


def test_a_timeout_the_log_announces_but_words_otherwise_is_counted() -> None:
    assert unparsed_timeouts(LOG) == 0
    other = LOG.splitlines()[1] + "\n"  # the warning alone: a close worded otherwise
    assert unparsed_timeouts(other) == 1


def test_a_containers_coloured_console_log_is_read_too() -> None:
    coloured = "".join(f"\x1b[38;5;160m{line}\x1b[0m\n" for line in LOG.splitlines())
    assert parse_consumer_timeouts(coloured) == parse_consumer_timeouts(LOG)
    assert unparsed_timeouts(coloured) == 0
