"""The pytest plugin for real: a user's project whose tests run scenarios through
the plugin on the local backend (a real RabbitMQ node and real worker
processes), as a user's CI would run pytest. A correct worker passes every
claim item; a planted bug (the reference worker with ``WORKER_BUG``, brought as
the user's own ``--harness-worker-cmd``) fails the item of the claim it breaks;
``harness_run`` returns the verdicts and records the seed for JUnit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-runs")]

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 300

# crash-recovery, smaller: 2 workers, 20 tasks, a kill of the busiest after 5.
SCENARIO = """\
name: plugin-crash
claims: [no-loss, redelivery-after-crash]
cluster: {workers: 2, concurrency: 5, queue: plugin.q, restart_policy: never}
workload:
  tasks: 20
  drain_timeout_s: 60
  directives: {sleep_ms: {uniform: [100, 300]}}
schedule:
  - when: {processed: 5, timeout_s: 60}
    fault: kill
    target: busiest
"""

USER_TEST = '''
from pathlib import Path


def test_my_worker_survives_a_kill(harness_run):
    result = harness_run(Path(__file__).parent / "scenarios" / "crash.yaml")
    assert result.invariant("no-loss") == "true", result.claims["no-loss"].summary
    assert result.history_path.is_file()
    assert result.seed >= 0 and "harness run" in result.rerun


def test_a_mapping_scenario(harness_run):
    result = harness_run({"name": "tiny", "claims": ["no-loss"],
                          "cluster": {"workers": 1, "queue": "plugin.tiny"},
                          "workload": {"tasks": 5}}, seed=7)
    assert result.passed, result.problems
    assert result.seed == 7
'''


def user_project(tmp_path: Path) -> Path:
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "crash.yaml").write_text(SCENARIO)
    (tmp_path / "test_worker.py").write_text(textwrap.dedent(USER_TEST))
    return tmp_path


def pytest_in(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:locust",
         "-o", "addopts=", "--harness-backend", "local", "--harness-out", str(path / "runs"),
         *args],
        cwd=path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        check=False)


def cases(path: Path) -> dict[str, ET.Element]:
    return {c.get("name", ""): c for c in ET.parse(path).getroot().iter("testcase")}


def test_scenario_items_pass_for_a_correct_worker_and_fixtures_work(tmp_path: Path) -> None:
    p = user_project(tmp_path)
    r = pytest_in(p, "--harness-scenarios", "scenarios", "--junitxml", "j.xml", "-q")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    got = cases(p / "j.xml")
    assert {"no-loss", "redelivery-after-crash", "exactly-once-ack",
            "no-duplicate-processing", "test_my_worker_survives_a_kill",
            "test_a_mapping_scenario"} <= set(got)
    for name, case in got.items():
        assert case.find("failure") is None and case.find("error") is None, name
    props = {e.get("name"): e.get("value") or "" for e in got["no-loss"].iter("property")}
    assert props["seed"].isdigit() and props["rerun"].startswith("harness run ")
    assert Path(props["run_dir"], "history.jsonl").is_file()
    fixture_props = {e.get("name") for e in got["test_a_mapping_scenario"].iter("property")}
    assert {"seed", "rerun", "run_dir"} <= fixture_props


def test_a_planted_bug_fails_the_item_of_its_claim(tmp_path: Path) -> None:
    p = user_project(tmp_path)
    r = pytest_in(p, "--harness-scenarios", "scenarios/crash.yaml", "--junitxml", "j.xml",
                  "--harness-worker-cmd", f"env WORKER_BUG=ack-before-process {sys.executable} "
                  "-m worker", "--harness-capabilities", "directives,health",
                  "scenarios/crash.yaml")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    got = cases(p / "j.xml")
    failure = got["no-loss"].find("failure")
    assert failure is not None, out
    assert "no-loss: VIOLATED" in out and "rerun: harness run" in out
    assert "Traceback" not in out


BROKER_TEST = '''
def test_runs_on_the_session_broker(harness_broker, harness_run):
    assert harness_broker.url.startswith("amqp://guest:guest@")
    result = harness_run({"name": "on-broker", "claims": ["no-loss"],
                          "cluster": {"workers": 1, "queue": "plugin.broker"},
                          "workload": {"tasks": 5}}, broker_url=harness_broker.url)
    assert result.passed, result.problems
'''


@pytest.mark.docker
def test_the_broker_fixture_is_a_container_of_the_harness_image(tmp_path: Path) -> None:
    import docker

    def fixture_brokers() -> set[str]:
        # HarnessBroker's containers: the harness's labels, role broker, no run id.
        found = client.containers.list(all=True, filters={"label": ["rmq-harness=1",
                                                                     "rmq-harness.role=broker"]})
        return {c.id for c in found if "rmq-harness.run" not in (c.labels or {})}

    client = docker.from_env(timeout=10)
    try:
        before = fixture_brokers()
        (tmp_path / "test_broker.py").write_text(BROKER_TEST)
        r = pytest_in(tmp_path, "-q", "test_broker.py")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        # Removed at the end of the session (testcontainers' reaper is off; the
        # harness's labels let its sweep find one a killed session left).
        assert fixture_brokers() <= before
    finally:
        client.close()
    assert (tmp_path / "runs" / "harness-broker.log").is_file()
