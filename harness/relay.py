"""A TCP relay in the harness process: docker workers on an internal network
reach a broker the harness does not own, and nothing else.

The run's network stays ``internal`` (no route out). The host has an address on
it (the bridge's gateway), which containers on the network can reach; the relay
listens there, on a port of its own, and forwards each connection to the
external broker's AMQP address. So a worker can reach the broker through the
relay and its peers on the network, and no other host. Network faults act on the
worker's side of the relay (a partition disconnects the worker from the network,
a blackhole drops its packets), so they keep their meaning.

Written by hand rather than running ``socat``: a thread of the harness cannot
outlive the harness (no process to sweep after a SIGKILL) and its limits are
the harness's own (``CONNECTIONS_MAX``, ``CONNECT_TIMEOUT_S``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Final

CONNECTIONS_MAX: Final = 512
CONNECT_TIMEOUT_S: Final = 5.0
BUFFER_BYTES: Final = 64 * 1024
ACCEPT_POLL_S: Final = 0.5


class Relay:
    """Listen on ``listen_host`` (port chosen by the kernel), forward to
    ``target_host:target_port``. ``start`` returns the port; ``stop`` closes the
    listener and every relayed connection (idempotent)."""

    def __init__(self, listen_host: str, target_host: str, target_port: int) -> None:
        self.listen_host = listen_host
        self.target = (target_host, target_port)
        self._server: socket.socket | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        self.accepted = 0
        self.refused = 0
        self.port = 0

    def start(self) -> int:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((self.listen_host, 0))
        srv.listen(64)
        srv.settimeout(ACCEPT_POLL_S)
        self._server = srv
        self.port = int(srv.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, name="broker-relay", daemon=True)
        self._thread.start()
        return self.port

    def retarget(self, host: str, port: int) -> None:
        """Forward new connections to ``host:port`` (a broker whose address moved, as
        a swarm task replaced); relayed connections keep their upstream."""
        self.target = (host, port)

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop
            with self._lock:
                full = len(self._open) >= 2 * CONNECTIONS_MAX
            if full:
                self.refused += 1
                client.close()
                continue
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        if not self.target[0]:  # no target yet (``retarget`` comes first): refuse
            self.refused += 1
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT_S)
        except OSError:
            self.refused += 1
            client.close()  # the worker sees a refused connection and retries
            return
        upstream.settimeout(None)
        with self._lock:
            if self._stop.is_set():
                client.close()
                upstream.close()
                return
            self._open.update((client, upstream))
            self.accepted += 1
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        self._pump(upstream, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(BUFFER_BYTES)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # One side closed: close both, so the other pump ends too.
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
                with self._lock:
                    self._open.discard(s)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.close()
        with self._lock:
            conns, self._open = list(self._open), set()
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        if self._thread is not None:
            self._thread.join(2 * ACCEPT_POLL_S + 1)
