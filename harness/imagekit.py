"""The parts of building the harness's images that every recipe shares: image
names and labels, the Docker client, hashing a build's inputs, the cache
directory and the build lock. The recipes are in ``harness.images``."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from harness.cluster.base import ClusterError

BASE_IMAGE = "rmq-harness/base:bookworm"
BROKER_IMAGE = "rmq-harness/rabbitmq:latest"
WORKER_IMAGE = "rmq-harness/worker:latest"
SIDECAR_IMAGE = "rmq-harness/netfault:latest"
# The public bases, pinned on purpose: the broker to the RabbitMQ the offline base
# runs (Debian 12's 3.10.8), so that a build with a registry tests the same broker
# as one without; a floating tag (rabbitmq:3-management) would test whatever 3.x is
# newest that day. Choose another with HARNESS_BROKER_BASE (e.g.
# rabbitmq:3.13-management) or `harness images build --broker-base IMAGE`; the
# version a run ran on is in its result.json ("broker").
PUBLIC_BROKER_BASE = "rabbitmq:3.10.8-management"
PUBLIC_WORKER_BASE = "python:3.11-slim-bookworm"
PUBLIC_SIDECAR_BASE = "debian:bookworm-slim"
BROKER_BASE_ENV = "HARNESS_BROKER_BASE"

INPUTS_LABEL = "io.rmq-harness.inputs"
BASE_LABEL = "io.rmq-harness.base"
RECIPE_VERSION = "1"

DEBIAN_SUITE = "bookworm"
DEBOOTSTRAP_VARIANT = "minbase"
DEBOOTSTRAP_PACKAGES = (
    "python3",
    "python3-pip",
    "python3-venv",
    "rabbitmq-server",
    "iproute2",
    "iptables",
    "procps",
    "curl",
)
# Dropped from the root filesystem before import: apt's downloads and lists, docs.
ROOTFS_PRUNE = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["/bin/bash"]',
)

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
CONNECT_TIMEOUT_S = 10
BUILD_TIMEOUT_S = 900
DEBOOTSTRAP_TIMEOUT_S = 1200
IMPORT_TIMEOUT_S = 600
PIP_TIMEOUT_S = 300
PULL_TIMEOUT_S = 120
LOCK_TIMEOUT_S = 1800

_SKIP_DIRS = frozenset(
    {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "build", "dist"}
)
_SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info")

PACKAGE_DIR = Path(__file__).resolve().parent
BROKER_CONTEXT = PACKAGE_DIR / "build_contexts" / "rabbitmq"
SIDECAR_CONTEXT = PACKAGE_DIR / "build_contexts" / "netfault"


@dataclass(frozen=True)
class ImageStep:
    """One image of a build plan: what it is built from (a context) and on what."""

    image: str
    context: str  # "debootstrap", "broker", "worker" or "sidecar"
    base: str


def public_broker_base() -> str:
    return os.environ.get(BROKER_BASE_ENV, "").strip() or PUBLIC_BROKER_BASE


def build_plan(offline: bool, broker_base: str | None = None) -> tuple[ImageStep, ...]:
    """Every image the suite needs, in build order, on the offline base or on the
    public ones. The network-fault sidecar is in both: without it, a blackhole or
    reset scenario cannot take effect and a correct worker's audit is undecided."""
    if offline:
        return (ImageStep(BASE_IMAGE, "debootstrap", f"debian:{DEBIAN_SUITE}"),
                ImageStep(BROKER_IMAGE, "broker", BASE_IMAGE),
                ImageStep(WORKER_IMAGE, "worker", BASE_IMAGE),
                ImageStep(SIDECAR_IMAGE, "sidecar", BASE_IMAGE))
    return (ImageStep(BROKER_IMAGE, "broker", broker_base or public_broker_base()),
            ImageStep(WORKER_IMAGE, "worker", PUBLIC_WORKER_BASE),
            ImageStep(SIDECAR_IMAGE, "sidecar", PUBLIC_SIDECAR_BASE))


class Console(Protocol):
    """What progress goes to: ``rich.console.Console`` fits, and so does ``Printer``."""

    def print(self, *objects: Any) -> None: ...


class Printer:
    def print(self, *objects: Any) -> None:
        print(*objects, file=sys.stderr, flush=True)


class Quiet:
    def print(self, *objects: Any) -> None:
        return None


# -- paths -----------------------------------------------------------------------


def project_root() -> Path:
    """The source tree (where pyproject.toml is); the worker image is built from it."""
    root = source_tree()
    if root is None:
        raise ClusterError(
            f"no source tree beside {PACKAGE_DIR} (pyproject.toml, worker/Dockerfile): "
            "build the images from a checkout of the project"
        )
    return root


def source_tree() -> Path | None:
    """The checkout the package runs from, or None for an installed package."""
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / "worker" / "Dockerfile").is_file():
        return root
    return None


def worker_inputs() -> tuple[Path, list[Path]]:
    """What the worker image is made of: the source tree's files, or, for an
    installed package, the installed ``harness`` and ``worker`` packages (their
    ``worker/Dockerfile`` is package data)."""
    root = source_tree()
    if root is not None:
        return root, source_files(root)
    site = PACKAGE_DIR.parent
    if not (site / "worker" / "Dockerfile").is_file():
        raise ClusterError(f"no worker/Dockerfile beside {PACKAGE_DIR}: reinstall the package "
                           "(its wheel ships it) or build from a checkout")
    return site, [f for p in ("harness", "harness_events", "worker")
                  for f in _tree_files(site / p)]


def cache_dir() -> Path:
    """Where wheels, debootstrap's packages and the build lock live."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "rmq-chaos-harness"
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- docker ------------------------------------------------------------------------


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def engine_unreachable_message() -> str:
    return (
        f"Docker engine not reachable at {docker_host()}: "
        "start it with `.ci/docker-setup.sh` or `dockerd &`"
    )


def docker_client(timeout_s: int = BUILD_TIMEOUT_S) -> Any:
    """A docker SDK client that has answered a ping, or ClusterError (one line)."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise ClusterError("the Python package `docker` is missing: pip install docker") from exc
    try:
        client = docker.from_env(timeout=timeout_s)
        client.ping()
    except Exception as exc:
        raise ClusterError(engine_unreachable_message()) from exc
    return client


def image_or_none(client: Any, name: str) -> Any | None:
    import docker.errors

    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        raise ClusterError(f"Docker could not inspect {name}: {one_line(str(exc))}") from exc


def labels_of(image: Any) -> Mapping[str, str]:
    labels = image.attrs.get("Config", {}).get("Labels") or {}
    return labels if isinstance(labels, dict) else {}


def remove_if_dangling(client: Any, old_id: str | None, new_id: str) -> None:
    """Drop the image a rebuild replaced, if nothing else uses or names it."""
    if old_id is None or old_id == new_id:
        return
    with contextlib.suppress(Exception):
        client.images.remove(old_id, noprune=False)


def one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# -- hashing ----------------------------------------------------------------------------


def _hash_files(h: Any, root: Path, files: Sequence[Path]) -> None:
    for path in sorted(files):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())


def _tree_files(top: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(_SKIP_SUFFIXES)
        )
        for name in filenames:
            if not name.endswith(_SKIP_SUFFIXES):
                found.append(Path(dirpath) / name)
    return found


def source_files(root: Path) -> list[Path]:
    files = [root / "pyproject.toml"]
    for extra in ("README.md", "LICENSE"):
        if (root / extra).is_file():
            files.append(root / extra)
    for package in ("harness", "harness_events", "worker"):
        files.extend(_tree_files(root / package))
    return files


def _digest(parts: Mapping[str, str], files_root: Path | None, files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(dict(parts), sort_keys=True).encode())
    if files_root is not None:
        _hash_files(h, files_root, files)
    return h.hexdigest()


def base_inputs_hash() -> str:
    return _digest(
        {
            "recipe": RECIPE_VERSION,
            "suite": DEBIAN_SUITE,
            "variant": DEBOOTSTRAP_VARIANT,
            "packages": ",".join(DEBOOTSTRAP_PACKAGES),
            "prune": ",".join(ROOTFS_PRUNE),
            "changes": "\n".join(BASE_CHANGES),
        },
        None,
        [],
    )


def sidecar_inputs_hash(base_id: str) -> str:
    return _digest(
        {"recipe": RECIPE_VERSION, "image": SIDECAR_IMAGE, "base_id": base_id},
        SIDECAR_CONTEXT,
        _tree_files(SIDECAR_CONTEXT),
    )


def broker_inputs_hash(base_id: str) -> str:
    return _digest(
        {"recipe": RECIPE_VERSION, "image": BROKER_IMAGE, "base_id": base_id},
        BROKER_CONTEXT,
        _tree_files(BROKER_CONTEXT),
    )


def pika_version() -> str | None:
    try:
        return metadata.version("pika")
    except metadata.PackageNotFoundError:
        return None


def worker_inputs_hash(base_id: str, root: Path, files: Sequence[Path] | None = None) -> str:
    return _digest(
        {
            "recipe": RECIPE_VERSION,
            "image": WORKER_IMAGE,
            "base_id": base_id,
            "pika": pika_version() or "any",
        },
        root,
        source_files(root) if files is None else files,
    )


# -- locking ------------------------------------------------------------------------------


@contextlib.contextmanager
def build_lock(timeout_s: int = LOCK_TIMEOUT_S) -> Iterator[None]:
    path = cache_dir() / "images.lock"
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"another image build held {path} for over {timeout_s} s: "
                        "wait for it or remove the lock file if no build runs"
                    ) from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
