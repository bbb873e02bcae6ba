"""``GET /healthcheck``: 200 while connected and consuming, 503 otherwise;
``GET /livez``: 200 while the worker's main loop turns, whatever the broker does.

The two answer different questions, and an orchestrator must not mix them up:

- ``/healthcheck`` is *readiness*: is this worker consuming now? It goes 503
  during a broker outage, on every pod at once. As a Kubernetes liveness probe it
  would restart the whole fleet while the broker is away, for nothing: the worker
  reconnects by itself (and the restarts would only add load when it comes back).
- ``/livez`` is *liveness*: is the process alive and not stuck? The consumer's
  loop beats (``HealthState.beat``) on each turn, every ``POLL_S`` (0.2 s) whether
  connected, reconnecting or draining; ``/livez`` answers 503 once no beat came for
  ``stale_s`` (``WORKER_LIVENESS_STALE_S``, 90 s by default: longer than the longest
  blocking call of the loop, pika's 60 s blocked-connection timeout, so a broker's
  memory alarm does not read as a hang).

The server runs in a daemon thread (``ThreadingHTTPServer``); the state it
reports is a small lock-protected object the consumer updates.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class HealthState:
    def __init__(self, worker_id: str, stale_s: float = 90.0) -> None:
        self.worker_id = worker_id
        self.stale_s = stale_s
        self._lock = threading.Lock()
        self._beat = time.monotonic()
        self._connected = False
        self._consuming = False
        self._shutting_down = False
        self._in_flight = 0

    def set(
        self,
        *,
        connected: bool | None = None,
        consuming: bool | None = None,
        shutting_down: bool | None = None,
        in_flight: int | None = None,
    ) -> None:
        with self._lock:
            if connected is not None:
                self._connected = connected
            if consuming is not None:
                self._consuming = consuming
            if shutting_down is not None:
                self._shutting_down = shutting_down
            if in_flight is not None:
                self._in_flight = in_flight

    def beat(self) -> None:
        """The main loop turned (see the module doc)."""
        now = time.monotonic()
        with self._lock:
            self._beat = now

    def liveness(self) -> dict[str, Any]:
        """``/livez``'s body: ``alive`` unless the loop has not turned for ``stale_s``."""
        with self._lock:
            since_s = time.monotonic() - self._beat
        return {"status": "alive" if since_s <= self.stale_s else "stuck",
                "worker": self.worker_id, "since_beat_s": round(since_s, 3),
                "stale_s": self.stale_s}

    def healthy(self) -> bool:
        with self._lock:
            return self._connected and self._consuming and not self._shutting_down

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            ok = self._connected and self._consuming and not self._shutting_down
            return {
                "status": "ok" if ok else "unavailable",
                "worker": self.worker_id,
                "connected": self._connected,
                "consuming": self._consuming,
                "shutting_down": self._shutting_down,
                "in_flight": self._in_flight,
            }


def _handler_for(state: HealthState, always_ok: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 5.0  # seconds a client may take to send its request

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/livez":
                live = state.liveness()
                self._reply(200 if live["status"] == "alive" else 503, live)
                return
            if path != "/healthcheck":
                self._reply(404, {"status": "not found", "paths": ["/healthcheck", "/livez"]})
                return
            snap = state.snapshot()
            if always_ok:
                # WORKER_BUG=health-always-ok: the body tells the truth but the status code
                # is a constant 200, and probes only look at the code.
                self._reply(200, snap)
                return
            self._reply(200 if snap["status"] == "ok" else 503, snap)

        def _reply(self, code: int, obj: dict[str, Any]) -> None:
            body = json.dumps(obj, separators=(",", ":")).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every second would drown stderr

    return Handler


class HealthServer:
    """Serve ``state`` on ``bind:port`` (port 0 picks a free one; see ``.port``).

    ``always_ok`` is the planted bug ``health-always-ok`` (200 whatever the state).
    """

    def __init__(
        self, state: HealthState, port: int, bind: str = "0.0.0.0", *, always_ok: bool = False
    ) -> None:
        self._server = ThreadingHTTPServer((bind, port), _handler_for(state, always_ok))
        self._server.daemon_threads = True
        self.port: int = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
            name="health", daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
