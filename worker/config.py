"""Worker configuration from the environment (worker contract v1 plus our own knobs).

Every value is validated with a bound; a bad value raises ``ConfigError`` whose
message is one line naming the variable, what was wrong, and what is accepted.
Empty strings count as unset, so a harness may pass ``VAR=""`` for "default".
"""

from __future__ import annotations

import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import pika

from worker.bugs import KNOWN_BUGS, ORCHESTRATOR_BUGS, SEARCH_BUGS

EVENT_MODES = ("full", "minimal")

__all__ = ["EVENT_MODES", "KNOWN_BUGS", "Config", "ConfigError", "load_config"]

QUEUE_TYPES: Final = ("classic", "quorum")
MAX_QUEUE_NAME_LEN: Final = 200  # AMQP allows 255 bytes; leave room for ".retry.<ms>"


class ConfigError(ValueError):
    """A bad environment variable; the message is one line."""


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    user: str
    password: str
    vhost: str
    url: str | None  # RABBITMQ_URL; when set it wins over host/port/user/password/vhost
    queue: str
    concurrency: int
    worker_id: str
    health_port: int  # 0 = health endpoint disabled
    prefetch: int
    retry_base_ms: int
    max_attempts: int
    heartbeat_s: int
    shutdown_grace_s: float
    reconnect_max_s: float
    liveness_stale_s: float
    dlx: str
    dlq: str
    queue_type: str
    # RABBITMQ_DELIVERY_LIMIT (quorum queues only): the broker dead-letters a message
    # delivered more than this many times (x-delivery-limit), so a message that
    # crashes every worker that takes it ends in the DLQ instead of looping. 0: none.
    delivery_limit: int
    bug: str  # WORKER_BUG: "" (correct worker) or one of KNOWN_BUGS (worker/bugs.py)
    # WORKER_EVENTS: "full" (every contract event) or "minimal" (only received and
    # processed: the contract's minimum plus receipts, as many brought workers).
    events: str = "full"

    def retry_delay_ms(self, attempt: int) -> int:
        """Delay before attempt ``attempt + 1`` after attempt ``attempt`` failed."""
        if not 1 <= attempt < self.max_attempts:
            raise ValueError(f"no retry after attempt {attempt} (max {self.max_attempts})")
        return int(self.retry_base_ms * 2 ** (attempt - 1))

    def retry_delays_ms(self) -> list[int]:
        return [self.retry_delay_ms(k) for k in range(1, self.max_attempts)]

    def retry_queue(self, delay_ms: int) -> str:
        return f"{self.queue}.retry.{delay_ms}"

    def connection_parameters(self) -> pika.ConnectionParameters | pika.URLParameters:
        params: pika.ConnectionParameters | pika.URLParameters
        if self.url:
            params = pika.URLParameters(self.url)
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.url).query)
            if "heartbeat" not in query:
                params.heartbeat = self.heartbeat_s
        else:
            params = pika.ConnectionParameters(
                host=self.host,
                port=self.port,
                virtual_host=self.vhost,
                credentials=pika.PlainCredentials(self.user, self.password),
                heartbeat=self.heartbeat_s,
            )
        params.connection_attempts = 1
        params.retry_delay = 0
        params.socket_timeout = 5.0
        params.stack_timeout = 10.0
        params.blocked_connection_timeout = 60.0
        params.client_properties = {"connection_name": f"worker {self.worker_id}"}
        return params

    def broker_display(self) -> str:
        """Where the worker connects, without the password."""
        if self.url:
            parts = urllib.parse.urlsplit(self.url)
            host = parts.hostname or "?"
            port = parts.port or 5672
            return f"{parts.scheme}://{host}:{port}{parts.path or '/'}"
        return f"amqp://{self.host}:{self.port}/{urllib.parse.quote(self.vhost, safe='')}"


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer (expected {lo}..{hi})") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range (expected {lo}..{hi})")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number (expected {lo}..{hi})") from None
    if not lo <= value <= hi:  # also rejects nan
        raise ConfigError(f"{name}={raw} is out of range (expected {lo}..{hi})")
    return value


def _name(env: Mapping[str, str], var: str, default: str) -> str:
    value = _get(env, var) or default
    if len(value.encode()) > MAX_QUEUE_NAME_LEN:
        raise ConfigError(f"{var} is longer than {MAX_QUEUE_NAME_LEN} bytes")
    if any(ord(c) < 32 for c in value):
        raise ConfigError(f"{var}={value!r} contains control characters")
    return value


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ConfigError(
            f"RABBITMQ_URL must look like amqp://user:pass@host:port/vhost (got scheme "
            f"{parts.scheme or 'none'!r})"
        )
    try:
        _ = parts.port
        pika.URLParameters(url)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"RABBITMQ_URL is not a valid AMQP URL: {exc}") from None


def load_config(env: Mapping[str, str]) -> Config:
    """Parse and validate the worker's environment. Raises ConfigError."""
    url = _get(env, "RABBITMQ_URL")
    if url is not None:
        _check_url(url)
    queue = _name(env, "RABBITMQ_QUEUE", "go.logger")
    concurrency = _int(env, "WORKER_CONCURRENCY", 10, 1, 1000)
    max_attempts = _int(env, "WORKER_MAX_ATTEMPTS", 4, 1, 20)
    retry_base_ms = _int(env, "WORKER_RETRY_BASE_MS", 1000, 1, 3_600_000)
    longest_ms = retry_base_ms * 2 ** max(0, max_attempts - 2)
    if longest_ms > 86_400_000:
        raise ConfigError(
            f"WORKER_RETRY_BASE_MS={retry_base_ms} with WORKER_MAX_ATTEMPTS={max_attempts} "
            f"gives a retry delay of {longest_ms} ms (limit 86400000 = 1 day)"
        )
    queue_type = (_get(env, "RABBITMQ_QUEUE_TYPE") or "classic").lower()
    if queue_type not in QUEUE_TYPES:
        raise ConfigError(f"RABBITMQ_QUEUE_TYPE={queue_type!r} (expected classic or quorum)")
    delivery_limit = _int(env, "RABBITMQ_DELIVERY_LIMIT", 0, 0, 1000)
    if delivery_limit and queue_type != "quorum":
        raise ConfigError(
            f"RABBITMQ_DELIVERY_LIMIT={delivery_limit} needs RABBITMQ_QUEUE_TYPE=quorum "
            "(a classic queue counts no deliveries)")
    bug = _get(env, "WORKER_BUG") or ""
    planted = KNOWN_BUGS + SEARCH_BUGS + ORCHESTRATOR_BUGS
    if bug and bug not in planted:
        raise ConfigError(
            f"WORKER_BUG={bug!r} is not a known planted bug (expected empty or one of: "
            f"{', '.join(planted)})"
        )
    events = (_get(env, "WORKER_EVENTS") or "full").lower()
    if events not in EVENT_MODES:
        raise ConfigError(f"WORKER_EVENTS={events!r} (expected one of: {', '.join(EVENT_MODES)})")
    worker_id = _get(env, "WORKER_ID") or socket.gethostname() or "worker"
    if len(worker_id) > 200:
        raise ConfigError("WORKER_ID is longer than 200 characters")
    return Config(
        host=_get(env, "RABBITMQ_HOST") or "localhost",
        port=_int(env, "RABBITMQ_PORT", 5672, 1, 65535),
        user=_get(env, "RABBITMQ_USER") or "guest",
        password=env.get("RABBITMQ_PASSWORD") or "guest",
        vhost=_get(env, "RABBITMQ_VHOST") or "/",
        url=url,
        queue=queue,
        concurrency=concurrency,
        worker_id=worker_id,
        health_port=_int(env, "HEALTH_PORT", 8080, 0, 65535),
        prefetch=_int(env, "WORKER_PREFETCH", concurrency, 1, 65535),
        retry_base_ms=retry_base_ms,
        max_attempts=max_attempts,
        heartbeat_s=_int(env, "RABBITMQ_HEARTBEAT_S", 10, 0, 600),
        shutdown_grace_s=_float(env, "WORKER_SHUTDOWN_GRACE_S", 10.0, 0.0, 3600.0),
        reconnect_max_s=_float(env, "WORKER_RECONNECT_MAX_S", 5.0, 0.25, 300.0),
        liveness_stale_s=_float(env, "WORKER_LIVENESS_STALE_S", 90.0, 5.0, 3600.0),
        dlx=_name(env, "RABBITMQ_DLX", f"{queue}.dlx"),
        dlq=_name(env, "RABBITMQ_DLQ", f"{queue}.dlq"),
        queue_type=queue_type,
        delivery_limit=delivery_limit,
        bug=bug,
        events=events,
    )
