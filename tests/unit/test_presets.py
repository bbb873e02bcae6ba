"""Event presets (harness.presets): Celery's own log formats read as contract events,
and a claim the lines distort is unknown and not observable, never a verdict."""

from __future__ import annotations

from celery.app import trace
from histories import W1, H, start

from harness import vocab
from harness.checkers import check_all
from harness.checkers.base import observable
from harness.cluster.base import WorkerSpec
from harness.cluster.lines import LineReader
from harness.history import Recorder
from harness.options import events_kind


def celery_line(fmt: str, level: str = "INFO", **fields: object) -> str:
    """A line as ``celery worker -l info`` writes it, from Celery's own format."""
    return f"[2026-12-02 17:40:00,123: {level}/MainProcess] " + fmt % {
        "name": "harness.task", **fields}


def test_celery_log_lines_become_contract_events() -> None:
    spec = WorkerSpec(events="celery")
    rec = Recorder(None)
    reader = LineReader(rec, "worker-1", spec.events_pattern(), words=spec.event_words())
    tid = "c0ffee-000001"
    for line in (celery_line(trace.LOG_RECEIVED, id=tid),
                 celery_line(trace.LOG_RETRY, id=tid, exc="Retry in 1s"),
                 celery_line(trace.LOG_SUCCESS, id=tid, runtime=0.05, return_value="'x'"),
                 celery_line(trace.LOG_FAILURE, level="ERROR", id="other", exc="ValueError()",
                             description="raised unexpected"),
                 "[2026-12-02 17:40:00,123: WARNING/MainProcess] celery@vm ready.",
                 "Task harness.task[] received"):  # no id: not an event
        reader.feed(line)
    got = [(e.type, e.id) for e in rec.snapshot() if e.source == "worker-1"]
    assert got == [(vocab.RECEIVED, tid), (vocab.RETRY_SCHEDULED, tid),
                   (vocab.PROCESSED, tid), (vocab.FAILED, "other")]
    assert reader.foreign == 0
    assert events_kind("celery") == "preset:celery" and events_kind("regex:x") == "regex"


def test_a_claim_the_preset_distorts_is_unknown_whatever_the_lines_say() -> None:
    """A Celery countdown retry logged as received at once reads as no backoff: with the
    preset, retry-backoff is not observable (out of a default gate), never false."""
    def run(unobservable: dict[str, str] | None) -> H:
        caps = {"directives": True, "health": False, "events": "preset:celery"}
        if unobservable is not None:
            caps["unobservable"] = unobservable
        h = start(caps).publish("r", directives={"fail_times": 1})
        h.received("r", W1, ts=1001.0).retry_scheduled("r", W1, attempt=2, ts=1001.1)
        h.received("r", W1, attempt=2, ts=1001.101).processed("r", W1, attempt=2, ts=1001.2)
        return h.finish()

    [bare] = check_all(run(None).build(), ["retry-backoff"])
    assert bare.valid is False  # what the lines alone would say: no backoff
    [r] = check_all(run({"retry-backoff": "Celery logs a countdown retry early"}).build(),
                    ["retry-backoff", "no-loss"])[:1]
    assert r.valid is None and not observable(r) and "--events celery" in r.summary
    [loss] = check_all(run({"retry-backoff": "x"}).build(), ["no-loss"])
    assert loss.valid is True  # the other claims are judged as usual


def test_an_unknown_preset_name_is_a_one_line_error() -> None:
    import pytest

    with pytest.raises(ValueError, match="preset \\(celery\\)"):
        WorkerSpec(events="dramatiq").events_pattern()


def preset_run(lines: bool = True, attempts: int = 2) -> H:
    caps = {"directives": True, "health": False, "events": "preset:celery",
            "unobservable": {"retry-backoff": "the log cannot time a backoff"}}
    h = start(caps).publish("r", directives={"fail_times": 1})
    if lines:
        for a in range(1, attempts + 1):
            h.received("r", W1, attempt=a, ts=1000.0 + a)
        h.processed("r", W1, attempt=attempts, ts=1000.0 + attempts + 0.1)
    return h.finish()


def test_the_attempt_counts_still_judge_retry_backoff_under_a_preset() -> None:
    [ok] = check_all(preset_run().build(), ["retry-backoff"])
    assert ok.valid is None and not observable(ok)
    # Four attempts for a task asked to fail once: retries past the limit, seen in the
    # receipts, which the log shows truly.
    [bad] = check_all(preset_run(attempts=4).build(), ["retry-backoff"])
    assert bad.valid is False and bad.evidence["wrong_attempt_count"] == 1


def test_a_preset_run_in_which_no_line_matched_is_undecided_not_a_loss() -> None:
    results = check_all(preset_run(lines=False).build(), ["no-loss", "retry-backoff"])
    assert [r.valid for r in results] == [None, None]
    assert all("-l info" in r.summary for r in results)
    # Gated, so the run is undecided (exit 2), never a PASS of nothing.
    assert all(observable(r) for r in results)
    from harness.verdicts import overall_exit_code

    assert overall_exit_code(results) == 2


def test_celerys_worker_lost_line_is_no_second_success() -> None:
    spec = WorkerSpec(events="celery")
    rec = Recorder(None)
    reader = LineReader(rec, "worker-1", spec.events_pattern(), words=spec.event_words())
    reader.feed("[...: WARNING/MainProcess] Task harness.task[x-1] succeeded before the "
                "worker was lost")  # celery/worker/request.py
    assert [e for e in rec.snapshot() if e.source == "worker-1"] == []


def test_a_preset_needs_a_brought_worker_of_its_framework() -> None:
    import pytest

    from harness.options import OptionsError, build_options

    with pytest.raises(OptionsError, match="bring it with --worker-cmd"):
        build_options(backend="local", events="celery")
    with pytest.raises(OptionsError, match="--format celery"):
        build_options(backend="local", worker_cmd="w", events="celery")
    assert build_options(backend="local", worker_cmd="w", events="celery",
                         task_format="celery").events == "celery"
