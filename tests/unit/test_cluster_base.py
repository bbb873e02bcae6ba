"""What both backends share: contract v1's environment and the events parser choice."""

from __future__ import annotations

import re

import pytest

from harness.cluster.base import WorkerSpec, contract_env


def test_contract_env_quotes_credentials_and_vhost_in_the_url() -> None:
    env = contract_env("worker-2", host="broker", port=5672, user="u@x", password="p/w",
                       vhost="/", health_port=8080)
    assert env["RABBITMQ_URL"] == "amqp://u%40x:p%2Fw@broker:5672/%2F"
    assert env["WORKER_ID"] == "worker-2"
    assert (env["RABBITMQ_HOST"], env["RABBITMQ_PORT"], env["HEALTH_PORT"]) == \
        ("broker", "5672", "8080")
    assert env["RABBITMQ_VHOST"] == "/"


def test_events_json_has_no_pattern_and_regex_needs_an_id_group() -> None:
    assert WorkerSpec(events="json").events_pattern() is None
    pattern = WorkerSpec(events=r"regex:done (?P<id>\S+)").events_pattern()
    assert pattern is not None and pattern.search("done t-1")["id"] == "t-1"  # type: ignore[index]


@pytest.mark.parametrize("events, message", [
    ("regex:done (\\S+)", "needs a named group (?P<id>...)"),
    ("regex:(?P<id>", "events regex"),
    ("yaml", "use 'json', 'regex:PATTERN' or a preset"),
])
def test_bad_events_say_what_to_fix(events: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        WorkerSpec(events=events).events_pattern()
