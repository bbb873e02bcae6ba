"""``SharedDockerBroker``: one network and one broker container for a session of
runs (audit, mutants), each run in its own vhost."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness.cluster.base import (
    BrokerEndpoint,
    ClusterError,
)
from harness.cluster.docker.cluster import DockerCluster
from harness.cluster.docker.engine import (
    AMQP_PORT,
    BROKER_IMAGE,
    BROKER_START_TIMEOUT_S,
    GUEST_AUTH,
    LABEL_RUN,
    LABEL_SHARED,
    MGMT_ATTEMPTS,
    MGMT_PORT,
    MGMT_TIMEOUT_S,
    RUN_ID_RE,
    SHARED_PREFIX,
    connect,
)
from harness.history import Recorder


class SharedDockerBroker:
    """One internal network and one broker container shared by several runs.

    ``start(run_dir)`` creates them exactly as a ``DockerCluster`` does for itself
    (session id ``shared-<hex>``, the same labels plus ``rmq-harness.shared``) and
    waits until the broker answers; ``stop()`` removes them, and whatever runs left
    attached, and saves the broker's whole log to ``<run_dir>/logs/rabbitmq.log``.
    Runs use it with ``DockerCluster(..., shared=this)``; each gets its own vhost
    (``new_vhost``). Thread-safe; a context manager (``with SharedDockerBroker() as
    b: b.start(dir)``; ``__exit__`` stops it).
    """

    def __init__(
        self,
        session_id: str | None = None,
        *,
        broker_image: str = BROKER_IMAGE,
        client: Any = None,
        broker_timeout_s: float = BROKER_START_TIMEOUT_S,
        mgmt_timeout_s: float = MGMT_TIMEOUT_S,
    ) -> None:
        sid = session_id or f"{SHARED_PREFIX}{os.urandom(4).hex()}"
        if not sid.startswith(SHARED_PREFIX) or not RUN_ID_RE.match(sid):
            raise ValueError(
                f"shared session id {sid!r}: use '{SHARED_PREFIX}' then letters, digits, "
                "'.', '_', '-' (max 63 in all)"
            )
        if mgmt_timeout_s <= 0:
            raise ValueError(f"mgmt_timeout_s must be > 0, got {mgmt_timeout_s}")
        self.session_id = sid
        self.network_name = f"rmq-harness-{sid}"
        self.broker_image = broker_image
        self.broker_timeout_s = broker_timeout_s
        self.mgmt_timeout_s = mgmt_timeout_s
        self._client = client
        self._lock = threading.RLock()
        self._owner: DockerCluster | None = None
        self._attached: set[str] = set()
        # What the owner's stop said about the engine (a swarm it had to keep), for
        # the suite's caller to print: the runs on this broker hold no engine.
        self.notices: list[str] = []

    # -- lifecycle ------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = connect()
        return self._client

    @property
    def started(self) -> bool:
        return self._owner is not None and self._owner.endpoint is not None

    def start(self, run_dir: Path) -> None:
        """Create the network and the broker and wait until it answers (bounded by
        ``broker_timeout_s``). ClusterError on failure, with nothing left behind."""
        with self._lock:
            if self._owner is not None:
                raise ClusterError(f"shared broker {self.session_id} already started")
            owner = DockerCluster(
                self.session_id, run_dir, Recorder(None), broker_image=self.broker_image,
                client=self.client, broker_timeout_s=self.broker_timeout_s,
            )
            owner.labels[LABEL_SHARED] = self.session_id
            self._owner = owner
        try:
            owner.start_broker()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Remove the broker, the network and any container still attached with the
        session's label. Saves the broker log first. Idempotent; never raises."""
        with self._lock:
            owner, self._owner = self._owner, None
            self._attached.clear()
        if owner is None:
            return
        with contextlib.suppress(Exception):
            # Runs that did not stop: their containers hold the network.
            for c in self.client.containers.list(
                all=True, filters={"label": f"{LABEL_SHARED}={self.session_id}"}
            ):
                if (c.labels or {}).get(LABEL_RUN) != self.session_id:
                    with contextlib.suppress(Exception):
                        c.remove(force=True, v=True)
        with contextlib.suppress(Exception):
            owner.stop()  # saves logs/rabbitmq.log, removes broker and network
        self.notices.extend(owner.notices)

    def __enter__(self) -> SharedDockerBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what is there ------------------------------------------------------------------
    @property
    def endpoint(self) -> BrokerEndpoint | None:
        """The default vhost ``/`` (for the harness; runs use ``new_vhost``)."""
        owner = self._owner
        return owner.endpoint if owner is not None else None

    @property
    def broker_ip(self) -> str | None:
        owner = self._owner
        return owner.broker_ip if owner is not None else None

    @property
    def container_id(self) -> str | None:
        owner = self._owner
        broker = owner._broker if owner is not None else None
        return str(broker.id) if broker is not None else None

    def attached_runs(self) -> list[str]:
        """Run ids with a vhost and not yet stopped."""
        with self._lock:
            return sorted(self._attached)

    def _attach(self, run_id: str) -> None:
        with self._lock:
            self._attached.add(run_id)

    def _detach(self, run_id: str) -> None:
        with self._lock:
            self._attached.discard(run_id)

    # -- vhosts ---------------------------------------------------------------------------
    def _mgmt(self, method: str, path: str, body: dict[str, Any] | None = None) -> int:
        """One management API call (a few attempts on connection errors); the status.
        HTTP errors other than 404 raise ClusterError; 404 is returned."""
        ip = self.broker_ip
        if ip is None:
            raise ClusterError(
                "the shared broker is not started: call SharedDockerBroker.start() first"
            )
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": GUEST_AUTH, "content-type": "application/json"}
        last = ""
        for attempt in range(MGMT_ATTEMPTS):
            req = urllib.request.Request(
                f"http://{ip}:{MGMT_PORT}{path}", data=data, headers=headers, method=method
            )
            try:
                with urllib.request.urlopen(req, timeout=self.mgmt_timeout_s) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return 404
                detail = exc.read().decode("utf-8", "replace")[:200]
                raise ClusterError(
                    f"shared broker {method} {path}: HTTP {exc.code} {detail}".strip()
                ) from None
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))[:200]
                if attempt + 1 < MGMT_ATTEMPTS:
                    time.sleep(0.5)
        raise ClusterError(
            f"shared broker {method} {path} failed: {last}; is {self.session_id} still "
            "running? (`docker ps --filter label=rmq-harness.shared`)"
        )

    def new_vhost(self, name: str) -> BrokerEndpoint:
        """A fresh vhost ``name`` (an old one of that name is deleted first) where
        ``guest`` may configure, write and read everything; its endpoint."""
        if not RUN_ID_RE.match(name):
            raise ValueError(f"vhost {name!r}: use letters, digits, '.', '_', '-' (max 63)")
        ip = self.broker_ip
        if ip is None:
            raise ClusterError(
                "the shared broker is not started: call SharedDockerBroker.start() first"
            )
        q = quote(name, safe="")
        self._mgmt("DELETE", f"/api/vhosts/{q}")
        self._mgmt("PUT", f"/api/vhosts/{q}", {})
        try:
            status = self._mgmt(
                "PUT", f"/api/permissions/{q}/guest",
                {"configure": ".*", "write": ".*", "read": ".*"},
            )
            if status == 404:
                raise ClusterError(f"shared broker: vhost {name} vanished while being set up")
        except BaseException:
            with contextlib.suppress(Exception):
                self._mgmt("DELETE", f"/api/vhosts/{q}")
            raise
        return BrokerEndpoint(
            amqp_url=f"amqp://guest:guest@{ip}:{AMQP_PORT}/{q}",
            management_url=f"http://{ip}:{MGMT_PORT}",
            vhost=name,
        )

    def delete_vhost(self, name: str) -> None:
        """Delete the vhost and everything in it; a missing one is fine."""
        self._mgmt("DELETE", f"/api/vhosts/{quote(name, safe='')}")
