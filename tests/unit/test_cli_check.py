"""``harness check RUN_DIR``: the recorded history judged again, with the run's own
parameters and problems (the same verdict the run gave); bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from histories import clean

from harness.cli import main


def write_run(tmp_path: Path, problems: list[str] | None = None, lost: bool = False) -> Path:
    h = clean(5)
    if lost:
        h.publish("gone")  # confirmed, never processed, in no queue
    history = h.finish().build()
    with (tmp_path / "history.jsonl").open("w") as f:
        for e in history:
            f.write(json.dumps(e.to_dict()) + "\n")
    (tmp_path / "result.json").write_text(json.dumps({"params": {},
                                                      "problems": problems or []}))
    return tmp_path


def test_a_clean_run_passes(tmp_path: Path) -> None:
    assert main(["check", str(write_run(tmp_path)), "--claims", "no-loss"]) == 0


def test_a_lost_task_fails(tmp_path: Path) -> None:
    assert main(["check", str(write_run(tmp_path, lost=True)), "--claims", "no-loss"]) == 1


def test_the_runs_recorded_problem_keeps_it_undecided(tmp_path: Path) -> None:
    run = write_run(tmp_path, problems=["the drain did not complete"])
    assert main(["check", str(run), "--claims", "no-loss"]) == 2


def test_no_history_is_a_one_line_error(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no history here" in err and "\n" not in err


def test_a_malformed_result_is_a_one_line_error(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path)
    (run / "result.json").write_text('{"params": [1, 2], "problems": null')
    assert main(["check", str(run), "--claims", "no-loss"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a result written by `harness run`" in err and "\n" not in err
