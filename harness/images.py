"""Build the harness's container images: the broker, the reference worker, and,
where no registry can be reached, the Debian base both are built on.

Images (names are fixed; the docker backend uses them):

- ``rmq-harness/base:bookworm``: an offline Debian 12 root filesystem made with
  ``debootstrap --variant=minbase`` and ``docker import`` (Python 3.11, pip,
  Debian's rabbitmq-server, iproute2, iptables, procps, curl). Only built
  offline.
- ``rmq-harness/rabbitmq:latest``: ``harness/build_contexts/rabbitmq/Dockerfile``.
- ``rmq-harness/worker:latest``: ``worker/Dockerfile``, with a build context made
  here: the rmq-chaos-harness wheel built from the source tree and pika's wheel
  (containers cannot reach PyPI).
- ``rmq-harness/netfault:latest``: the network-fault sidecar (iptables, iproute2),
  ``harness/build_contexts/netfault/Dockerfile``.

What is built on what is ``imagekit.build_plan``: every image the suite needs on
both paths. Each Dockerfile takes its base as ``ARG BASE`` with a public default;
the public bases are pinned (``imagekit.PUBLIC_BROKER_BASE``: the RabbitMQ
version the offline base runs, so both paths test the same broker;
``--broker-base`` or ``$HARNESS_BROKER_BASE`` picks another); offline the base
is ``rmq-harness/base:bookworm``.

Offline or not (``offline=None``): the environment variable
``RMQ_HARNESS_OFFLINE`` (1/0) decides if set; otherwise images built before keep
the base they were built on; otherwise the public bases are used when present
locally; otherwise offline if an offline base exists; otherwise the public bases
if they can be pulled within ``PULL_TIMEOUT_S``; otherwise offline.

Cache: every image carries the label ``io.rmq-harness.inputs``, a SHA-256 of its
inputs. An image is rebuilt only when that hash differs from the one computed
now (or with ``force``):

- base: the recipe (suite, variant, package list, recipe version); not the
  mirror, and not the Debian archive's current state, so a base is refreshed
  only with ``force``;
- broker: every file in ``harness/build_contexts/rabbitmq/``, the build arguments, and
  the base image's id;
- worker: ``worker/Dockerfile``, the files the project wheel is built from
  (``pyproject.toml``, ``README.md``, everything under ``harness/`` and
  ``worker/`` except caches), pika's version, and the base image's id. Wheels are
  built only when a rebuild is needed; pika's wheel is kept in the cache
  directory.

A rebuilt base changes its id, so the images on it are rebuilt too. Concurrent
callers (pytest-xdist, several runs) serialise on a lock file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.cluster.base import ClusterError
from harness.imagekit import (
    BASE_CHANGES,
    BASE_LABEL,
    BROKER_BASE_ENV,
    BROKER_CONTEXT,
    BUILD_TIMEOUT_S,
    CONNECT_TIMEOUT_S,
    DEBIAN_SUITE,
    DEBOOTSTRAP_PACKAGES,
    DEBOOTSTRAP_TIMEOUT_S,
    DEBOOTSTRAP_VARIANT,
    IMPORT_TIMEOUT_S,
    PUBLIC_BROKER_BASE,
    PULL_TIMEOUT_S,
    ROOTFS_PRUNE,
    SIDECAR_CONTEXT,
    SIDECAR_IMAGE,
    Console,
    Printer,
    Quiet,
    base_inputs_hash,
    build_lock,
    build_plan,
    cache_dir,
    image_or_none,
    labels_of,
    one_line,
    remove_if_dangling,
    sidecar_inputs_hash,
    source_tree,
    worker_inputs,
)
from harness.imagekit import (
    BASE_IMAGE as BASE_IMAGE,
)
from harness.imagekit import (
    BROKER_IMAGE as BROKER_IMAGE,
)
from harness.imagekit import (
    INPUTS_LABEL as INPUTS_LABEL,
)
from harness.imagekit import (
    WORKER_IMAGE as WORKER_IMAGE,
)
from harness.imagekit import (
    broker_inputs_hash as broker_inputs_hash,
)
from harness.imagekit import (
    docker_client as docker_client,
)
from harness.imagekit import (
    project_root as project_root,
)
from harness.imagekit import (
    worker_inputs_hash as worker_inputs_hash,
)
from harness.imagewheels import installed_wheel as installed_wheel
from harness.imagewheels import pika_wheel, project_wheel

# -- the offline base ----------------------------------------------------------------------


def apt_mirror() -> str:
    """The Debian mirror the host's apt uses (deb822 ``URIs:`` or sources.list)."""
    candidates: list[str] = []
    sources_d = Path("/etc/apt/sources.list.d")
    for path in sorted(sources_d.glob("*.sources")) if sources_d.is_dir() else []:
        for line in path.read_text(errors="replace").splitlines():
            m = re.match(r"\s*URIs:\s*(.+)$", line, re.IGNORECASE)
            if m:
                candidates.extend(m.group(1).split())
    sources_list = Path("/etc/apt/sources.list")
    paths = [sources_list] if sources_list.is_file() else []
    paths += sorted(sources_d.glob("*.list")) if sources_d.is_dir() else []
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", line)
            if m:
                candidates.append(m.group(1))
    for uri in candidates:
        if uri.startswith(("http://", "https://", "file:/")) and "security" not in uri:
            return uri.rstrip("/")
    raise ClusterError(
        "no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list: "
        "configure apt first"
    )


def _unmount_under(path: Path) -> None:
    """Unmount what debootstrap left mounted inside ``path`` (/proc, /sys)."""
    target = str(path.resolve())
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    points = [line.split()[1] for line in mounts if len(line.split()) > 1]
    for point in sorted((p for p in points if p.startswith(target + "/")), reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True, timeout=30)


def build_base_image(client: Any, console: Console, force: bool = False) -> str:
    """Make ``rmq-harness/base:bookworm`` with debootstrap unless it is current."""
    wanted = base_inputs_hash()
    existing = image_or_none(client, BASE_IMAGE)
    if existing is not None and not force and labels_of(existing).get(INPUTS_LABEL) == wanted:
        console.print(f"{BASE_IMAGE}: up to date ({existing.short_id})")
        return str(existing.id)
    if os.geteuid() != 0:
        raise ClusterError("debootstrap needs root: run `harness images build --offline` as root")
    if shutil.which("debootstrap") is None:
        raise ClusterError("debootstrap not found: apt-get install -y debootstrap")
    mirror = apt_mirror()
    debs = cache_dir() / "debootstrap-debs"
    debs.mkdir(parents=True, exist_ok=True)
    log_path = cache_dir() / "debootstrap.log"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rmq-harness-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = [
            "debootstrap",
            f"--variant={DEBOOTSTRAP_VARIANT}",
            "--include=" + ",".join(DEBOOTSTRAP_PACKAGES),
            f"--cache-dir={debs}",
            DEBIAN_SUITE,
            str(rootfs),
            mirror,
        ]
        console.print(f"{BASE_IMAGE}: debootstrap {DEBIAN_SUITE} (about 1-2 min, log {log_path})")
        try:
            with open(log_path, "w") as log:
                proc = subprocess.run(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=DEBOOTSTRAP_TIMEOUT_S,
                    check=False,
                )
            if proc.returncode != 0:
                tail = _last_lines(log_path, 1)
                raise ClusterError(
                    f"debootstrap failed (exit {proc.returncode}): {tail} (full log: {log_path})"
                )
        except subprocess.TimeoutExpired:
            raise ClusterError(
                f"debootstrap took over {DEBOOTSTRAP_TIMEOUT_S} s: check the mirror {mirror} "
                f"(log: {log_path})"
            ) from None
        finally:
            _unmount_under(rootfs)
        for rel in ROOTFS_PRUNE:
            target = rootfs / rel
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    elif child.name != "lock":
                        child.unlink(missing_ok=True)
        boot_s = time.monotonic() - started
        tar_path = Path(tmp) / "rootfs.tar"
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "-f", str(tar_path), "."],
            check=True,
            capture_output=True,
            timeout=IMPORT_TIMEOUT_S,
        )
        changes = [
            *BASE_CHANGES,
            f"LABEL {INPUTS_LABEL}={wanted}",
            f"LABEL {BASE_LABEL}=debootstrap",
        ]
        repository, tag = BASE_IMAGE.rsplit(":", 1)
        try:
            client.api.import_image(
                src=str(tar_path), repository=repository, tag=tag, changes=changes
            )
        except Exception as exc:
            raise ClusterError(
                f"docker import of {BASE_IMAGE} failed: {one_line(str(exc))}"
            ) from exc
    image = image_or_none(client, BASE_IMAGE)
    if image is None:
        raise ClusterError(f"docker import did not produce {BASE_IMAGE}: see `docker images`")
    console.print(
        f"{BASE_IMAGE}: built {image.short_id} in {time.monotonic() - started:.0f} s "
        f"(debootstrap {boot_s:.0f} s), {image.attrs.get('Size', 0) / 1e6:.0f} MB"
    )
    remove_if_dangling(client, None if existing is None else str(existing.id), str(image.id))
    return str(image.id)


def _last_lines(path: Path, count: int) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "?"
    return one_line(" | ".join(lines[-count:]))


# -- public bases -------------------------------------------------------------------------


def _pull(client: Any, ref: str, deadline: float) -> bool:
    repository, _, tag = ref.partition(":")
    try:
        for _chunk in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
            if time.monotonic() > deadline:
                return False
        return image_or_none(client, ref) is not None
    except Exception:
        return False


def public_bases() -> tuple[str, ...]:
    return tuple(step.base for step in build_plan(offline=False))


def public_bases_available(client: Any, pull: bool = True) -> bool:
    """The public bases are here, or (``pull``) could be pulled within PULL_TIMEOUT_S."""
    missing = [ref for ref in public_bases() if image_or_none(client, ref) is None]
    if not missing:
        return True
    if not pull:
        return False
    deadline = time.monotonic() + PULL_TIMEOUT_S
    return all(_pull(client, ref, deadline) for ref in missing)


def resolve_offline(client: Any, offline: bool | None, console: Console) -> bool:
    """Decide whether to build on the debootstrap base (see the module docstring)."""
    if offline is not None:
        return offline
    env = os.environ.get("RMQ_HARNESS_OFFLINE", "").strip().lower()
    if env in {"1", "true", "yes"}:
        return True
    if env in {"0", "false", "no"}:
        return False
    for name in (BROKER_IMAGE, WORKER_IMAGE):
        image = image_or_none(client, name)
        if image is not None:
            base = labels_of(image).get(BASE_LABEL)
            if base == BASE_IMAGE:
                return True
            if base in public_bases() and public_bases_available(
                client, pull=False
            ):
                return False
    if public_bases_available(client, pull=False):
        return False
    if image_or_none(client, BASE_IMAGE) is not None:
        return True  # an offline base was made here before: no pull attempt
    if public_bases_available(client, pull=True):
        return False
    console.print("public base images unavailable (no registry): building the offline base")
    return True


# -- builds -------------------------------------------------------------------------------------


def _docker_build(
    client: Any,
    context: Path,
    tag: str,
    buildargs: Mapping[str, str],
    labels: Mapping[str, str],
    nocache: bool,
    console: Console,
) -> str:
    """Legacy-builder build with no pull; ClusterError (one line) on failure."""
    last: list[str] = []
    try:
        stream = client.api.build(
            path=str(context),
            tag=tag,
            buildargs=dict(buildargs),
            labels=dict(labels),
            rm=True,
            forcerm=True,
            pull=False,
            nocache=nocache,
            decode=True,
            timeout=BUILD_TIMEOUT_S,
        )
        for chunk in stream:
            if "error" in chunk:
                detail = " | ".join(last[-3:])
                raise ClusterError(
                    f"building {tag} failed: {one_line(str(chunk['error']))}"
                    + (f" (after: {one_line(detail, 200)})" if detail else "")
                )
            text = str(chunk.get("stream", "")).strip()
            if text:
                last.append(text)
                del last[:-10]
                if text.startswith("Step "):
                    console.print(f"  {tag}: {text}")
    except ClusterError:
        raise
    except Exception as exc:
        raise ClusterError(f"building {tag} failed: {one_line(str(exc))}") from exc
    image = image_or_none(client, tag)
    if image is None:
        raise ClusterError(f"building {tag} produced no image: see `docker images`")
    return str(image.id)


def _build_context_image(client: Any, image: str, context: Path, wanted: str, base: str,
                         console: Console, force: bool) -> str:
    """Build ``image`` from a build context of the package on ``base``, unless an
    image with the same inputs hash (``wanted``) exists."""
    existing = image_or_none(client, image)
    if existing is not None and not force and labels_of(existing).get(INPUTS_LABEL) == wanted:
        console.print(f"{image}: up to date ({existing.short_id})")
        return str(existing.id)
    started = time.monotonic()
    console.print(f"{image}: building on {base}")
    image_id = _docker_build(client, context, image, {"BASE": base},
                             {INPUTS_LABEL: wanted, BASE_LABEL: base}, force, console)
    console.print(f"{image}: built {image_id[7:19]} in {time.monotonic() - started:.0f} s")
    remove_if_dangling(client, None if existing is None else str(existing.id), image_id)
    return image_id


def build_broker_image(
    client: Any, base: str, base_id: str, console: Console, force: bool = False
) -> str:
    return _build_context_image(client, BROKER_IMAGE, BROKER_CONTEXT,
                                broker_inputs_hash(base_id), base, console, force)


def build_sidecar_image(
    client: Any, base: str, base_id: str, console: Console, force: bool = False
) -> str:
    """The network-fault sidecar (iptables, iproute2) on ``base``."""
    return _build_context_image(client, SIDECAR_IMAGE, SIDECAR_CONTEXT,
                                sidecar_inputs_hash(base_id), base, console, force)


def build_worker_image(
    client: Any, base: str, base_id: str, console: Console, force: bool = False
) -> str:
    root, files = worker_inputs()
    wanted = worker_inputs_hash(base_id, root, files)
    existing = image_or_none(client, WORKER_IMAGE)
    if existing is not None and not force and labels_of(existing).get(INPUTS_LABEL) == wanted:
        console.print(f"{WORKER_IMAGE}: up to date ({existing.short_id})")
        return str(existing.id)
    started = time.monotonic()
    console.print(f"{WORKER_IMAGE}: building on {base}")
    with tempfile.TemporaryDirectory(prefix="rmq-harness-worker-ctx-") as tmp:
        ctx = Path(tmp)
        wheels = ctx / "wheels"
        wheels.mkdir()
        shutil.copy2(root / "worker" / "Dockerfile", ctx / "Dockerfile")
        if source_tree() is not None:
            project_wheel(root, wheels, console)
        else:
            console.print("  wheels: rmq-chaos-harness (repacked from the installed package)")
            installed_wheel(wheels)
        shutil.copy2(pika_wheel(console), wheels)
        image_id = _docker_build(
            client,
            ctx,
            WORKER_IMAGE,
            {"BASE": base},
            {INPUTS_LABEL: wanted, BASE_LABEL: base},
            force,
            console,
        )
    console.print(f"{WORKER_IMAGE}: built {image_id[7:19]} in {time.monotonic() - started:.0f} s")
    remove_if_dangling(client, None if existing is None else str(existing.id), image_id)
    return image_id


def build_images(
    offline: bool | None, force: bool = False, console: Console | None = None,
    examples: bool = False,
) -> dict[str, str]:
    """Build (or keep, when their inputs are unchanged) the harness images, and with
    ``examples`` the example framework apps' (``harness.exampleimages``) on the
    worker's base.

    Returns image name -> image id (with the base when offline). Raises
    ClusterError with one line on any failure.
    """
    out: Console = console if console is not None else Quiet()
    client = docker_client()
    try:
        with build_lock():
            use_offline = resolve_offline(client, offline, out)
            result: dict[str, str] = {}
            builders = {"broker": build_broker_image, "worker": build_worker_image,
                        "sidecar": build_sidecar_image}
            if not use_offline and not public_bases_available(client, pull=True):
                raise ClusterError(
                    f"public bases {', '.join(public_bases())} cannot be pulled: build "
                    "offline with `harness images build --offline`"
                )
            for step in build_plan(use_offline):
                if step.context == "debootstrap":
                    result[step.image] = build_base_image(client, out, force=force)
                    continue
                base_id = result.get(step.base) or str(client.images.get(step.base).id)
                result[step.image] = builders[step.context](
                    client, step.base, base_id, out, force=force)
            if examples:
                from harness.exampleimages import EXAMPLES, build_example_image

                base = next(s.base for s in build_plan(use_offline) if s.context == "worker")
                base_id = result.get(base) or str(client.images.get(base).id)
                for app in EXAMPLES:
                    result[EXAMPLES[app][0]] = build_example_image(client, app, base, base_id,
                                                                   out, force=force)
            return result
    finally:
        with contextlib.suppress(Exception):
            client.close()


def ensure_images(
    offline: bool | None = None, force: bool = False, console: Console | None = None
) -> dict[str, str]:
    """What the docker backend calls before a run: images present and current.

    A no-op (about a second: hashing and two inspects) when nothing changed.
    """
    return build_images(offline=offline, force=force, console=console)


def image_status() -> list[dict[str, Any]]:
    """Name, id, size and base of each harness image that exists."""
    client = docker_client(timeout_s=CONNECT_TIMEOUT_S * 3)
    rows: list[dict[str, Any]] = []
    try:
        from harness.exampleimages import EXAMPLES

        examples = tuple(image for image, _req, _dist in EXAMPLES.values())
        for name in (BASE_IMAGE, BROKER_IMAGE, WORKER_IMAGE, SIDECAR_IMAGE, *examples):
            image = image_or_none(client, name)
            rows.append(
                {
                    "name": name,
                    "id": None if image is None else image.short_id,
                    "size_mb": None if image is None else round(image.attrs.get("Size", 0) / 1e6),
                    "base": None if image is None else labels_of(image).get(BASE_LABEL),
                }
            )
    finally:
        with contextlib.suppress(Exception):
            client.close()
    return rows


# -- command line ---------------------------------------------------------------------------------


def images_main(argv: Sequence[str] | None = None) -> int:
    """``harness images build [--offline | --online] [--force]`` and ``harness images status``.

    ``argv`` starts with the subcommand (``["build", "--offline"]``). Exit 0 on
    success, 2 when the infrastructure failed (one line on stderr).
    """
    parser = argparse.ArgumentParser(prog="harness images", description="Build the harness images.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the base, broker and worker images if changed")
    mode = build.add_mutually_exclusive_group()
    mode.add_argument(
        "--offline", action="store_true", help="build on a debootstrap base (no registry)"
    )
    mode.add_argument(
        "--online", action="store_true", help="build on the public bases (pulls them)"
    )
    build.add_argument("--force", action="store_true", help="rebuild even if inputs are unchanged")
    build.add_argument("--examples", action="store_true",
                       help="also the example Celery and Dramatiq apps' images (from a checkout)")
    build.add_argument("--broker-base", metavar="IMAGE",
                       help=f"the public RabbitMQ base (default {PUBLIC_BROKER_BASE}, or "
                            f"${BROKER_BASE_ENV})")
    sub.add_parser("status", help="show the harness images")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.command == "build" and args.broker_base:
        if args.offline:
            print("harness images: --broker-base picks a public base; the offline base runs "
                  "Debian's RabbitMQ (drop --offline, or --broker-base)", file=sys.stderr)
            return 2
        os.environ[BROKER_BASE_ENV] = args.broker_base
    try:
        if args.command == "status":
            for row in image_status():
                shown = "missing" if row["id"] is None else f"{row['id']} {row['size_mb']} MB"
                print(f"{row['name']:32} {shown}  base={row['base']}")
            return 0
        offline = True if args.offline else False if args.online else None
        started = time.monotonic()
        result = build_images(offline=offline, force=args.force, console=Printer(),
                              examples=args.command == "build" and args.examples)
        for name, image_id in result.items():
            print(f"{name} {image_id}")
        print(f"images ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
        return 0
    except ClusterError as exc:
        print(f"harness images: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(images_main())
