"""Shared test configuration.

Markers (see pyproject.toml): ``integration`` (real RabbitMQ and real workers),
``docker`` (a Docker engine and the harness images), ``quality`` (a planted bug
must be caught). In CI (``CI=true``) a missing Docker engine is a failure, not a
skip: the docker tests must run there.
"""

from __future__ import annotations

import os
import shutil

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
