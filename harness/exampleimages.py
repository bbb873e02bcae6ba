"""The example framework apps' images (``examples/``): the Celery app and the
Dramatiq app, each as a user would ship it, built offline like the reference
worker's (``harness images build --examples``).

- ``rmq-harness/celery-example:latest`` and ``rmq-harness/dramatiq-example:latest``:
  ``examples/Dockerfile`` with ``APP`` = the framework, on the worker's base (the
  public ``python:3.11-slim-bookworm``, or offline ``rmq-harness/base:bookworm``).
- Build context: ``app/`` (a copy of ``examples/``), ``wheels/``: the project's
  wheel (``harness_events`` and the directives), the framework's wheels and its
  dependencies' at the versions installed here (``pip wheel`` under a constraints
  file of this environment, kept in the cache directory; it needs PyPI or a pip
  cache once), and ``requirements.txt`` naming the framework.
- Cache: the image's inputs hash covers the Dockerfile, ``examples/``, the
  project's sources, the framework's version and the base image's id.

The examples live in a checkout only (they are not in the wheel), so their
images are built from one. Run them with ``harness run --worker-image
rmq-harness/celery-example:latest --format celery --worker-env ...``
(docs/frameworks.md).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from harness.cluster.base import ClusterError
from harness.imagekit import (
    BASE_LABEL,
    INPUTS_LABEL,
    RECIPE_VERSION,
    Console,
    _digest,
    _tree_files,
    cache_dir,
    image_or_none,
    labels_of,
    project_root,
    remove_if_dangling,
    source_files,
)
from harness.imagewheels import pip_run, project_wheel

# app -> (image, the requirement the image installs, the distribution whose version pins it)
EXAMPLES: Final = {
    "celery": ("rmq-harness/celery-example:latest", "celery", "celery"),
    "dramatiq": ("rmq-harness/dramatiq-example:latest", "dramatiq[rabbitmq]", "dramatiq"),
}


def example_image(app: str) -> str:
    try:
        return EXAMPLES[app][0]
    except KeyError:
        raise ValueError(f"no example app {app!r}: use {', '.join(EXAMPLES)}") from None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        raise ClusterError(f"{dist} is not installed here: the example image pins the version "
                           "installed beside the harness; pip install 'rmq-chaos-harness"
                           "[frameworks]'") from None


def _constraints(path: Path) -> None:
    """Every distribution installed here as ``name==version``: the image gets the
    framework's dependencies at the versions the local runs and tests use."""
    pins = sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions()
                   if d.metadata["Name"] and d.metadata["Name"] != "rmq-chaos-harness"})
    path.write_text("\n".join(pins) + "\n")


def pinned_requirement(app: str) -> str:
    """``celery==5.7.0``, ``dramatiq[rabbitmq]==2.2.1``: the framework at the version
    installed here (with the extra its RabbitMQ broker needs)."""
    _image, requirement, dist = EXAMPLES[app]
    return f"{requirement}=={_version(dist)}"


def framework_wheels(app: str, console: Console) -> Path:
    """The directory of the framework's wheels with its dependencies, built once per
    framework version (a ``.complete`` marker says the set is whole)."""
    dist = EXAMPLES[app][2]
    version = _version(dist)
    out = cache_dir() / "wheels" / f"{dist}-{version}"
    if (out / ".complete").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pinned = pinned_requirement(app)
    with tempfile.TemporaryDirectory(prefix="rmq-harness-pins-") as tmp:
        pins = Path(tmp) / "constraints.txt"
        _constraints(pins)
        console.print(f"  wheels: pip wheel {pinned} (and its dependencies)")
        pip_run(["wheel", "--wheel-dir", str(out), "--constraint", str(pins), pinned],
                f"building the wheels of {pinned} (needs PyPI or a pip cache)")
    (out / "requirements.txt").write_text(pinned + "\n")
    (out / ".complete").write_text("")
    return out


def example_inputs_hash(app: str, base_id: str, root: Path) -> str:
    _image, _req, dist = EXAMPLES[app]
    files = [root / "examples" / "Dockerfile", *_tree_files(root / "examples"),
             *source_files(root)]
    return _digest({"recipe": RECIPE_VERSION, "image": EXAMPLES[app][0], "app": app,
                    "base_id": base_id, dist: _version(dist)}, root, sorted(set(files)))


def build_example_image(client: Any, app: str, base: str, base_id: str, console: Console,
                        force: bool = False) -> str:
    """Build the example app's image on ``base`` unless one with the same inputs exists."""
    from harness.images import _docker_build

    image = example_image(app)
    root = project_root()
    wanted = example_inputs_hash(app, base_id, root)
    existing = image_or_none(client, image)
    if existing is not None and not force and labels_of(existing).get(INPUTS_LABEL) == wanted:
        console.print(f"{image}: up to date ({existing.short_id})")
        return str(existing.id)
    started = time.monotonic()
    console.print(f"{image}: building on {base}")
    with tempfile.TemporaryDirectory(prefix="rmq-harness-example-ctx-") as tmp:
        ctx = Path(tmp)
        wheels = ctx / "wheels"
        wheels.mkdir()
        shutil.copy2(root / "examples" / "Dockerfile", ctx / "Dockerfile")
        shutil.copytree(root / "examples", ctx / "app",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "Dockerfile"))
        project_wheel(root, wheels, console)
        for wheel in framework_wheels(app, console).iterdir():
            if wheel.name != ".complete":
                shutil.copy2(wheel, wheels / wheel.name)
        image_id = _docker_build(client, ctx, image, {"BASE": base, "APP": app},
                                 {INPUTS_LABEL: wanted, BASE_LABEL: base}, force, console)
    console.print(f"{image}: built {image_id[7:19]} in {time.monotonic() - started:.0f} s")
    remove_if_dangling(client, None if existing is None else str(existing.id), image_id)
    return image_id
