"""``harness show``: a task's story and a worker's lane, from a hand-built history."""

from __future__ import annotations

from pathlib import Path

from histories import H

from harness.cli import main
from harness.show import lane, task_story

W1, W2 = "worker-1", "worker-2"


def history() -> H:
    h = H().run_started().worker_started(W1, ts=1000.0).worker_started(W2, ts=1000.0)
    h.publish("a", ts=1000.1).publish("b", ts=1000.1)
    h.received("a", W1, ts=1000.2).fault("kill", W1, ts=1000.5)
    h.worker_exited(W1, requested=True, ts=1000.55)
    h.received("a", W2, redelivered=True, ts=1001.0).processed("a", W2, ts=1001.2)
    h.acked("a", W2, ts=1001.3)
    h.received("b", W2, ts=1001.4).processed("b", W2, ts=1001.5).acked("b", W2, ts=1001.6)
    return h.finish()


def test_a_tasks_story_has_its_deliveries_the_fault_on_its_holder_and_nothing_else() -> None:
    story = task_story(history().build(), "a")
    whats = [w for _, _, w, _ in story]
    assert whats == ["publish", "received", "fault kill", "worker exited", "received",
                     "processed", "acked"]
    assert "redelivered=True" in story[4][3]
    assert task_story(history().build(), "nope") == []


def test_a_lane_marks_processing_faults_and_exits() -> None:
    h = history().build()
    l1, l2 = lane(h, W1, 1000.0, 1002.0, width=20), lane(h, W2, 1000.0, 1002.0, width=20)
    assert "#" not in l1 and ("x" in l1 or "|" in l1)
    assert l2.count("#") == 2 and len(l2) == 20


def test_show_command(tmp_path: Path) -> None:
    import json

    run = tmp_path / "run"
    run.mkdir()
    (run / "history.jsonl").write_text(
        "".join(json.dumps(e.to_dict()) + "\n" for e in history().build()))
    assert main(["show", str(run), "--task", "a"]) == 0
    assert main(["show", str(run), "--worker", W2]) == 0
    assert main(["show", str(run)]) == 0
    assert main(["show", str(tmp_path / "missing")]) == 2
