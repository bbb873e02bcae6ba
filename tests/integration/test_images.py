"""The harness images: built and cached by harness.images, and they work.

Every container and network started here is removed again, also on failure.
The host reaches the containers by their addresses on an internal network: no
port is published.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
import uuid
from base64 import b64encode
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest

from harness import images

pytestmark = pytest.mark.docker

START_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def built() -> dict[str, str]:
    return images.ensure_images()


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    c = images.docker_client(timeout_s=120)
    yield c
    c.close()


@pytest.fixture(scope="module")
def network(client: Any, built: dict[str, str]) -> Iterator[Any]:
    net = client.networks.create(
        f"rmqh-imgtest-{uuid.uuid4().hex[:8]}", driver="bridge", internal=True
    )
    yield net
    net.remove()


def _wait(what: str, probe: Callable[[], bool], timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def _address(container: Any, network: Any) -> str:
    container.reload()
    return str(container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"])


def _amqp_up(host: str) -> bool:
    try:  # a plain TCP probe first keeps pika's connection-error logs out of the output
        socket.create_connection((host, 5672), timeout=2).close()
        conn = pika.BlockingConnection(
            pika.ConnectionParameters(host, 5672, socket_timeout=2, blocked_connection_timeout=5)
        )
    except Exception:
        return False
    conn.close()
    return True


def _mgmt_get(host: str, path: str) -> Any:
    req = urllib.request.Request(f"http://{host}:15672{path}")
    req.add_header("Authorization", "Basic " + b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def broker(client: Any, network: Any) -> Iterator[tuple[Any, str]]:
    name = f"rmqh-imgtest-broker-{uuid.uuid4().hex[:8]}"
    container = client.containers.run(
        images.BROKER_IMAGE, detach=True, name=name, hostname=name, network=network.name
    )
    try:
        host = _address(container, network)
        _wait("broker answers AMQP", lambda: _amqp_up(host))
        yield container, host
    finally:
        container.remove(force=True)


def test_images_exist_with_input_labels(client: Any, built: dict[str, str]) -> None:
    assert {images.BROKER_IMAGE, images.WORKER_IMAGE} <= set(built)
    for name, image_id in built.items():
        image = client.images.get(name)
        assert image.id == image_id
        assert image.labels.get(images.INPUTS_LABEL), name


def test_unchanged_inputs_rebuild_nothing(built: dict[str, str]) -> None:
    # Up to 3 tries: while developers edit the tree, a rebuild between two calls is right.
    for _ in range(3):
        first = images.ensure_images()
        started = time.monotonic()
        again = images.ensure_images()
        elapsed_s = time.monotonic() - started
        if again == first:
            break
    assert again == first
    assert elapsed_s < 15, f"a no-op ensure_images took {elapsed_s:.1f} s"


def test_inputs_hash_follows_the_base() -> None:
    assert images.broker_inputs_hash("sha256:a") != images.broker_inputs_hash("sha256:b")
    root = images.project_root()
    assert images.worker_inputs_hash("sha256:a", root) == images.worker_inputs_hash(
        "sha256:a", root
    )


def test_broker_answers_amqp_and_management(broker: tuple[Any, str]) -> None:
    container, host = broker
    conn = pika.BlockingConnection(pika.ConnectionParameters(host, 5672, socket_timeout=5))
    try:
        ch = conn.channel()
        ch.queue_declare("imgtest", durable=False, auto_delete=False)
        ch.basic_publish("", "imgtest", b"hello")
        _wait("message routed", lambda: ch.basic_get("imgtest", auto_ack=True)[2] == b"hello", 10)
    finally:
        conn.close()
    overview = _mgmt_get(host, "/api/overview")
    assert overview["management_version"]
    assert any(q["name"] == "imgtest" for q in _mgmt_get(host, "/api/queues"))
    # The server runs as the rabbitmq user, never as root.
    top = container.top(ps_args="-eo pid,user,comm")
    column = top["Titles"].index("USER")
    users = {row[column] for row in top["Processes"]}
    assert "root" not in users


def test_worker_image_is_unprivileged_with_healthcheck(client: Any, built: dict[str, str]) -> None:
    config = client.images.get(images.WORKER_IMAGE).attrs["Config"]
    assert config["User"] not in ("", "0", "root")
    assert config["Cmd"] == ["python3", "-m", "worker"]
    assert "/healthcheck" in " ".join(config["Healthcheck"]["Test"])
    out = client.containers.run(
        images.WORKER_IMAGE,
        ["python3", "-c", "import os, pika, worker; print(os.getuid())"],
        remove=True,
        network_disabled=True,
    )
    assert out.decode().strip() != "0"


def test_worker_container_processes_a_task(
    client: Any, network: Any, broker: tuple[Any, str]
) -> None:
    _, broker_host = broker
    queue = f"imgtest.{uuid.uuid4().hex[:6]}"
    broker_name = broker[0].name
    worker = client.containers.run(
        images.WORKER_IMAGE,
        detach=True,
        name=f"rmqh-imgtest-worker-{uuid.uuid4().hex[:8]}",
        network=network.name,
        environment={
            "RABBITMQ_HOST": broker_name,
            "RABBITMQ_QUEUE": queue,
            "WORKER_CONCURRENCY": "2",
            "WORKER_ID": "img-worker-1",
        },
    )
    try:
        _wait("worker ready", lambda: b'"ready"' in worker.logs(stdout=True, stderr=False))
        conn = pika.BlockingConnection(
            pika.ConnectionParameters(broker_host, 5672, socket_timeout=5)
        )
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            body = {"id": "img-t1", "task": "logger", "payload": {}, "directives": {}}
            ch.basic_publish(
                "",
                queue,
                json.dumps(body).encode(),
                pika.BasicProperties(
                    message_id="img-t1", delivery_mode=2, content_type="application/json"
                ),
            )
        finally:
            conn.close()

        def processed() -> bool:
            for line in worker.logs(stdout=True, stderr=False).decode().splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "processed" and event.get("id") == "img-t1":
                    return True
            return False

        _wait("task processed", processed, 30)

        def healthy() -> bool:
            worker.reload()
            return bool(worker.attrs["State"].get("Health", {}).get("Status") == "healthy")

        _wait("worker container healthy (HEALTHCHECK)", healthy, 60)
    finally:
        worker.remove(force=True)
