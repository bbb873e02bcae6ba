"""The harness's broker as a testcontainers container, for a user's own tests
(the pytest plugin's ``harness_broker`` fixture) and for anyone who wants a
RabbitMQ of the harness's image on a published port.

Built on ``testcontainers.core.container.DockerContainer`` (builder methods and
a wait strategy), with three differences from its defaults:

- **No reaper.** testcontainers removes a dead session's containers through its
  Ryuk image, which cannot be pulled on a machine without a registry. It runs
  with the reaper disabled, and the container carries the harness's labels
  (``rmq-harness=1`` and the owner's pid, start time and host), so the harness's
  own sweep (``harness.cluster.docker.engine.sweep_stale``, run by every docker
  run) removes it once the process that started it is gone.
- **Ready means the management API answers** (``HttpWaitStrategy`` on
  ``/api/overview`` with the broker's credentials), not a log line: the harness
  needs that API, and it opens after AMQP.
- **A start-up timeout says so in one line** (``BrokerStartError``) with the
  container's last log lines, and the whole log in a file when a directory is
  given; the container is removed.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Final

from harness.cluster.docker.engine import (
    AMQP_PORT,
    BROKER_IMAGE,
    LABEL,
    LABEL_ROLE,
    harness_identity,
)

START_TIMEOUT_S: Final = 120.0  # a cold broker boots in ~10 s here; 2 cores under load, more
LOG_TAIL_LINES: Final = 20
MGMT_PORT: Final = 15672
# The harness's broker image lets guest in from other hosts (its own network).
USER: Final = "guest"
PASSWORD: Final = "guest"


class BrokerStartError(RuntimeError):
    """The broker container did not become ready; the message ends with its log."""


class HarnessBroker:
    """``HarnessBroker().with_startup_timeout(60).start()``: a RabbitMQ container
    of the harness's image with AMQP and the management API on published host
    ports; ``url`` is the ``--broker-url`` for it. A context manager."""

    def __init__(self, image: str = BROKER_IMAGE) -> None:
        self.image = image
        self.startup_timeout_s = START_TIMEOUT_S
        self.log_dir: Path | None = None
        self._container: Any = None

    # -- builder ---------------------------------------------------------------------
    def with_startup_timeout(self, timeout_s: float) -> HarnessBroker:
        if not 0 < timeout_s <= 3600:
            raise ValueError(f"startup timeout {timeout_s} s: give 0 < timeout_s <= 3600")
        self.startup_timeout_s = timeout_s
        return self

    def with_log_dir(self, path: Path) -> HarnessBroker:
        """Where the container's whole log goes when it stops or fails to start."""
        self.log_dir = path
        return self

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> HarnessBroker:
        from testcontainers.core.config import testcontainers_config
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.wait_strategies import HttpWaitStrategy

        # Ryuk's image cannot be pulled offline; the harness's sweep does its job.
        testcontainers_config.ryuk_disabled = True
        labels = {LABEL: "1", LABEL_ROLE: "broker", **harness_identity()}
        wait = (HttpWaitStrategy(MGMT_PORT, "/api/overview")
                .with_basic_credentials(USER, PASSWORD)
                .with_startup_timeout(int(self.startup_timeout_s)))
        container = (DockerContainer(self.image)
                     .with_exposed_ports(AMQP_PORT, MGMT_PORT)
                     .with_kwargs(labels=labels)
                     .waiting_for(wait))
        self._container = container
        started = time.monotonic()
        try:
            container.start()
        except Exception as exc:  # noqa: BLE001 - any start failure: one line, the log, removed
            tail = self._log_tail()
            self._save_log()
            self.stop()
            waited = time.monotonic() - started
            raise BrokerStartError(
                f"the broker container ({self.image}) was not ready after {waited:.0f} s "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                f"is the image built (`harness images build --offline`)? last log lines:\n"
                f"{tail}") from None
        return self

    def stop(self) -> None:
        """Remove the container (saving its log first). Idempotent; never raises."""
        if self._container is None:
            return
        self._save_log()
        container, self._container = self._container, None
        with contextlib.suppress(Exception):
            container.stop()

    def __enter__(self) -> HarnessBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- where it is -----------------------------------------------------------------
    def _port(self, port: int) -> int:
        if self._container is None:
            raise RuntimeError("the broker is not started: call start() first")
        return int(self._container.get_exposed_port(port))

    @property
    def host(self) -> str:
        if self._container is None:
            raise RuntimeError("the broker is not started: call start() first")
        return str(self._container.get_container_host_ip())

    @property
    def url(self) -> str:
        """``amqp://guest:guest@HOST:PORT/?management_port=MPORT``: the form
        ``--broker-url`` and ``harness_run(..., broker_url=...)`` take."""
        return (f"amqp://{USER}:{PASSWORD}@{self.host}:{self._port(AMQP_PORT)}/"
                f"?management_port={self._port(MGMT_PORT)}")

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self._port(MGMT_PORT)}"

    def _logs(self) -> str:
        if self._container is None:
            return ""
        try:
            out, err = self._container.get_logs()
        except Exception:  # noqa: BLE001 - no log is no reason to fail twice
            return ""
        return bytes(out + err).decode(errors="replace")

    def _log_tail(self) -> str:
        lines = self._logs().splitlines()[-LOG_TAIL_LINES:]
        return "\n".join(lines) or "(no log)"

    def _save_log(self) -> None:
        if self.log_dir is None:
            return
        with contextlib.suppress(OSError):
            self.log_dir.mkdir(parents=True, exist_ok=True)
            (self.log_dir / "harness-broker.log").write_text(self._logs())
