"""One vocabulary: every table that names claims, faults or event types agrees
with ``harness.vocab``, and a scenario's faults decide its backends early."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import vocab
from harness.audit import SUITE
from harness.checkers import CHECKERS
from harness.nemesis import make_fault
from harness.netfault import NET_FAULTS
from harness.scenario import ScenarioError, backends_for, check_backend, load_scenario
from harness.verdicts import CLAIMS
from worker.bugs import BUG_CLAIMS

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def test_claim_tables_agree() -> None:
    assert tuple(CLAIMS) == vocab.CLAIMS
    assert set(CHECKERS) == set(vocab.CLAIMS)
    for bug, claims in BUG_CLAIMS.items():
        assert set(claims) <= set(vocab.CLAIMS), bug


def test_fault_tables_agree() -> None:
    assert set(NET_FAULTS) == vocab.NET_FAULT_NAMES
    for name in vocab.FAULTS:
        if name not in ("heal", "scale"):  # the schedule's own steps, not nemesis faults
            make_fault(name, 1.0)
    assert vocab.NET_FAULT_NAMES <= vocab.CONNECTION_FAULTS
    assert "broker-restart" in vocab.BROKER_FAULTS


def test_suite_backends_come_from_the_faults() -> None:
    by_file = {f: backends_for(load_scenario(SCENARIOS / f)) for f in SUITE}
    assert by_file["zombie-blackhole.yaml"] == ("docker", "swarm")
    assert by_file["partition-recovery.yaml"] == ("docker",)  # swarm owns its attachments
    assert by_file["crash-recovery.yaml"] == ("local", "docker", "swarm")


def test_an_unsupported_fault_is_refused_with_file_line_and_field() -> None:
    sc = load_scenario(SCENARIOS / "partition-recovery.yaml")
    check_backend(sc, "docker")
    with pytest.raises(ScenarioError) as exc:
        check_backend(sc, "local")
    msg = str(exc.value)
    assert msg.startswith(f"{sc.path}:") and ".fault: partition needs --backend docker" in msg


def test_verdict_words() -> None:
    assert [vocab.word(v) for v in (True, False, None)] == ["true", "false", "unknown"]


def test_the_claims_doc_is_generated_from_the_code() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "scripts/claims_doc.py", "--check"], cwd=root,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
