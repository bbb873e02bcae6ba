"""A scenario's broker settings (``cluster.consumer_timeout_ms``) and delivery limit:
how they reach the broker and the workers, and where they cannot."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.cluster.base import CHANNEL_TICK_MS, BrokerSettings
from harness.options import usable_shared_broker, worker_env
from harness.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]


def test_a_consumer_timeout_becomes_erlang_flags_with_a_short_channel_tick() -> None:
    assert BrokerSettings().erl_args() == ""
    args = BrokerSettings(consumer_timeout_ms=5000).erl_args()
    assert args == f"-rabbit consumer_timeout 5000 -rabbit channel_tick_interval {CHANNEL_TICK_MS}"


def test_a_scenario_with_broker_settings_gets_a_broker_of_its_own() -> None:
    """A setting is the whole node's: a run with one never joins a shared broker."""
    shared = object()
    assert usable_shared_broker(shared, BrokerSettings(consumer_timeout_ms=5000)) is None
    assert usable_shared_broker(shared, BrokerSettings()) is shared
    assert usable_shared_broker(shared, None) is shared


def test_the_delivery_limit_reaches_the_workers() -> None:
    sc = load_scenario(ROOT / "scenarios" / "poison-crash-loop.yaml")
    assert worker_env(sc)["RABBITMQ_DELIVERY_LIMIT"] == "3"
    plain = load_scenario(ROOT / "scenarios" / "crash-during.yaml")
    assert "RABBITMQ_DELIVERY_LIMIT" not in worker_env(plain)


def test_a_consumer_timeout_on_a_broker_not_the_harnesss_is_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(ROOT / "scenarios" / "consumer-timeout.yaml"), "--backend", "local",
                 "--broker-url", "amqp://guest:secret@127.0.0.1:1/", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "consumer_timeout_ms" in err and "without --broker-url" in err
    assert "\n" not in err and "secret" not in err
