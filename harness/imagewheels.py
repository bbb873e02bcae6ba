"""The wheels the worker image is built from: the project's (from the source
tree, or repacked from the installed package) and pika's (kept in the cache
directory). Containers cannot reach PyPI, so the build context carries them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from harness.cluster.base import ClusterError
from harness.imagekit import (
    PIP_TIMEOUT_S,
    Console,
    cache_dir,
    one_line,
    pika_version,
    source_files,
)


def pip_run(args: Sequence[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{what}: pip took over {PIP_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise ClusterError(f"{what} failed: {one_line(lines[-1] if lines else '?')}")


def pika_wheel(console: Console) -> Path:
    """pika's wheel for the version installed here, kept in the cache directory."""
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    version = pika_version()
    pattern = f"pika-{version}-*.whl" if version else "pika-*.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[-1]
    requirement = f"pika=={version}" if version else "pika>=1.3,<2"
    console.print(f"  wheels: pip wheel {requirement}")
    pip_run(
        ["wheel", "--no-deps", "--wheel-dir", str(wheels), requirement],
        f"building the wheel of {requirement} (needs PyPI or a pip cache)",
    )
    found = sorted(wheels.glob(pattern))
    if not found:
        raise ClusterError(f"pip wheel {requirement} left no wheel in {wheels}")
    return found[-1]


def project_wheel(root: Path, out: Path, console: Console) -> None:
    """Build the project's wheel from a copy of its sources (keeps the tree clean)."""
    with tempfile.TemporaryDirectory(prefix="rmq-harness-src-") as tmp:
        src = Path(tmp) / "src"
        for path in source_files(root):
            dest = src / path.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        console.print("  wheels: pip wheel rmq-chaos-harness (from the source tree)")
        pip_run(
            ["wheel", "--no-deps", "--wheel-dir", str(out), str(src)],
            "building the rmq-chaos-harness wheel",
        )


def installed_wheel(out: Path) -> Path:
    """A wheel of the installed rmq-chaos-harness (no checkout to build one from):
    its installed files, as its RECORD lists them, zipped again with a fresh
    RECORD. Written by hand: pip and build make wheels from sources only, and the
    worker image needs the very package that runs here."""
    import base64
    import hashlib
    import zipfile
    from importlib import metadata

    dist = metadata.distribution("rmq-chaos-harness")
    files = [f for f in (dist.files or []) if f.parts and not f.parts[0].startswith("..")
             and "__pycache__" not in f.parts and f.suffix != ".pyc"]
    info = next((f.parts[0] for f in files if f.parts[0].endswith(".dist-info")), None)
    if info is None or not any(f.parts[0] == "worker" for f in files):
        raise ClusterError("the installed rmq-chaos-harness lists no files of its own (an "
                           "editable install?): build the images from its checkout")
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    path = out / f"rmq_chaos_harness-{dist.version}-py3-none-any.whl"
    rows: list[str] = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            if f.parts[0] == info and f.name in skip:
                continue
            data = Path(str(f.locate())).read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            zf.writestr(f.as_posix(), data)
            rows.append(f"{f.as_posix()},sha256={digest.decode()},{len(data)}")
        rows.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(rows) + "\n")
    return path
