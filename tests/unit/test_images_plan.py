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


def test_example_images_pin_the_installed_framework() -> None:
    from importlib import metadata

    from harness import exampleimages

    assert exampleimages.pinned_requirement("celery") == f"celery=={metadata.version('celery')}"
    # The extra goes before the pin: "dramatiq==2.2.1[rabbitmq]" is no requirement.
    assert exampleimages.pinned_requirement("dramatiq") == (
        f"dramatiq[rabbitmq]=={metadata.version('dramatiq')}")
    with pytest.raises(ValueError, match="no example app 'rq'"):
        exampleimages.example_image("rq")


def test_example_image_inputs_cover_the_apps_and_the_framework(tmp_path: Path) -> None:
    """A change to an app, its Dockerfile or its command rebuilds its image."""
    import shutil

    from harness import exampleimages

    root = tmp_path / "src"
    for part in ("pyproject.toml", "examples", "harness_events", "worker"):
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, root / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            root.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / part)
    (root / "harness").mkdir()
    (root / "harness" / "__init__.py").write_text("")
    before = exampleimages.example_inputs_hash("celery", "sha256:base", root)
    assert before != exampleimages.example_inputs_hash("dramatiq", "sha256:base", root)
    assert before != exampleimages.example_inputs_hash("celery", "sha256:other", root)
    with open(root / "examples" / "container-cmd.sh", "a") as f:
        f.write("# changed\n")
    assert before != exampleimages.example_inputs_hash("celery", "sha256:base", root)


def test_the_example_command_runs_each_framework_as_its_docs_do() -> None:
    text = (ROOT / "examples" / "container-cmd.sh").read_text()
    assert "exec celery -A examples.celery_app.tasks worker" in text
    assert "exec dramatiq examples.dramatiq_app.tasks" in text
    docker = (ROOT / "examples" / "Dockerfile").read_text()
    assert 'CMD ["/opt/harness-example/examples/container-cmd.sh"]' in docker
    assert "--no-index" in docker  # nothing fetched inside the build
