"""Shared test configuration.

Markers (see pyproject.toml): ``integration`` (real RabbitMQ and real workers),
``docker`` (a Docker engine and the harness images), ``quality`` (a planted bug
must be caught). In CI (``CI=true``) a missing Docker engine is a failure, not a
skip: the docker tests must run there.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator

import pytest


def docker_available() -> str | None:
    """None when the engine answers and the images exist, else the reason."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        client.images.get("rmq-harness/worker:latest")
        client.images.get("rmq-harness/rabbitmq:latest")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    need_docker = [i for i in items if "docker" in i.keywords]
    need_rabbit = [i for i in items if "integration" in i.keywords]
    if need_docker:
        why = docker_available()
        if why is not None:
            if os.environ.get("CI") == "true":
                raise pytest.UsageError(
                    f"CI: the docker tests must run, but Docker is not usable: {why}. "
                    "Run .ci/docker-setup.sh.")
            for item in need_docker:
                item.add_marker(pytest.mark.skip(reason=f"Docker not usable: {why}"))
    if need_rabbit and shutil.which("rabbitmq-server") is None:
        if os.environ.get("CI") == "true":
            raise pytest.UsageError("CI: rabbitmq-server is not installed (scripts/setup.sh)")
        for item in need_rabbit:
            item.add_marker(pytest.mark.skip(reason="rabbitmq-server not installed"))


@pytest.fixture(scope="session", autouse=True)
def _every_result_validates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every result.json and audit-*.json that the harness wrote during the session
    (those carrying ``harness_version``; hand-built test inputs do not) validates
    against the schema shipped in the package, and names the broker version."""
    yield
    from harness.resultschema import errors, kind_of

    bad: list[str] = []
    checked = 0
    for path in tmp_path_factory.getbasetemp().rglob("*.json"):
        kind = kind_of(path)
        if kind is None:
            continue
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(payload, dict) or "harness_version" not in payload:
            continue
        checked += 1
        problems = errors(kind, payload)
        broker = payload.get("broker") or {}
        if kind == "result" and not payload.get("problems") and not (
                broker.get("rabbitmq_version") or broker.get("error")):
            problems.append("broker: no rabbitmq_version in a run without problems")
        bad.extend(f"{path}: {p}" for p in problems[:3])
    assert not bad, f"{len(bad)} schema error(s) in {checked} result(s):\n" + "\n".join(bad[:20])
