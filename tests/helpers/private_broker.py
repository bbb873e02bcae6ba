"""A throw-away RabbitMQ node for the tests and the benchmarks.

There is one node starter in this project, the local backend's
(``harness.cluster.local``: free ports from the port ledger, its own node name,
directories owned by the ``rabbitmq`` user, the management plugin, a watchdog, and
everything it started stopped again); this wraps it with the client helpers the
tests need (publish with confirms, read a queue back, its depth), so no test or
benchmark starts a node its own way.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.parse
import uuid
from pathlib import Path
from types import TracebackType

import pika
from waiting import wait_until

from harness.broker import BrokerAdmin, ConnectionInfo
from harness.cluster.base import BrokerEndpoint, ClusterError
from harness.cluster.local import LocalCluster
from harness.history import Recorder

# A free port can be taken by another process between its choice and the node's
# bind (other nodes run on this machine); the backend retries once itself.
START_ATTEMPTS = 3
MAX_DRAIN = 100_000
CONNECTIONS_APPEAR_S = 10.0


class PrivateBroker:
    """``start()`` brings a node up (``ClusterError`` with its log tail if it does not
    answer), ``stop()`` ends it and removes its directories; ``stop_node()`` and
    ``start_node()`` take it down and back with its data, ``restart_hard()`` SIGKILLs
    it and starts it again, ``restart_clean()`` stops it cleanly and starts it again."""

    def __init__(self, name_prefix: str = "it") -> None:
        self.name_prefix = name_prefix
        self._cluster: LocalCluster | None = None
        self._run_dir: Path | None = None
        self._endpoint: BrokerEndpoint | None = None

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> PrivateBroker:
        for attempt in range(START_ATTEMPTS):
            run_dir = Path(tempfile.mkdtemp(prefix=f"{self.name_prefix}-broker-"))
            cluster = LocalCluster(f"{self.name_prefix}-{uuid.uuid4().hex[:6]}", run_dir,
                                   Recorder(None))
            try:
                self._endpoint = cluster.start_broker()
            except ClusterError:
                cluster.stop()
                shutil.rmtree(run_dir, ignore_errors=True)
                if attempt == START_ATTEMPTS - 1:
                    raise
                continue
            self._cluster, self._run_dir = cluster, run_dir
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.stop()
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    def stop_node(self) -> None:
        self.cluster.stop_broker()

    def start_node(self) -> None:
        self.cluster.start_stopped_broker()

    def restart_hard(self) -> None:
        self.cluster.restart_broker(hard=True)

    def restart_clean(self) -> None:
        self.cluster.restart_broker(hard=False)

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- where it is ------------------------------------------------------------------
    @property
    def cluster(self) -> LocalCluster:
        if self._cluster is None:
            raise RuntimeError("PrivateBroker.start() first")
        return self._cluster

    @property
    def endpoint(self) -> BrokerEndpoint:
        if self._endpoint is None:
            raise RuntimeError("PrivateBroker.start() first")
        return self._endpoint

    @property
    def url(self) -> str:
        return self.endpoint.amqp_url

    @property
    def management_url(self) -> str:
        return self.endpoint.management_url

    @property
    def port(self) -> int:
        port = urllib.parse.urlsplit(self.url).port
        assert port is not None
        return port

    def admin(self) -> BrokerAdmin:
        return BrokerAdmin(self.endpoint)

    # -- client helpers ---------------------------------------------------------------
    def connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.URLParameters(self.url))

    def close_all_connections(self, reason: str, appear_s: float = CONNECTIONS_APPEAR_S) -> int:
        """Close every client connection through the management API; how many. A new
        connection shows in the API only after a statistics emission, so this waits up
        to ``appear_s`` for at least one."""
        admin = self.admin()
        try:
            conns: list[ConnectionInfo] = []

            def listed() -> bool:
                conns[:] = admin.connections()
                return bool(conns)

            wait_until(listed, appear_s, 0.2)
            for c in conns:
                admin.close_connection(c.mgmt_name, reason)
            return len(conns)
        finally:
            admin.close()

    def publish(self, queue: str, tasks: list[tuple[str, bytes]]) -> None:
        """Publish (message_id, body) pairs persistently, with confirms."""
        conn = self.connect()
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            for mid, body in tasks:
                ch.basic_publish(
                    "", queue, body,
                    pika.BasicProperties(message_id=mid, content_type="application/json",
                                         delivery_mode=2),
                    mandatory=True,
                )
        finally:
            conn.close()

    def drain_queue(self, queue: str, limit: int = MAX_DRAIN) -> list[tuple[str | None, bytes]]:
        """Get (auto-ack) every message of ``queue``, up to ``limit``."""
        out: list[tuple[str | None, bytes]] = []
        conn = self.connect()
        try:
            ch = conn.channel()
            for _ in range(limit):
                method, props, body = ch.basic_get(queue, auto_ack=True)
                if method is None:
                    break
                out.append((props.message_id, body))
        finally:
            conn.close()
        return out

    def depth(self, queue: str) -> int:
        conn = self.connect()
        try:
            ok = conn.channel().queue_declare(queue, passive=True)
            return int(ok.method.message_count)
        finally:
            conn.close()
