"""BrokerAdmin without a broker: URL parsing, id extraction, and the management API
read from a stub HTTP server on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pika
import pytest

from harness.broker import (
    UNPARSEABLE,
    BrokerAdmin,
    ConnectionInfo,
    _message_id,
    amqp_display,
    parse_broker_url,
)
from harness.cluster.base import BrokerEndpoint, ClusterError


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_parse_broker_url_defaults() -> None:
    ep = parse_broker_url("amqp://localhost")
    assert ep.management_url == "http://localhost:15672"
    assert (ep.user, ep.password, ep.vhost) == ("guest", "guest", "/")
    assert ep.amqp_url == "amqp://guest:guest@localhost:5672/%2F"


def test_parse_broker_url_management_port_and_vhost() -> None:
    ep = parse_broker_url("amqp://u%40x:p%2Fw@10.0.0.5:5673/my%2Fvh?management_port=15999"
                          "&heartbeat=5")
    assert ep.management_url == "http://10.0.0.5:15999"
    assert (ep.user, ep.password, ep.vhost) == ("u@x", "p/w", "my/vh")
    assert "management_port" not in ep.amqp_url and "heartbeat=5" in ep.amqp_url
    assert pika.URLParameters(ep.amqp_url).virtual_host == "my/vh"


def test_parse_broker_url_explicit_management_url() -> None:
    ep = parse_broker_url("amqp://h:1/?management_port=2", "http://m:3/")
    assert ep.management_url == "http://m:3"


@pytest.mark.parametrize("url", ["http://x", "amqp://", "amqp://h:99999",
                                 "amqp://h/?management_port=abc"])
def test_parse_broker_url_rejects(url: str) -> None:
    with pytest.raises(ValueError) as ei:
        parse_broker_url(url)
    assert "\n" not in str(ei.value)


def test_amqp_display_hides_credentials() -> None:
    assert amqp_display("amqp://a:secret@h:1234/v") == "amqp://h:1234"
    assert amqp_display("amqps://h") == "amqps://h:5671"


def test_message_id() -> None:
    props = pika.BasicProperties(message_id="m1")
    assert _message_id(props, b"whatever") == "m1"
    assert _message_id(pika.BasicProperties(), json.dumps({"id": 7}).encode()) == "7"
    assert _message_id(pika.BasicProperties(), b"\xff\xfe") == UNPARSEABLE
    assert _message_id(pika.BasicProperties(), b"[1, 2]") == UNPARSEABLE
    assert _message_id(None, b"{}") == UNPARSEABLE


def test_wait_ready_unreachable_is_bounded_and_one_line() -> None:
    port = closed_port()
    admin = BrokerAdmin(BrokerEndpoint(f"amqp://guest:guest@127.0.0.1:{port}/%2F",
                                       f"http://127.0.0.1:{closed_port()}"))
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as ei:
        admin.wait_ready(2.0)
    assert time.monotonic() - t0 < 3.5
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"broker at amqp://127.0.0.1:{port} not reachable after 2 s: ")
    assert msg.endswith("; start RabbitMQ or fix --broker-url")
    assert "guest:guest" not in msg


# -- management API through a stub ------------------------------------------------
ROUTES: dict[str, Any] = {
    "/api/queues/%2F/q1": {"name": "q1", "messages": 5, "messages_ready": 3,
                           "messages_unacknowledged": 2, "consumers": 1, "durable": True,
                           "type": "classic",
                           "message_stats": {"publish": 9, "deliver_get": 6, "redeliver": 1,
                                             "ack": 4}},
    "/api/queues/%2F/fresh": {"name": "fresh"},  # no statistics yet
    "/api/queues/%2F": [
        {"name": "t.b", "messages": 1}, {"name": "t.a", "messages": 2}, {"name": "other"},
    ],
    "/api/connections": [
        {"name": "127.0.0.1:1000 -> 127.0.0.1:5672", "peer_host": "127.0.0.1",
         "peer_port": 1000, "client_properties": {"connection_name": "worker-1"}},
        {"name": "127.0.0.1:2000 -> 127.0.0.1:5672", "peer_host": "127.0.0.1",
         "peer_port": 2000, "client_properties": {}},
    ],
    "/api/channels": [
        {"connection_details": {"name": "127.0.0.1:1000 -> 127.0.0.1:5672"},
         "messages_unacknowledged": 4},
        {"connection_details": {"name": "127.0.0.1:1000 -> 127.0.0.1:5672"},
         "messages_unacknowledged": 3},
        {"connection_details": {"name": "127.0.0.1:2000 -> 127.0.0.1:5672"}},
    ],
}


class _Stub(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.headers.get("Authorization") != "Basic dTpw":  # u:p
            self.send_response(401)
            self.end_headers()
            return
        path = self.path.split("?", 1)[0]
        if path == "/api/queues/%2F/broken":
            self.send_response(500)
            self.end_headers()
            return
        if path not in ROUTES:
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps(ROUTES[path]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def stub_admin() -> Iterator[BrokerAdmin]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    ep = BrokerEndpoint(f"amqp://u:p@127.0.0.1:{closed_port()}/%2F",
                        f"http://127.0.0.1:{srv.server_address[1]}", user="u", password="p")
    admin = BrokerAdmin(ep, call_timeout_s=2.0)
    try:
        yield admin
    finally:
        admin.close()
        srv.shutdown()
        srv.server_close()


def test_queue_info(stub_admin: BrokerAdmin) -> None:
    q = stub_admin.queue_info("q1")
    assert q is not None and (q.messages, q.ready, q.unacked, q.consumers) == (5, 3, 2, 1)
    assert (q.published, q.delivered, q.redelivered, q.acked) == (9, 6, 1, 4)
    fresh = stub_admin.queue_info("fresh")
    assert fresh is not None and fresh.messages == 0 and fresh.acked == 0
    assert stub_admin.queue_info("absent") is None
    with pytest.raises(ClusterError) as ei:
        stub_admin.queue_info("broken")
    assert "HTTP 500" in str(ei.value) and "\n" not in str(ei.value)


def test_list_queues(stub_admin: BrokerAdmin) -> None:
    assert [q.name for q in stub_admin.list_queues("t.")] == ["t.a", "t.b"]
    assert len(stub_admin.list_queues()) == 3


def test_connections(stub_admin: BrokerAdmin) -> None:
    conns = stub_admin.connections()
    assert conns[0] == ConnectionInfo("worker-1", "127.0.0.1", 1000, 7,
                                      "127.0.0.1:1000 -> 127.0.0.1:5672")
    assert conns[1].name == "" and conns[1].unacked == 0


def test_tracked_connections_read_the_peer_from_the_name(stub_admin: BrokerAdmin) -> None:
    """The tracking listing (``disable_stats``) has names only: the peer is parsed
    from them, and a name that is no "host:port -> ..." is skipped."""
    ROUTES["/api/connections"].append({"name": "[::1]:3000 -> [::1]:5672"})
    ROUTES["/api/connections"].append({"name": "garbled"})
    try:
        conns = stub_admin.tracked_connections()
    finally:
        del ROUTES["/api/connections"][-2:]
    assert [(c.peer_host, c.peer_port, c.unacked) for c in conns] == [
        ("127.0.0.1", 1000, 0), ("127.0.0.1", 2000, 0), ("::1", 3000, 0)]
    assert conns[0].mgmt_name == "127.0.0.1:1000 -> 127.0.0.1:5672"


def test_wrong_credentials_are_reported(stub_admin: BrokerAdmin) -> None:
    bad = BrokerAdmin(BrokerEndpoint(stub_admin.endpoint.amqp_url,
                                     stub_admin.endpoint.management_url, user="u",
                                     password="nope"))
    with pytest.raises(ClusterError) as ei:
        bad.queue_info("q1")
    assert "HTTP 401" in str(ei.value)


def test_amqp_observations_fail_with_cluster_error(stub_admin: BrokerAdmin) -> None:
    with pytest.raises(ClusterError):
        stub_admin.passive_depth("q1")
    with pytest.raises(ClusterError):
        stub_admin.drain_ids("q1")
