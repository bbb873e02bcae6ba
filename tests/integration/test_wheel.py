"""The built wheel, installed in a fresh virtualenv with no checkout in sight:
``harness audit`` runs a packaged scenario on the local backend, a user's
pytest run collects the packaged suite through the plugin and writes one JUnit
test case per claim with the seed as a property, a planted bug fails the case of
its claim, and the worker image's wheel can be made from the installed package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-runs")]

ROOT = Path(__file__).resolve().parents[2]
PIP_TIMEOUT_S = 600
RUN_TIMEOUT_S = 400


def run(cmd: list[str], cwd: Path, timeout_s: float = RUN_TIMEOUT_S
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("PYTEST_")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    r = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w",
             str(dist)], base, PIP_TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(dist.glob("rmq_chaos_harness-*.whl"))
    env_dir = base / "venv"
    r = run([sys.executable, "-m", "venv", str(env_dir)], base)
    assert r.returncode == 0, r.stderr
    r = run([str(env_dir / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
             str(wheel), "pytest"], base, PIP_TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-2000:]
    return env_dir


def test_the_installed_harness_audits_a_packaged_scenario(venv: Path, tmp_path: Path) -> None:
    # One scenario of the suite: the gate is what it judges (the default gate's
    # other release invariants would be unknown, exit 2, without their scenarios).
    r = run([str(venv / "bin" / "harness"), "audit", "--backend", "local", "--only",
             "no-duplicates", "--gate", "no-loss,exactly-once-ack,no-duplicate-processing",
             "--out", "runs", "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    audit = json.loads(next((tmp_path / "runs").glob("audit-*.json")).read_text())
    assert [run["scenario"] for run in audit["runs"]] == ["no-duplicates"]
    # The scenario came from the package, not from a checkout.
    assert "site-packages/harness/scenarios/no-duplicates.yaml" in audit["runs"][0]["rerun"]
    assert audit["broker"]["rabbitmq_version"]


def test_the_plugin_from_the_wheel_gives_a_case_per_claim(venv: Path, tmp_path: Path) -> None:
    py = str(venv / "bin" / "python")
    common = [py, "-m", "pytest", "-p", "no:cacheprovider", "--harness-backend", "local",
              "--harness-scenarios", "suite", "--harness-out", "runs"]
    r = run([*common, "-k", "no-duplicates", "--junitxml", "ok.xml"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:]
    cases = {c.get("name"): c for c in ET.parse(tmp_path / "ok.xml").getroot().iter("testcase")}
    assert {"no-loss", "exactly-once-ack", "no-duplicate-processing"} <= set(cases)
    props = {p.get("name"): p.get("value") for p in cases["no-loss"].iter("property")}
    assert (props.get("seed") or "").isdigit()

    bug = f"env WORKER_BUG=ack-before-process {venv / 'bin' / 'python'} -m worker"
    r = run([*common, "-k", "crash-recovery", "--junitxml", "bug.xml", "--harness-worker-cmd",
             bug, "--harness-capabilities", "directives,health"], tmp_path)
    assert r.returncode == 1, r.stdout[-3000:]
    cases = {c.get("name"): c for c in ET.parse(tmp_path / "bug.xml").getroot().iter("testcase")}
    assert cases["no-loss"].find("failure") is not None
    assert "no-loss: VIOLATED" in r.stdout


def test_the_worker_images_wheel_comes_from_the_installed_package(venv: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "wheels"
    out.mkdir()
    r = run([str(venv / "bin" / "python"), "-c",
             "import sys; from pathlib import Path; from harness.images import installed_wheel;"
             " print(installed_wheel(Path(sys.argv[1])))", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = Path(r.stdout.strip())
    target = tmp_path / "target"
    r = run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index",
             "--target", str(target), str(wheel)], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (target / "worker" / "__main__.py").is_file()
    assert (target / "worker" / "Dockerfile").is_file()
    assert (target / "harness" / "scenarios" / "crash-recovery.yaml").is_file()
