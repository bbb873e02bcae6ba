"""worker.config: environment parsing and validation (no broker)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest

from worker.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    cfg = load_config({"WORKER_ID": "w1"})
    assert (cfg.host, cfg.port, cfg.user, cfg.password, cfg.vhost) == (
        "localhost", 5672, "guest", "guest", "/")
    assert cfg.url is None
    assert cfg.queue == "go.logger"
    assert cfg.concurrency == 10 and cfg.prefetch == 10
    assert cfg.health_port == 8080
    assert cfg.retry_base_ms == 1000 and cfg.max_attempts == 4
    assert cfg.heartbeat_s == 10 and cfg.shutdown_grace_s == 10.0
    assert cfg.reconnect_max_s == 5.0
    assert cfg.dlx == "go.logger.dlx" and cfg.dlq == "go.logger.dlq"
    assert cfg.queue_type == "classic" and cfg.bug == ""
    assert cfg.worker_id == "w1"


def test_worker_id_defaults_to_hostname() -> None:
    import socket

    assert load_config({}).worker_id == socket.gethostname()


def test_prefetch_follows_concurrency_and_names_follow_queue() -> None:
    cfg = load_config({"WORKER_CONCURRENCY": "3", "RABBITMQ_QUEUE": "jobs"})
    assert cfg.prefetch == 3 and cfg.dlx == "jobs.dlx" and cfg.dlq == "jobs.dlq"
    cfg = load_config({"WORKER_CONCURRENCY": "3", "WORKER_PREFETCH": "7",
                       "RABBITMQ_DLX": "x", "RABBITMQ_DLQ": "y"})
    assert cfg.prefetch == 7 and cfg.dlx == "x" and cfg.dlq == "y"


def test_retry_tiers() -> None:
    cfg = load_config({"WORKER_RETRY_BASE_MS": "250", "WORKER_MAX_ATTEMPTS": "4",
                       "RABBITMQ_QUEUE": "q"})
    assert cfg.retry_delays_ms() == [250, 500, 1000]
    assert cfg.retry_delay_ms(1) == 250 and cfg.retry_delay_ms(3) == 1000
    assert cfg.retry_queue(500) == "q.retry.500"
    with pytest.raises(ValueError):
        cfg.retry_delay_ms(4)
    assert load_config({"WORKER_MAX_ATTEMPTS": "1"}).retry_delays_ms() == []


def test_empty_values_mean_default() -> None:
    cfg = load_config({"RABBITMQ_URL": "", "WORKER_CONCURRENCY": " ", "WORKER_BUG": ""})
    assert cfg.url is None and cfg.concurrency == 10 and cfg.bug == ""


def test_bug_is_stored_as_given() -> None:
    assert load_config({"WORKER_BUG": "ack-before-process"}).bug == "ack-before-process"


def test_url_wins_over_pieces() -> None:
    cfg = load_config({"RABBITMQ_URL": "amqp://u:p@broker:5673/v1",
                       "RABBITMQ_HOST": "other", "RABBITMQ_PORT": "1234",
                       "RABBITMQ_HEARTBEAT_S": "7"})
    params = cfg.connection_parameters()
    assert isinstance(params, pika.URLParameters)
    assert (params.host, params.port, params.virtual_host) == ("broker", 5673, "v1")
    assert params.heartbeat == 7
    assert "p@" not in cfg.broker_display()
    # A heartbeat in the URL is respected.
    cfg = load_config({"RABBITMQ_URL": "amqp://u:p@broker/%2F?heartbeat=3"})
    assert cfg.connection_parameters().heartbeat == 3


def test_pieces_build_parameters() -> None:
    cfg = load_config({"RABBITMQ_HOST": "h", "RABBITMQ_PORT": "5999", "RABBITMQ_USER": "u",
                       "RABBITMQ_PASSWORD": "pw", "RABBITMQ_VHOST": "vh"})
    p = cfg.connection_parameters()
    assert (p.host, p.port, p.virtual_host, p.heartbeat) == ("h", 5999, "vh", 10)
    assert p.credentials.username == "u" and p.credentials.password == "pw"
    assert p.connection_attempts == 1


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"WORKER_CONCURRENCY": "ten"}, "WORKER_CONCURRENCY"),
        ({"WORKER_CONCURRENCY": "0"}, "WORKER_CONCURRENCY"),
        ({"RABBITMQ_PORT": "70000"}, "RABBITMQ_PORT"),
        ({"HEALTH_PORT": "-1"}, "HEALTH_PORT"),
        ({"WORKER_PREFETCH": "0"}, "WORKER_PREFETCH"),
        ({"WORKER_MAX_ATTEMPTS": "0"}, "WORKER_MAX_ATTEMPTS"),
        ({"WORKER_RETRY_BASE_MS": "1.5"}, "WORKER_RETRY_BASE_MS"),
        ({"WORKER_RETRY_BASE_MS": "3600000", "WORKER_MAX_ATTEMPTS": "20"},
         "WORKER_RETRY_BASE_MS"),
        ({"WORKER_SHUTDOWN_GRACE_S": "nan"}, "WORKER_SHUTDOWN_GRACE_S"),
        ({"WORKER_RECONNECT_MAX_S": "0.1"}, "WORKER_RECONNECT_MAX_S"),
        ({"RABBITMQ_HEARTBEAT_S": "x"}, "RABBITMQ_HEARTBEAT_S"),
        ({"RABBITMQ_QUEUE_TYPE": "stream"}, "RABBITMQ_QUEUE_TYPE"),
        ({"RABBITMQ_DELIVERY_LIMIT": "3"}, "RABBITMQ_DELIVERY_LIMIT"),  # classic: no count
        ({"RABBITMQ_DELIVERY_LIMIT": "-1", "RABBITMQ_QUEUE_TYPE": "quorum"},
         "RABBITMQ_DELIVERY_LIMIT"),
        ({"RABBITMQ_URL": "http://x"}, "RABBITMQ_URL"),
        ({"RABBITMQ_URL": "amqp://h:notaport/"}, "RABBITMQ_URL"),
        ({"RABBITMQ_QUEUE": "q" * 300}, "RABBITMQ_QUEUE"),
    ],
)
def test_bad_values_one_line(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


def test_quorum_accepted_case_insensitive() -> None:
    assert load_config({"RABBITMQ_QUEUE_TYPE": "Quorum"}).queue_type == "quorum"


def test_delivery_limit_on_a_quorum_queue() -> None:
    cfg = load_config({"RABBITMQ_QUEUE_TYPE": "quorum", "RABBITMQ_DELIVERY_LIMIT": "3"})
    assert cfg.delivery_limit == 3
    assert load_config({}).delivery_limit == 0


def _run_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "WORKER_", "HEALTH_"))}
    full.update(env, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "worker"], env=full, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_main_bad_config_exits_2_with_one_line() -> None:
    p = _run_worker({"WORKER_CONCURRENCY": "lots"})
    out, err = p.communicate(timeout=30)
    assert p.returncode == 2
    assert out == b""
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "WORKER_CONCURRENCY" in lines[0]


def test_main_unreachable_broker_retries_then_exits_0_on_sigterm() -> None:
    import json
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = _run_worker({"RABBITMQ_HOST": "127.0.0.1", "RABBITMQ_PORT": str(port),
                     "HEALTH_PORT": "0", "WORKER_RECONNECT_MAX_S": "0.5", "WORKER_ID": "u1"})
    time.sleep(2.5)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0
    events = [json.loads(line) for line in out.decode().splitlines()]
    lost = [e for e in events if e["event"] == "connection_lost"]
    assert len(lost) >= 3  # kept retrying, one event per failed attempt
    assert all(e["worker"] == "u1" and "reason" in e for e in lost)
    assert events[-1]["event"] == "shutdown" and events[-1]["in_flight"] == 0
    assert not [e for e in events if e["event"] in ("connected", "ready")]
