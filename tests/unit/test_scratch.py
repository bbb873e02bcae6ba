"""Scratch vhosts on a broker the harness does not own: the lease format, and
which leftovers a sweep may remove (a fake management API: these are the rules,
the integration tests run them against a real broker)."""

from __future__ import annotations

import json
from typing import Any, cast

from harness.broker import BrokerAdmin, parse_broker_url
from harness.scratch import (
    LEASE_S,
    VHOST_PREFIX,
    Lease,
    parse_lease,
    sweep,
    vhost_name,
    with_vhost,
)

NOW = 1_000_000.0


class FakeAdmin:
    def __init__(self, vhosts: list[dict[str, Any]], connections: dict[str, list[Any]]):
        self.vhosts = vhosts
        self.connections = connections
        self.deleted: list[str] = []

    def request(self, method: str, path: str, body: Any = None) -> Any:
        if method == "GET" and path.startswith("/api/vhosts?"):
            return self.vhosts
        if method == "GET" and path.endswith("/connections"):
            name = path.split("/")[3]
            return self.connections.get(name, [])
        if method == "DELETE":
            self.deleted.append(path.rsplit("/", 1)[1])
            return None
        raise AssertionError(f"unexpected {method} {path}")


def vhost(name: str, lease_end: float | None, description: str | None = None) -> dict[str, Any]:
    desc = description if lease_end is None else Lease("h", 1, name, NOW - 500,
                                                       lease_end).description()
    return {"name": name, "description": desc}


def test_a_lease_round_trips_and_foreign_descriptions_are_not_leases() -> None:
    lease = Lease("ci-host", 42, "run-1", NOW, NOW + 120)
    assert parse_lease(lease.description()) == lease
    for other in (None, "", "team vhost", json.dumps({"lease_end": 1}), "[1]", 5):
        assert parse_lease(other) is None


def test_sweep_removes_only_expired_idle_leases_of_the_harness() -> None:
    p = VHOST_PREFIX
    gone = NOW - LEASE_S - 1  # expired over one more lease ago
    admin = FakeAdmin([
        vhost(f"{p}expired", gone),
        vhost(f"{p}just-expired", NOW - 1),  # a late renewal or another clock: kept
        vhost(f"{p}live", NOW + 60),  # another job's run, lease current
        vhost(f"{p}busy", gone),  # expired, but a connection is open in it
        vhost(f"{p}nolease", None, "made by hand"),  # harness-like name, no lease
        vhost("team", gone),  # a lease-like description, not the harness's name
        vhost("/", None, "Default virtual host"),
    ], {f"{p}busy": [{"name": "c1"}]})
    removed = sweep(cast(BrokerAdmin, admin), now=NOW)
    assert removed == [f"{p}expired"] and admin.deleted == [f"{p}expired"]


def test_sweep_is_bounded() -> None:
    admin = FakeAdmin([vhost(f"{VHOST_PREFIX}{i}", NOW - LEASE_S - 1) for i in range(50)], {})
    assert len(sweep(cast(BrokerAdmin, admin), now=NOW, limit=5)) == 5


def test_names_and_endpoints() -> None:
    name = vhost_name("20261202-0101-12ab/x")
    assert name.startswith(VHOST_PREFIX) and "/" not in name and len(name) <= 63
    ep = with_vhost(parse_broker_url("amqp://u:p%2Fw@h:5673/%2F?heartbeat=5"), "rmq-harness-1")
    assert ep.vhost == "rmq-harness-1"
    assert ep.amqp_url == "amqp://u:p%2Fw@h:5673/rmq-harness-1?heartbeat=5"
