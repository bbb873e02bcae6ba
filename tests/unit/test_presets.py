"""Event presets (harness.presets): Celery's own log formats read as contract events,
and a claim the lines distort is unknown and not observable, never a verdict."""

from __future__ import annotations

from collections.abc import Callable

from celery.app import trace
from histories import W1, W2, W3, H, start

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
    reader = LineReader(rec, "worker-1", spec.events_pattern(), translate=spec.event_translator())
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

    with pytest.raises(ValueError, match="preset \\(celery, dramatiq\\)"):
        WorkerSpec(events="rq").events_pattern()


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
    reader = LineReader(rec, "worker-1", spec.events_pattern(), translate=spec.event_translator())
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


def dramatiq_lines() -> tuple[list[str], str, str]:
    """Dramatiq's own debug lines, in its own format (``dramatiq --verbose``), of a
    worker on its StubBroker (the same worker and Retries code as on RabbitMQ): one
    message that succeeds, one that fails once and then succeeds after a delayed
    retry (through ``<queue>.DQ``), one that fails for good."""
    import logging

    import dramatiq
    from dramatiq.brokers.stub import StubBroker
    from dramatiq.cli import LOGFORMAT

    broker = StubBroker()
    tries: dict[str, int] = {}

    @dramatiq.actor(max_retries=1, min_backoff=10, max_backoff=20, broker=broker)
    def job(x: str) -> None:
        tries[x] = tries.get(x, 0) + 1
        if x == "always" or (x == "once" and tries[x] == 1):
            raise ValueError("boom")

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.lines: list[str] = []
            self.setFormatter(logging.Formatter(LOGFORMAT))

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.extend(self.format(record).splitlines())

    keep = Keep()
    log = logging.getLogger("dramatiq")
    old_level = log.level
    log.addHandler(keep)
    log.setLevel(logging.DEBUG)
    try:
        ok, once, always = job.send("ok"), job.send("once"), job.send("always")
        worker = dramatiq.Worker(broker, worker_timeout=50)
        worker.start()
        try:
            broker.join(job.queue_name, fail_fast=False, timeout=20_000)
            worker.join()
        finally:
            worker.stop()
    finally:
        log.removeHandler(keep)
        log.setLevel(old_level)
    assert tries == {"ok": 1, "once": 2, "always": 2}
    return keep.lines, ok.message_id, once.message_id + " " + always.message_id


def test_dramatiq_debug_lines_become_contract_events() -> None:
    lines, ok, rest = dramatiq_lines()
    once, always = rest.split()
    # The delay queue's consumer acks the copy it moves when due: not a settlement.
    assert any("ConsumerThread(default.DQ)" in ln and "Acknowledging" in ln for ln in lines)
    spec = WorkerSpec(events="dramatiq")
    rec = Recorder(None)
    reader = LineReader(rec, "worker-1", spec.events_pattern(),
                        translate=spec.event_translator())
    for line in lines:
        reader.feed(line)
    events = [e for e in rec.snapshot() if e.source == "worker-1"]

    def of(ident: str) -> list[tuple[str, object]]:
        return [(e.type, e.get("reason")) for e in events if e.id == ident]

    assert of(ok) == [("received", None), ("processed", None), ("acked", "processed")]
    assert of(once) == [("received", None), ("failed", None), ("retry_scheduled", None),
                        ("acked", "retry"), ("received", None), ("processed", None),
                        ("acked", "processed")]
    assert of(always) == [("received", None), ("failed", None), ("retry_scheduled", None),
                          ("acked", "retry"), ("received", None), ("failed", None),
                          ("dead_lettered", "rejected")]
    assert reader.foreign == 0


def test_dramatiq_lines_judge_a_retried_task_settled_once() -> None:
    """The retried attempt's ack is a retry's, not a second settlement."""
    lines, _ok, rest = dramatiq_lines()
    once = rest.split()[0]
    spec = WorkerSpec(events="dramatiq")
    caps = {"directives": True, "health": False, "events": "preset:dramatiq"}
    h = start(caps).publish(once, directives={"fail_times": 1})
    rec = Recorder(None)
    reader = LineReader(rec, "worker-1", spec.events_pattern(),
                        translate=spec.event_translator())
    for i, line in enumerate(lines):
        reader.feed(line, seen_ts=1001.0 + i / 100)
    for e in rec.snapshot():
        if e.id == once:
            h.add(e.type, e.source, ts=e.ts, id=e.id, worker=e.worker, **(e.data or {}))
    results = check_all(h.finish().build(), ["no-loss", "exactly-once-ack",
                                             "no-duplicate-processing"])
    assert [r.valid for r in results] == [True, True, True], [r.summary for r in results]


def crashed_run(*, crash: str | None, exits: bool, processed: bool) -> H:
    """A preset run of one task whose first delivery's process died (a kill, or its
    own crash directive) and, maybe, a second processing the lines show."""
    caps = {"directives": True, "health": False, "events": "preset:celery",
            "unobservable_after_death": {
                "no-duplicate-processing": "a processing may have left no line",
                "no-loss": "an after_process crash writes no success line"}}
    h = start(caps).publish("c", directives={"crash": crash} if crash else {})
    h.received("c", W1, ts=1001.0)
    if exits:
        h.worker_exited(W1, requested=False, ts=1001.5)
    if processed:
        h.processed("c", "worker-2", ts=1002.0)
    return h.finish()


def test_after_a_death_the_preset_cannot_count_duplicates() -> None:
    """A process that died between its side effect and its success line hid that
    processing: 'processed once' would be a false true."""
    [dup] = check_all(crashed_run(crash=None, exits=True, processed=True).build(),
                      ["no-duplicate-processing"])
    assert dup.valid is None and not observable(dup)
    # No process died: the lines are whole, the claim is judged.
    [whole] = check_all(crashed_run(crash=None, exits=False, processed=True).build(),
                        ["no-duplicate-processing"])
    assert whole.valid is True


def test_an_after_process_crash_unseen_in_the_lines_is_undecided_not_lost() -> None:
    [crashed] = check_all(crashed_run(crash="after_process", exits=False,
                                      processed=False).build(), ["no-loss"])
    assert crashed.valid is None and observable(crashed)  # gated: the run is undecided
    assert crashed.evidence["unseen_crashed"] == 1
    # A task a kill took mid-way, never seen again, is lost as always.
    [killed] = check_all(crashed_run(crash=None, exits=True, processed=False).build(),
                         ["no-loss"])
    assert killed.valid is False
    # Reprocessed by another worker: accounted for.
    [again] = check_all(crashed_run(crash="after_process", exits=False,
                                    processed=True).build(), ["no-loss"])
    assert again.valid is True


def dramatiq_feed(lines: list[str]) -> list[tuple[str, str | None, object]]:
    spec = WorkerSpec(events="dramatiq")
    rec = Recorder(None)
    reader = LineReader(rec, "worker-1", spec.events_pattern(),
                        translate=spec.event_translator())
    for line in lines:
        reader.feed(line)
    return [(e.type, e.id, e.get("reason")) for e in rec.snapshot() if e.source == "worker-1"]


def dline(thread: str, logger: str, level: str, message: str, pid: int = 7) -> str:
    from dramatiq.cli import LOGFORMAT

    return LOGFORMAT % {"asctime": "2026-12-06 07:00:00,000", "process": pid,
                        "threadName": thread, "name": logger, "levelname": level,
                        "message": message}


RECV = "Received message job('x') with id '{}'."
ACK_LOGGER = "dramatiq.worker.ConsumerThread(default)"


def test_dramatiq_ack_after_a_failure_without_retries_is_no_processing() -> None:
    """An app without the Retries middleware: the task raised, Dramatiq acks it and
    the message is gone unprocessed. Read as a success, that would be a false PASS."""
    lines = [dline("Thread-4", "dramatiq.worker.WorkerThread", "DEBUG", RECV.format("m1")),
             dline("Thread-4", "dramatiq.worker.WorkerThread", "ERROR",
                   "Failed to process message job('x') with unhandled exception."),
             "Traceback (most recent call last):",
             dline("Thread-4", ACK_LOGGER, "DEBUG", "Acknowledging message 'm1'.")]
    assert dramatiq_feed(lines) == [("received", "m1", None), ("acked", "m1", "failed")]
    skipped = [dline("Thread-4", "dramatiq.worker.WorkerThread", "DEBUG", RECV.format("m2")),
               dline("Thread-4", "dramatiq.worker.WorkerThread", "WARNING",
                     "Message job('x') was skipped."),
               dline("Thread-4", ACK_LOGGER, "DEBUG", "Acknowledging message 'm2'.")]
    assert dramatiq_feed(skipped)[-1] == ("acked", "m2", "failed")


def test_dramatiq_ack_lines_pair_with_their_own_thread_and_attempt() -> None:
    w = "dramatiq.worker.WorkerThread"
    lines = [
        dline("Thread-1", w, "DEBUG", RECV.format("a")),
        dline("Thread-1", w, "DEBUG", RECV.format("b"), pid=8),  # another process
        dline("Thread-1", "dramatiq.middleware.retries.Retries", "INFO",
              "Retrying message 'a' in 200 milliseconds."),
        dline("Thread-1", ACK_LOGGER, "DEBUG", "Acknowledging message 'b'.", pid=8),
        dline("Thread-1", ACK_LOGGER, "DEBUG", "Acknowledging message 'a'."),
        # Written again after the first ack met a closed connection: no second event.
        dline("Thread-1", ACK_LOGGER, "DEBUG", "Acknowledging message 'a'."),
        # An ack of no attempt seen (a restarted worker): no event, never a success.
        dline("Thread-9", ACK_LOGGER, "DEBUG", "Acknowledging message 'c'."),
        # The delay queue's consumer moving a due retry: settles nothing.
        dline("Thread-2", "dramatiq.worker.ConsumerThread(default.DQ)", "DEBUG",
              "Acknowledging message 'a'."),
    ]
    assert dramatiq_feed(lines) == [
        ("received", "a", None), ("received", "b", None), ("failed", "a", None),
        ("retry_scheduled", "a", None), ("processed", "b", None), ("acked", "b", "processed"),
        ("acked", "a", "retry")]


def test_dramatiq_lines_of_another_format_are_no_events() -> None:
    """The thread and process pair an ack with its attempt: a format without them
    (an app's own logging config) gives nothing, so the run is undecided."""
    assert dramatiq_feed(["DEBUG Received message job('x') with id 'a'.",
                          "DEBUG Acknowledging message 'a'."]) == []


def test_dramatiq_logging_only_its_retries_is_undecided_not_every_task_lost() -> None:
    """At INFO Dramatiq still logs 'Retrying ...' but no receipt and no ack."""
    caps = {"directives": True, "health": False, "events": "preset:dramatiq"}
    h = start(caps).publish("r", directives={"fail_times": 1}).publish("s")
    h.failed("r", W1).retry_scheduled("r", W1, attempt=2)
    [loss] = check_all(h.finish().build(), ["no-loss"])
    assert loss.valid is None and "preset's level" in loss.summary


def test_an_ignored_crash_directive_excuses_no_loss() -> None:
    """A worker that does not honour directives never crashed by one: its lost crash
    task is lost, not undecided."""
    caps = {"directives": False, "health": False, "events": "preset:celery",
            "unobservable_after_death": {"no-loss": "an after_process crash writes no line"}}
    h = start(caps).publish("c", directives={"crash": "after_process"}).publish("d")
    h.received("c", W1, ts=1001.0).received("d", W1, ts=1001.1).processed("d", W1)
    [loss] = check_all(h.finish().build(), ["no-loss"])
    assert loss.valid is False


def test_dramatiq_a_rate_limited_message_is_no_processing() -> None:
    """Without the Retries middleware a RateLimitExceeded leaves the message unfailed
    and Dramatiq acks it: gone, never run (its one line is at debug level)."""
    lines = [dline("Thread-4", "dramatiq.worker.WorkerThread", "DEBUG", RECV.format("m1")),
             dline("Thread-4", "dramatiq.worker.WorkerThread", "DEBUG",
                   "Rate limit exceeded in message job('x'): mutex."),
             dline("Thread-4", ACK_LOGGER, "DEBUG", "Acknowledging message 'm1'.")]
    assert dramatiq_feed(lines) == [("received", "m1", None), ("acked", "m1", "failed")]


# -- a kill drops the lines in Dramatiq's pipe -----------------------------------------

CUT_CLAIMS = ["no-loss", "exactly-once-ack", "redelivery-after-crash"]
DRAMATIQ_CAPS = {"directives": True, "health": False, "events": "preset:dramatiq",
                 "lines_cut_by_kill": "a kill drops the lines in Dramatiq's pipe"}


def cut_run(caps: dict[str, object], after_kill: Callable[[H], None] | None = None) -> H:
    """W1 holds a and b and is killed; b comes back to W2 and is processed; a shows
    nothing more: its processing and ack may be in the lines the kill dropped."""
    h = start(caps).publish("a").publish("b").publish("c")
    h.received("a", W1, ts=1001.0).received("b", W1, ts=1001.1).task("c", W2)
    h.fault("kill", W1, ts=1002.0).worker_exited(W1, requested=True, ts=1002.05)
    h.received("b", W2, redelivered=True, ts=1002.5).processed("b", W2).acked("b", W2)
    if after_kill is not None:
        after_kill(h)
    return h.finish()


def verdicts(h: H) -> dict[str, object]:
    return {r.claim: r.valid for r in check_all(h.build(), CUT_CLAIMS)}


def test_a_task_a_kill_may_have_cut_from_dramatiq_lines_is_undecided_not_lost() -> None:
    """The broker got the ack, the pipe lost its line: undecided, on all three claims."""
    results = check_all(cut_run(DRAMATIQ_CAPS).build(), CUT_CLAIMS)
    for r in results:
        assert r.valid is None, r
        assert r.evidence["lines_cut_ids"] == ["a"] and "Dramatiq's pipe" in r.summary, r
        assert r.evidence["lines_cut_by"]["a"]["received_by"] == W1


def test_without_the_presets_word_the_same_lines_are_a_loss() -> None:
    """Celery (and JSON events on fd 1) lose no line at a kill: the same record is a
    FAIL on all three claims, as before."""
    caps = {k: v for k, v in DRAMATIQ_CAPS.items() if k != "lines_cut_by_kill"}
    assert verdicts(cut_run(caps)) == dict.fromkeys(CUT_CLAIMS, False)


def test_dramatiq_lines_that_show_everything_pass() -> None:
    """Every task the killed process held came back and was processed: true."""
    def back(h: H) -> None:
        h.received("a", W3, redelivered=True, ts=1002.6).processed("a", W3).acked("a", W3)
    assert verdicts(cut_run(DRAMATIQ_CAPS, back)) == dict.fromkeys(CUT_CLAIMS, True)


def test_a_cut_excuses_no_task_the_kill_did_not_hold() -> None:
    """A task received by a worker that was never killed, or by W1's new process after
    its restart and before no kill, and never processed, is lost whatever the preset:
    the FAIL stands beside the undecided task."""
    def lost_elsewhere(h: H) -> None:
        h.publish("d").received("d", W2, ts=1003.0)
        h.worker_started(W1, ts=1003.5).publish("e").received("e", W1, ts=1004.0)
    results = {r.claim: r for r in check_all(cut_run(DRAMATIQ_CAPS, lost_elsewhere).build(),
                                             ["no-loss", "exactly-once-ack"])}
    for r in results.values():
        assert r.valid is False, r
    assert results["no-loss"].evidence["lost_ids"] == ["d", "e"]
    assert results["no-loss"].evidence["lines_cut"] == 1


def test_a_task_received_again_after_the_kill_is_judged_by_its_later_lines() -> None:
    """a came back to W2 (so the broker did not have its ack) and was never processed:
    no line of W1's pipe can excuse that."""
    def dropped(h: H) -> None:
        h.received("a", W2, redelivered=True, ts=1002.7)
    assert verdicts(cut_run(DRAMATIQ_CAPS, dropped))["no-loss"] is False


def test_a_cut_needs_the_process_that_received_the_task_to_be_the_one_killed() -> None:
    """f was received by W1's first process, which stopped on request (its lines were
    flushed) and was replaced before the kill: f is lost, not undecided."""
    h = start(DRAMATIQ_CAPS).publish("f").publish("g").received("f", W1, ts=1001.0)
    h.task("g", W2).worker_exited(W1, requested=True, ts=1001.5, code=0, signal=None)
    h.worker_started(W1, ts=1001.6).fault("kill", W1, ts=1002.0)
    h.worker_exited(W1, requested=True, ts=1002.05)
    [loss] = check_all(h.finish().build(), ["no-loss"])
    assert loss.valid is False and loss.evidence["lost_ids"] == ["f"], loss


# -- a Celery pool child that dies on its own -------------------------------------------

CHILD_DIED = ("[2026-12-06 21:00:00,000: ERROR/MainProcess] Process 'ForkPoolWorker-2' "
              "pid:4242 exited with 'signal 9 (SIGKILL)'")


def test_a_pool_childs_death_line_is_a_process_death_and_json_cannot_fake_one() -> None:
    """billiard's supervisor line (the format of ``Pool._join_exited_workers``) is a
    ``process_died``; the same name in a worker's JSON is a foreign event."""
    spec = WorkerSpec(events="celery")
    rec = Recorder(None)
    LineReader(rec, "worker-1", spec.events_pattern(),
               translate=spec.event_translator()).feed(CHILD_DIED)
    [ev] = [e for e in rec.snapshot() if e.source == "worker-1"]
    assert ev.type == vocab.PROCESS_DIED and ev.id is None
    assert ev.get("process") == "ForkPoolWorker-2" and ev.get("status") == "signal 9 (SIGKILL)"
    rec2 = Recorder(None)
    LineReader(rec2, "worker-1", None).feed('{"event": "process_died", "process": "x"}')
    assert [e.type for e in rec2.snapshot()] == [vocab.FOREIGN_EVENT]


def test_a_pool_childs_death_makes_duplicates_unobservable_from_celery_lines() -> None:
    """A child that died between a side effect and its success line left one processing
    unseen: the lines' single processing of t is no proof of no duplicate."""
    caps = {"directives": True, "health": False, "events": "preset:celery",
            "unobservable_after_death": {"no-duplicate-processing": "a line may be missing"}}

    def run(child_died: bool) -> H:
        h = start(caps).publish("t").publish("u").received("t", W1, ts=1001.0)
        if child_died:
            h.add(vocab.PROCESS_DIED, W1, worker=W1, ts=1001.5, process="ForkPoolWorker-2",
                  pid="4242", status="signal 9 (SIGKILL)")
        h.received("t", W1, redelivered=True, ts=1002.0).processed("t", W1)
        return h.task("u", W2).finish()

    [clean] = check_all(run(False).build(), ["no-duplicate-processing"])
    assert clean.valid is True, clean
    [died] = check_all(run(True).build(), ["no-duplicate-processing"])
    assert died.valid is None and not observable(died), died
    assert "a line may be missing" in died.summary


def test_a_cut_needs_a_task_that_could_have_ended_just_before_the_kill() -> None:
    """x was received a minute before the kill, and no task of the run takes more than
    a few ms: its lines would have left the pipe long before. Lost, not undecided."""
    h = start(DRAMATIQ_CAPS).publish("x").received("x", W1, ts=1001.0)
    for i in range(5):
        h.publish(f"o{i}").received(f"o{i}", W1, ts=1010.0 + i).processed(f"o{i}", W1)
        h.acked(f"o{i}", W1)
    h.fault("kill", W1, ts=1060.0).worker_exited(W1, requested=True, ts=1060.05)
    assert verdicts(h.finish()) == dict.fromkeys(CUT_CLAIMS, False)


def test_a_worker_that_exits_on_its_own_cleanly_cuts_no_line() -> None:
    """No fault; W1 exits by itself with code 0 (its pipe flushed): x is lost. So is one
    held by a worker that a signal ended after the drain."""
    for code, signal, after_drain in ((0, None, False), (-9, 9, True)):
        h = start(DRAMATIQ_CAPS).publish("x").publish("y").received("x", W1, ts=1001.0)
        h.task("y", W2)
        if not after_drain:
            h.worker_exited(W1, requested=False, ts=1001.5, code=code, signal=signal)
        h.finish()
        if after_drain:
            h.worker_exited(W1, requested=False, code=code, signal=signal)
        [loss] = check_all(h.build(), ["no-loss"])
        assert loss.valid is False, (code, loss)


def test_a_task_whose_lines_show_its_failure_is_not_cut() -> None:
    """'Retries exceeded' was read before the kill: x was not processed, and it is in no
    queue: lost whatever the pipe held after."""
    h = start(DRAMATIQ_CAPS).publish("x").publish("y").received("x", W1, ts=1001.0)
    h.failed("x", W1, ts=1001.2).task("y", W2)
    h.fault("kill", W1, ts=1002.0).worker_exited(W1, requested=True, ts=1002.05)
    results = {r.claim: r.valid for r in check_all(h.finish().build(),
                                                   ["no-loss", "exactly-once-ack"])}
    assert results == {"no-loss": False, "exactly-once-ack": False}


def test_a_task_the_broker_still_holds_is_not_cut() -> None:
    """The final read finds x in the main queue (after an incomplete drain) or, unasked,
    in the DLQ: the broker never had its ack, so no pipe can explain it."""
    for main, dlq in ((["x"], []), ([], ["x"])):
        h = start(DRAMATIQ_CAPS).publish("x").publish("y").received("x", W1, ts=1001.0)
        h.task("y", W2).fault("kill", W1, ts=1002.0).worker_exited(W1, requested=True)
        h.finish(main=main, dlq=dlq, complete=False)
        got = {r.claim: r for r in check_all(h.build(), CUT_CLAIMS)}
        assert got["redelivery-after-crash"].valid is False, got
        assert "lines_cut_ids" not in got["redelivery-after-crash"].evidence
        if dlq:
            assert got["no-loss"].valid is False, got["no-loss"]


def test_a_receipt_read_just_after_the_kill_was_issued_can_be_cut() -> None:
    """The kill takes effect some ms after it is issued, and a preset's line carries the
    time the harness read it: a receipt read 20 ms after the kill is the killed
    process's, its ack line may be in the dropped pipe."""
    h = start(DRAMATIQ_CAPS).publish("x").publish("y").task("y", W2)
    h.fault("kill", W1, ts=1002.0).received("x", W1, ts=1002.02)
    h.worker_exited(W1, requested=True, ts=1002.1)
    results = check_all(h.finish().build(), CUT_CLAIMS)
    assert [r.valid for r in results] == [None, None, None], results


def test_a_task_cannot_print_celerys_death_line() -> None:
    """Celery logs a task's print as a WARNING of its pool child: no process death."""
    spec = WorkerSpec(events="celery")
    rec = Recorder(None)
    reader = LineReader(rec, "worker-1", spec.events_pattern(),
                        translate=spec.event_translator())
    reader.feed("[2026-12-06 21:00:00,000: WARNING/ForkPoolWorker-1] Process 'x' pid:1 "
                "exited with 'signal 9 (SIGKILL)'")
    reader.feed("[2026-12-06 21:00:00,000: WARNING/ForkPoolWorker-1] " + CHILD_DIED)
    assert [e.type for e in rec.snapshot() if e.source == "worker-1"] == []


def test_a_duplicate_the_lines_show_stays_false_after_a_death() -> None:
    """A process death hides processings; it cannot hide two the lines show."""
    caps = {"directives": True, "health": False, "events": "preset:celery",
            "unobservable_after_death": {"no-duplicate-processing": "a line may be missing"}}
    h = start(caps).publish("t").received("t", W1, ts=1001.0).processed("t", W1)
    h.add(vocab.PROCESS_DIED, W1, worker=W1, ts=1001.5, process="ForkPoolWorker-2",
          pid="4242", status="signal 9 (SIGKILL)")
    h.received("t", W2, ts=1002.0).processed("t", W2)
    [dup] = check_all(h.finish().build(), ["no-duplicate-processing"])
    assert dup.valid is False, dup
