"""The image build plan: both paths (offline base, public bases) build every
image the docker backend runs, the network-fault sidecar included, and the
public bases are pinned (a rerun elsewhere must test the same broker)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness import imagekit, netfault
from harness.cluster.docker import engine

ROOT = Path(__file__).resolve().parents[2]


def images(offline: bool) -> set[str]:
    return {step.image for step in imagekit.build_plan(offline)}


@pytest.mark.parametrize("offline", [True, False])
def test_every_image_the_backend_runs_is_built(offline: bool) -> None:
    needed = {engine.BROKER_IMAGE, engine.WORKER_IMAGE, netfault.SIDECAR_IMAGE}
    assert needed <= images(offline)


def test_the_public_path_builds_the_sidecar_on_a_public_base() -> None:
    step = next(s for s in imagekit.build_plan(False) if s.image == netfault.SIDECAR_IMAGE)
    assert step.base == imagekit.PUBLIC_SIDECAR_BASE
    assert all(s.base != imagekit.BASE_IMAGE for s in imagekit.build_plan(False))
    assert imagekit.BASE_IMAGE not in images(False)  # nothing offline on the public path


def test_the_offline_path_builds_on_the_base_it_makes_first() -> None:
    plan = imagekit.build_plan(True)
    assert plan[0].image == imagekit.BASE_IMAGE and plan[0].context == "debootstrap"
    assert all(s.base == imagekit.BASE_IMAGE for s in plan[1:])


def test_public_bases_are_pinned_and_the_broker_is_the_users_choice(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(imagekit.BROKER_BASE_ENV, raising=False)
    broker = next(s for s in imagekit.build_plan(False) if s.context == "broker")
    assert re.fullmatch(r"rabbitmq:\d+\.\d+\.\d+-management", broker.base), broker.base
    monkeypatch.setenv(imagekit.BROKER_BASE_ENV, "rabbitmq:3.13.7-management")
    broker = next(s for s in imagekit.build_plan(False) if s.context == "broker")
    assert broker.base == "rabbitmq:3.13.7-management"


@pytest.mark.parametrize(("dockerfile", "base"), [
    ("harness/build_contexts/rabbitmq/Dockerfile", imagekit.PUBLIC_BROKER_BASE),
    ("harness/build_contexts/netfault/Dockerfile", imagekit.PUBLIC_SIDECAR_BASE),
    ("worker/Dockerfile", imagekit.PUBLIC_WORKER_BASE),
])
def test_each_dockerfile_defaults_to_the_pinned_base(dockerfile: str, base: str) -> None:
    text = (ROOT / dockerfile).read_text()
    assert f"ARG BASE={base}\n" in text


def test_images_build_refuses_a_broker_base_offline(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.images import images_main

    assert images_main(["build", "--offline", "--broker-base", "rabbitmq:4.0-management"]) == 2
    assert "--broker-base picks a public base" in capsys.readouterr().err
