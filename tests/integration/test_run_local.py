"""End to end on the local backend: real RabbitMQ node, real worker processes,
real signals. Runs the harness CLI as a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("local-runs")]

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"
RUN_TIMEOUT_S = 240


def harness(*args: str, out: Path, timeout_s: float = RUN_TIMEOUT_S
            ) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "harness", "run", *args, "--backend", "local",
           "--out", str(out), "--no-progress"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                          check=False)


def only_run_dir(out: Path) -> Path:
    dirs = [d for d in out.iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def load_result(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "result.json").read_text())
    return data


def claims(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["claim"]: c for c in result["claims"]}


def history(run_dir: Path) -> list[dict[str, Any]]:
    with open(run_dir / "history.jsonl") as f:
        return [json.loads(line) for line in f]


def leftovers(run_id: str) -> list[str]:
    """Processes of the run still alive: workers carry RMQ_HARNESS_RUN, the
    broker node carries the run id in its command line."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            env = p.environ() if run_id not in cmd else {}
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if run_id in cmd or env.get("RMQ_HARNESS_RUN") == run_id:
            found.append(f"{p.pid}: {cmd[:120]}")
    return found


def assert_no_leftovers(run_dir: Path) -> None:
    run_id = load_result(run_dir)["run_id"]
    deadline = time.monotonic() + 10
    left = leftovers(run_id)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = leftovers(run_id)
    assert not left, left


def test_crash_recovery_redelivers_to_another_worker(tmp_path: Path) -> None:
    proc = harness(str(SCENARIOS / "crash-recovery.yaml"), "--seed", "11", out=tmp_path)
    run_dir = only_run_dir(tmp_path)
    result = load_result(run_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    c = claims(result)
    assert c["no-loss"]["valid"] == "true"
    assert c["no-loss"]["evidence"]["lost"] == 0
    assert c["redelivery-after-crash"]["valid"] == "true"
    events = history(run_dir)
    kills = [e for e in events if e["type"] == "fault" and e.get("fault") == "kill"
             and e.get("ok")]
    assert kills, "the history must hold the kill"
    killed = kills[0]["target"]
    redelivered = {e["id"] for e in events if e["type"] == "received"
                   and e.get("redelivered") and e.get("worker") != killed}
    done_elsewhere = {e["id"] for e in events if e["type"] == "processed"
                      and e.get("worker") != killed}
    assert redelivered & done_elsewhere, "a redelivered task must complete on another worker"
    assert "rerun: harness run" in proc.stdout and "seed=11" in proc.stdout
    assert_no_leftovers(run_dir)


def test_crash_after_process_duplicate_is_explained(tmp_path: Path) -> None:
    proc = harness(str(SCENARIOS / "crash-after-process.yaml"), "--seed", "5", out=tmp_path)
    run_dir = only_run_dir(tmp_path)
    c = claims(load_result(run_dir))
    assert c["no-loss"]["valid"] == "true", c["no-loss"]
    assert c["exactly-once-ack"]["valid"] == "true", c["exactly-once-ack"]
    dup = c["no-duplicate-processing"]
    assert dup["valid"] == "false", dup  # the guide's "No duplicates!" is false as stated
    assert dup["explained"], dup
    assert dup["evidence"]["unexplained"] == 0, dup
    assert dup["invariant"] == "true"
    # The release invariants hold, so the run passes.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_no_leftovers(run_dir)


def test_no_duplicates_and_load_balancing(tmp_path: Path) -> None:
    proc = harness(str(SCENARIOS / "no-duplicates.yaml"), str(SCENARIOS / "load-balancing.yaml"),
                   out=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = sorted(d for d in tmp_path.iterdir() if d.is_dir())
    assert len(runs) == 2
    for run_dir in runs:
        result = load_result(run_dir)
        assert result["verdict"] == "PASS", result
        assert_no_leftovers(run_dir)
    by_name = {load_result(d)["scenario"]: claims(load_result(d)) for d in runs}
    lb = next(v for k, v in by_name.items() if "load" in k)
    assert lb["even-distribution"]["valid"] == "true"


def test_lossy_worker_fails_the_run_and_leaves_nothing(tmp_path: Path) -> None:
    worker = f"{sys.executable} {ROOT / 'tests/integration/workers/lossy_worker.py'}"
    proc = harness(str(SCENARIOS / "no-duplicates.yaml"), "--worker-cmd", worker, out=tmp_path)
    run_dir = only_run_dir(tmp_path)
    c = claims(load_result(run_dir))
    assert c["no-loss"]["valid"] == "false", c["no-loss"]
    assert c["no-loss"]["evidence"]["lost"] >= 10
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_no_leftovers(run_dir)


def test_ctrl_c_mid_run_leaves_nothing(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "harness", "run", str(SCENARIOS / "load-balancing.yaml"),
           "--backend", "local", "--out", str(tmp_path), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        hist: Path | None = None
        while time.monotonic() < deadline:
            dirs = [d for d in tmp_path.iterdir() if d.is_dir()] if tmp_path.exists() else []
            if dirs and (dirs[0] / "history.jsonl").exists():
                hist = dirs[0] / "history.jsonl"
                if '"processed"' in hist.read_text():
                    break
            time.sleep(0.2)
        assert hist is not None, "the run never started processing"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    run_dir = hist.parent
    assert_no_leftovers(run_dir)


def test_unreachable_broker_is_a_clear_error(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = harness(str(SCENARIOS / "no-duplicates.yaml"), "--broker-url",
                   "amqp://guest:guest@127.0.0.1:9/", out=tmp_path, timeout_s=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2
    assert elapsed < 20, elapsed  # 15 s budget for the broker plus interpreter start-up
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text
    assert "127.0.0.1:9" in text


def test_bad_scenario_field_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nclaims: [no-loss]\ncluster:\n  wokers: 3\n")
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(bad), "--backend", "local"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert f"{bad}:4" in lines[0] and "wokers" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_no_leftover_from_killed_worker_env() -> None:
    # Sanity of the leak detector itself: it finds a process carrying the marker.
    env = dict(os.environ, RMQ_HARNESS_RUN="leak-probe-123")
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    try:
        assert leftovers("leak-probe-123")
    finally:
        p.kill()
        p.wait()
    assert not leftovers("leak-probe-123")
