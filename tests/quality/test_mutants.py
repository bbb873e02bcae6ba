"""Quality: every planted bug of the reference worker must be caught by the claim
named for it (``harness.mutants.MUTANTS``). Each test runs the bug's scenario
for real on the local backend (a private RabbitMQ, worker processes with
``WORKER_BUG`` set) through the public ``harness mutants`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.mutants import MUTANTS, Mutant
from worker.bugs import KNOWN_BUGS

pytestmark = [pytest.mark.quality, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 400


def test_every_known_bug_has_a_mutant_with_a_claim() -> None:
    assert sorted(m.bug for m in MUTANTS) == sorted(KNOWN_BUGS)
    for m in MUTANTS:
        assert (ROOT / "scenarios" / m.scenario).is_file(), m


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.bug for m in MUTANTS])
def test_planted_bug_is_caught_by_its_claim(mutant: Mutant, tmp_path: Path) -> None:
    bug, claim = mutant.bug, mutant.claim
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "mutants", "--bugs", bug, "--no-control",
         "--backend", "local", "--out", str(tmp_path), "--no-progress", "--reporting", "full"],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    reports = sorted(tmp_path.glob("mutants-*.json"))
    assert reports, proc.stdout[-3000:] + proc.stderr[-2000:]
    row = json.loads(reports[-1].read_text())["rows"][0]
    assert row["bug"] == bug
    assert claim in row["violated"], (
        f"{bug} not caught by {claim}: violated={row['violated']} unknown={row['unknown']}\n"
        + proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-3000:]
