"""The run's notes where an orchestrator changed a fault's meaning: built from the
backend's own records (a ``heal`` with ``via: replaced``), on hand-built histories."""

from __future__ import annotations

from histories import H
from test_resultschema import result

from harness import report, vocab
from harness.replacements import NOTES_MAX, notes
from harness.resultschema import errors


def test_a_pause_ended_by_a_replacement_is_said_to_be_a_crash_not_a_zombie() -> None:
    h = (H().add(vocab.FAULT, "nemesis", ts=1010.0, fault="pause", target="worker-2",
                 phase="invoke", ok=True)
         .add(vocab.FAULT, "cluster", ts=1017.5, fault="pause", target="worker-2",
              phase="heal", ok=True, via="replaced")
         .add(vocab.WORKER_STARTED, "cluster", ts=1018.0, worker="worker-2",
              replaces={"state": "failed", "error": "task: non-zero exit (137): "
                        "dockerexec: unhealthy container"}))
    [line] = notes(h.build())
    assert line.startswith("worker-2: the orchestrator replaced the task during its pause "
                           "7.5 s into it")
    assert "crash" in line and "zombie" in line


def test_faults_that_healed_as_scheduled_make_no_note() -> None:
    h = (H().add(vocab.FAULT, "nemesis", fault="pause", target="worker-1", phase="invoke",
                 ok=True)
         .add(vocab.FAULT, "nemesis", fault="pause", target="worker-1", phase="heal", ok=True)
         .add(vocab.FAULT, "nemesis", fault="kill", target="worker-3", phase="invoke",
              ok=True))
    assert notes(h.build()) == []


def test_a_network_fault_ended_by_a_replacement_and_the_bound() -> None:
    h = H()
    for i in range(NOTES_MAX + 3):
        h.add(vocab.FAULT, "cluster", fault="blackhole", target=f"worker-{i}", phase="heal",
              ok=True, via="replaced")
    out = notes(h.build())
    assert len(out) == NOTES_MAX + 1
    assert "ended as a crash of that task, not as the blackhole's heal" in out[0]
    assert " s into it" not in out[0]  # its invoke is not in the history
    assert out[-1] == "... and 3 more faults ended by a replacement"


def test_the_notes_are_in_result_json_only_when_there_are_some() -> None:
    assert "notes" not in result()
    r = result()
    r["notes"] = ["worker-2: the orchestrator replaced the task during its pause"]
    assert errors("result", r) == []
    r["notes"] = [3]
    assert errors("result", r)
    assert report.RESULT_SCHEMA_VERSION == 1
