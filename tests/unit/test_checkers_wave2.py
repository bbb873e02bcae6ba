"""Unit tests of the second wave of checkers on hand-made histories (no broker)."""

from __future__ import annotations

from typing import Any

import pytest
from histories import H, ids

from harness.checkers import (
    CHECKERS,
    concurrency,
    dead_letter,
    exactly_one_consumer,
    graceful_shutdown,
    health,
    partition_recovery,
    retry_backoff,
    scaling,
)
from harness.checkers.base import run_checker
from harness.model import CLAIMS

W1, W2, W3 = "worker-1", "worker-2", "worker-3"
CAPS: dict[str, Any] = {"directives": True, "health": True, "events": "json"}


def cluster(**over: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"workers": 2, "concurrency": 10, "queue": "q", "dlq": "q.dlq",
                         "retry_base_ms": 200, "max_attempts": 4, "heartbeat_s": 2,
                         "grace_s": 10, "queue_type": "classic"}
    c.update(over)
    return c


def start(caps: dict[str, Any] | None = None, **over: Any) -> H:
    h = H().run_started(cluster(**over), CAPS if caps is None else caps)
    for w in (W1, W2, W3):
        h.worker_started(w, ts=1000.0)
    return h


def test_every_claim_has_a_checker() -> None:
    assert set(CHECKERS) == set(CLAIMS)


@pytest.mark.parametrize("claim", sorted(CLAIMS))
def test_empty_history_is_unknown_never_true(claim: str) -> None:
    assert run_checker(claim, CHECKERS[claim], H().build(), {}).valid is None


# -- retry-backoff ----------------------------------------------------------------

def retry_history(factor: float = 1.0, fail_times: tuple[int, ...] = (1, 2, 3),
                  base_ms: int = 200, max_attempts: int = 4, extra_attempt: bool = False,
                  report_end: bool = True, caps: dict[str, Any] | None = None) -> H:
    """Tasks that fail ``k`` times; attempt a+1 arrives ``factor`` x the backoff later."""
    h = start(caps, retry_base_ms=base_ms, max_attempts=max_attempts)
    t = 1010.0
    for n, k in enumerate(fail_times):
        ident = f"r{n}"
        h.publish(ident, directives={"sleep_ms": 0, "fail_times": k}, ts=t)
        attempts = min(k, max_attempts - 1) + 1 + (1 if extra_attempt else 0)
        for a in range(1, attempts + 1):
            w = W1 if a % 2 else W2
            h.received(ident, w, attempt=a, ts=t)
            if a <= k and a < attempts:
                if report_end:
                    h.failed(ident, w, attempt=a, ts=t + 0.01)
                    h.retry_scheduled(ident, w, attempt=a + 1, ts=t + 0.02)
                t += 0.02 + factor * base_ms * 2 ** (a - 1) / 1000.0
            else:
                h.processed(ident, w, attempt=a, ts=t + 0.01).acked(ident, w, ts=t + 0.02)
        t += 1.0
    return h


def test_retry_backoff_true() -> None:
    r = retry_backoff.check(retry_history(1.1).finish().build(), {})
    assert r.valid is True, r.summary
    assert r.evidence["gaps"] == 1 + 2 + 3
    assert r.evidence["per_attempt"]["3"]["expected_s"] == 0.8


def test_retry_backoff_true_measured_from_receipts() -> None:
    r = retry_backoff.check(retry_history(1.0, report_end=False).finish().build(), {})
    assert r.valid is True, r.summary


def test_retry_backoff_false_no_backoff() -> None:
    r = retry_backoff.check(retry_history(0.01).finish().build(), {})
    assert r.valid is False
    assert r.evidence["out_of_bounds"] == 6
    assert r.evidence["worst_gaps"][0]["gap_s"] < r.evidence["worst_gaps"][0]["lo_s"]
    assert r.violated_at_ts == pytest.approx(1010.022)  # the first early retry's arrival


def test_retry_backoff_false_too_slow_beyond_slack() -> None:
    r = retry_backoff.check(retry_history(3.0, base_ms=1000).finish().build(), {})
    assert r.valid is False and "too long" in r.summary
    # When the first gap's bound ran out: after the failure, before the late retry came.
    assert r.violated_at_ts is not None and 1010.01 < r.violated_at_ts < 1013.02


def test_retry_backoff_false_retries_past_the_limit() -> None:
    h = retry_history(1.0, fail_times=(5,), max_attempts=3, extra_attempt=True)
    r = retry_backoff.check(h.finish().build(), {})
    assert r.valid is False
    assert r.evidence["wrong_attempts"]["r0"]["expected_attempts"] == 3
    assert r.violated_at_ts == pytest.approx(1011.46)  # when attempt 4 arrived


def test_retry_backoff_params_override_base() -> None:
    h = retry_history(1.0, base_ms=200).finish().build()
    assert retry_backoff.check(h, {"base_ms": 2000}).valid is False


@pytest.mark.parametrize("case", ["no_directives", "no_fail_tasks", "no_received"])
def test_retry_backoff_unknown(case: str) -> None:
    if case == "no_directives":
        h = retry_history(caps={**CAPS, "directives": False})
    elif case == "no_fail_tasks":
        h = start().publish("a", directives={"sleep_ms": 5}).task("a", W1)
    else:
        h = start().publish("a", directives={"fail_times": 2}).processed("a", W1)
    r = retry_backoff.check(h.finish().build(), {})
    assert r.valid is None, r.summary
    if case == "no_directives":
        assert "directives" in r.summary


# -- dead-letter ------------------------------------------------------------------

def dl_history(caps: dict[str, Any] | None = None) -> H:
    h = start(caps, max_attempts=3)
    for i in ids(5):
        h.publish(i, directives={"sleep_ms": 1}).task(i, W1)
    h.publish("fa", directives={"fail_always": True})
    h.received("fa", W1).failed("fa", W1, permanent=True).dead_lettered("fa", W1)
    h.publish("po", poison=True)
    h.received("po", W2).failed("po", W2, permanent=True).dead_lettered("po", W2)
    h.publish("ft", directives={"fail_times": 5})
    for a in (1, 2, 3):
        h.received("ft", W1, attempt=a).failed("ft", W1, attempt=a)
    h.dead_lettered("ft", W1, reason="max_attempts")
    h.publish("ok2", directives={"fail_times": 1})
    h.received("ok2", W1).failed("ok2", W1).received("ok2", W2, attempt=2)
    h.processed("ok2", W2, attempt=2).acked("ok2", W2)
    return h


def test_dead_letter_true() -> None:
    r = dead_letter.check(dl_history().finish(dlq=["fa", "po", "ft"]).build(), {})
    assert r.valid is True, r.summary
    assert r.evidence["expected_by_reason"] == {"fail_always": 1, "poison": 1,
                                                "max_attempts": 1}


def test_dead_letter_false_no_dlx_and_requeue_loop() -> None:
    r = dead_letter.check(dl_history().finish(main=["ft"], dlq=["po"]).build(), {})
    assert r.valid is False
    assert r.evidence["missing_ids"] == ["fa", "ft"]
    assert "no DLX" in r.evidence["missing_where"]["fa"]
    assert "main queue" in r.evidence["missing_where"]["ft"]


def test_dead_letter_false_duplicated_and_unexpected() -> None:
    h = dl_history().finish(dlq=["fa", "po", "ft", "ft", "ok2"])
    r = dead_letter.check(h.build(), {})
    assert r.valid is False
    assert r.evidence["duplicated_ids"] == ["ft"] and r.evidence["unexpected_ids"] == ["ok2"]


def test_dead_letter_without_directives_expects_poison_only() -> None:
    h = dl_history({**CAPS, "directives": False}).finish(dlq=["po"])
    r = dead_letter.check(h.build(), {})
    assert r.valid is True and "note" in r.evidence


@pytest.mark.parametrize("case", ["nothing_expected", "no_dlq_listing", "dlq_listing_failed",
                                  "no_directives_no_poison"])
def test_dead_letter_unknown(case: str) -> None:
    if case == "nothing_expected":
        h = start().publish("a").task("a", W1).finish()
    elif case == "no_dlq_listing":
        h = dl_history().drain().final_queue("main")
    elif case == "dlq_listing_failed":
        h = dl_history().drain().final_queue("main").final_queue("dlq", ok=False)
    else:
        h = start({**CAPS, "directives": False}).publish(
            "fa", directives={"fail_always": True}).finish(main=["fa"])
    r = dead_letter.check(h.build(), {})
    assert r.valid is None, r.summary


# -- exactly-one-consumer ---------------------------------------------------------

def zombie(explained: bool = True) -> H:
    """W1 holds x, is paused; W2 gets x at 1020 while W1 finishes at 1030 (ack_failed)."""
    h = start().publish("x", ts=1001.0).received("x", W1, ts=1002.0)
    if explained:
        h.fault("pause", W1, ts=1003.0)
    h.received("x", W2, redelivered=True, ts=1020.0).processed("x", W2, ts=1021.0)
    h.acked("x", W2, ts=1021.1)
    if explained:
        h.fault("pause", W1, phase="heal", ts=1029.0)
    h.processed("x", W1, ts=1030.0).ack_failed("x", W1, ts=1030.1)
    return h


def test_one_consumer_true_with_clean_redelivery_after_kill() -> None:
    h = start().publish("x").publish("y").task("y", W2)
    h.received("x", W1, ts=1010.0).fault("kill", W1, ts=1011.0)
    h.received("x", W2, redelivered=True, ts=1011.05).processed("x", W2).acked("x", W2)
    h.worker_exited(W1, requested=True, ts=1011.2)  # recorded after the redelivery
    r = exactly_one_consumer.check(h.finish().build(), {})
    assert r.valid is True, r.summary
    assert r.evidence["ids_received_more_than_once"] == 1


def test_one_consumer_false_explained_zombie() -> None:
    r = exactly_one_consumer.check(zombie().finish().build(), {})
    assert r.valid is False
    assert r.evidence["invariant_holds"] is True
    assert r.explained["zombies"] == [W1] and r.explained["ack_failed_seen"] is True
    (item,) = r.explained["by"]["x"]
    assert item["late_by_s"] == pytest.approx(10.1)
    assert item["explained_by"]["fault"] == "fault:pause"


def test_one_consumer_false_unexplained() -> None:
    r = exactly_one_consumer.check(zombie(explained=False).finish().build(), {})
    assert r.valid is False and r.evidence["invariant_holds"] is False
    assert r.evidence["unexplained_ids"] == ["x"]


def test_one_consumer_unknown_without_receipts() -> None:
    h = start().publish("x").processed("x", W1).finish()
    assert exactly_one_consumer.check(h.build(), {}).valid is None


# -- health-check -----------------------------------------------------------------

def outage(down: bool = True, up: bool = True, caps: dict[str, Any] | None = None) -> H:
    h = start(caps)
    for w in (W1, W2):
        h.health(w, True, ts=1001.0)
    h.fault("broker-restart", "broker", ts=1010.0, completed_ts=1018.0)
    if down:
        h.health(W1, False, ts=1010.3).health(W2, False, ts=1011.0)
    if up:
        h.health(W1, True, ts=1020.0).health(W2, True, ts=1022.0)
    h.add("run_finished", "harness", ts=1060.0)
    return h


def test_health_true() -> None:
    r = health.check(outage().build(), {})
    assert r.valid is True, r.summary
    rows = {x["worker"]: x for x in r.evidence["per_worker"]}
    assert rows[W2]["down_after_s"] == 1.0 and rows[W2]["up_after_completed_s"] == 4.0


def test_health_false_always_ok() -> None:
    r = health.check(outage(down=False, up=False).build(), {})
    assert r.valid is False and r.evidence["never_unhealthy"] == 2
    # Pinned: the down bound after the outage began is when the violation showed.
    assert r.violated_at_ts == 1010.0 + r.evidence["down_bound_s"]


def test_health_false_never_healthy_again() -> None:
    r = health.check(outage(up=False).build(), {})
    assert r.valid is False and r.evidence["never_healthy_again"] == 2
    assert r.violated_at_ts == 1018.0 + r.evidence["up_bound_s"]


@pytest.mark.parametrize("case", ["no_capability", "no_health_events", "no_outage",
                                  "record_too_short"])
def test_health_unknown(case: str) -> None:
    if case == "no_capability":
        h = outage(caps={**CAPS, "health": False})
    elif case == "no_health_events":
        h = start().fault("broker-restart", "broker", completed_ts=1010.0)
    elif case == "no_outage":
        h = start().health(W1, True)
    else:
        h = start().health(W1, True, ts=1001.0).fault("broker-restart", "broker", ts=1010.0,
                                                      completed_ts=1018.0)
        h.health(W1, False, ts=1010.5)
    r = health.check(h.build(), {})
    assert r.valid is None, r.summary


# -- graceful-shutdown -------------------------------------------------------------

def sigterm(bug: str = "") -> H:
    """W1 holds a, b, c at SIGTERM (1010): a and b finish, c is requeued to W2."""
    h = start()
    for i in ("a", "b", "c", "d"):
        h.publish(i, ts=1001.0)
    h.received("d", W1, ts=1002.0).processed("d", W1, ts=1003.0).acked("d", W1, ts=1003.1)
    for i in ("a", "b", "c"):
        h.received(i, W1, ts=1005.0)
    h.fault("terminate", W1, ts=1010.0, completed_ts=1013.0)
    if bug == "acks_inflight":
        h.acked("a", W1, ts=1010.1)
    else:
        h.processed("a", W1, ts=1011.0).acked("a", W1, ts=1011.1)
    h.processed("b", W1, ts=1012.0).acked("b", W1, ts=1012.1)
    if bug != "lost":
        h.received("c", W2, redelivered=True, ts=1012.5).processed("c", W2, ts=1013.5)
        h.acked("c", W2, ts=1013.6)
    if bug == "killed":
        h.worker_exited(W1, requested=True, ts=1020.0, code=-9, signal=9)
    else:
        h.worker_exited(W1, requested=True, ts=1012.4, code=0, signal=None)
    return h


def test_graceful_true() -> None:
    r = graceful_shutdown.check(sigterm().finish().build(), {})
    assert r.valid is True, r.summary
    e = r.evidence
    assert (e["in_flight"], e["finished_and_acked"], e["requeued_and_completed"]) == (3, 2, 1)
    assert e["per_termination"][0]["exit_after_s"] == pytest.approx(2.4)


@pytest.mark.parametrize("bug", ["acks_inflight", "lost", "killed"])
def test_graceful_false(bug: str) -> None:
    r = graceful_shutdown.check(sigterm(bug).finish().build(), {})
    assert r.valid is False, r.summary
    if bug == "acks_inflight":
        assert r.evidence["acked_unfinished_ids"] == ["a"]
    elif bug == "lost":
        assert r.evidence["lost_ids"] == ["c"]
    else:
        assert "code -9" in r.summary


def test_graceful_scale_fault_lists_terminated_workers() -> None:
    h = start().publish("a").received("a", W3, ts=1005.0)
    h.fault("scale", "cluster", ts=1010.0, count=2, terminated=[W3])
    h.processed("a", W3, ts=1011.0).acked("a", W3, ts=1011.1)
    h.worker_exited(W3, requested=True, ts=1011.5, code=0, signal=None)
    r = graceful_shutdown.check(h.finish().build(), {})
    assert r.valid is True and r.evidence["finished_and_acked"] == 1


@pytest.mark.parametrize("case", ["no_terminate", "nothing_in_flight"])
def test_graceful_unknown(case: str) -> None:
    h = start().publish("a").task("a", W1)
    if case == "nothing_in_flight":
        h.fault("terminate", W1).worker_exited(W1, requested=True, code=0, signal=None)
    r = graceful_shutdown.check(h.finish().build(), {})
    assert r.valid is None, r.summary


# -- partition-recovery ------------------------------------------------------------

def partition(recovers: str = "ready") -> H:
    h = start().publish("a").publish("b").task("a", W1)
    h.fault("partition", W1, ts=1010.0).fault("partition", W1, phase="heal", ts=1020.0,
                                              completed_ts=1020.5)
    h.connection_lost(W1, ts=1021.0)
    if recovers == "ready":
        h.ready(W1, ts=1023.0)
    if recovers in ("ready", "received"):
        h.received("b", W1, ts=1024.0).processed("b", W1).acked("b", W1)
    else:
        h.received("b", W2, ts=1024.0).processed("b", W2).acked("b", W2)
    if recovers == "health":
        h.health(W1, True, ts=1025.0)
    h.add("run_finished", "harness", ts=1100.0)
    return h


@pytest.mark.parametrize(("recovers", "after"), [("ready", 2.5), ("received", 3.5),
                                                 ("health", 4.5)])
def test_partition_true(recovers: str, after: float) -> None:
    r = partition_recovery.check(partition(recovers).finish().build(), {})
    assert r.valid is True, r.summary
    assert r.evidence["per_heal"][0]["recovered_after_s"] == after


def test_partition_health_is_not_enough_while_work_remains() -> None:
    h = partition("health")
    h.publish("c").received("c", W2, ts=1030.0).processed("c", W2).acked("c", W2)
    r = partition_recovery.check(h.finish().build(), {})
    assert r.valid is False


def test_partition_false_no_reconnect() -> None:
    r = partition_recovery.check(partition("never").finish().build(), {})
    assert r.valid is False and r.evidence["not_recovered"] == 1


@pytest.mark.parametrize("case", ["no_heal", "record_ends"])
def test_partition_unknown(case: str) -> None:
    h = start().fault("partition", W1, ts=1010.0)
    if case == "record_ends":
        h.fault("partition", W1, phase="heal", ts=1020.0)
    assert partition_recovery.check(h.build(), {}).valid is None


# -- concurrency ------------------------------------------------------------------

def conc_history(run_at_once: int, n: int = 40, conc: int = 10, task_s: float = 0.1,
                 gap_s: float = 0.0) -> H:
    h = start(concurrency=conc)
    t = 1010.0
    for i, ident in enumerate(ids(n)):
        wave, slot = divmod(i, run_at_once)
        s = t + wave * (task_s + gap_s + 0.01) + slot * 0.001
        h.publish(ident, ts=1001.0).received(ident, W1, ts=s)
        h.processed(ident, W1, ts=s + task_s, started_ts=s).acked(ident, W1, ts=s + task_s)
    return h


def test_concurrency_true() -> None:
    r = concurrency.check(conc_history(10).finish().build(), {})
    assert r.valid is True, r.summary
    assert r.evidence["peak"] == 10 and r.evidence["throughput_ratio"] > 0.9


def test_concurrency_false_ignores_concurrency() -> None:
    r = concurrency.check(conc_history(1).finish().build(), {})
    assert r.valid is False and r.evidence["peak"] == 1


def test_concurrency_false_above_the_limit() -> None:
    r = concurrency.check(conc_history(20).finish().build(), {})
    assert r.valid is False and "more tasks at once" in r.summary


def test_concurrency_false_slow_between_waves() -> None:
    r = concurrency.check(conc_history(10, gap_s=0.2).finish().build(), {})
    assert r.valid is False and r.evidence["throughput_ratio"] < 0.7


@pytest.mark.parametrize("case", ["small", "no_conc_setting", "nothing"])
def test_concurrency_unknown(case: str) -> None:
    if case == "small":
        h = conc_history(10, n=15)
    elif case == "no_conc_setting":
        h = H().publish("a").task("a", W1)
    else:
        h = start()
    assert concurrency.check(h.finish().build(), {}).valid is None


def test_peak_overlap_touching_intervals_do_not_overlap() -> None:
    assert concurrency.peak_overlap([(0, 1), (1, 2), (2, 3)]) == 1
    assert concurrency.peak_overlap([(0, 2), (1, 3), (1.5, 1.6)]) == 3


# -- linear-scaling ---------------------------------------------------------------

def scaling_history(rates: dict[int, float], tasks: int = 2000, phase_s: float = 8.0,
                    ready_delay_s: float | None = None) -> H:
    """Phases of N workers (keys) each processing at ``rates[N]`` tasks/s overall."""
    counts = list(rates)
    h = start(workers=counts[0], concurrency=1)
    for i in range(tasks):
        h.publish(f"t{i}", ts=1000.5)
    h.add("publish_started", "harness", ts=1000.0, tasks=tasks)
    t = 1000.0
    n = 0
    for p, count in enumerate(counts):
        p_start = t
        if p:
            h.fault("scale", "cluster", ts=t, count=count)
            if ready_delay_s is not None:
                for k in range(counts[p - 1], count):
                    h.ready(f"worker-{k + 1}", ts=t + ready_delay_s)
        step = 1.0 / rates[count]
        s = p_start
        while s < p_start + phase_s and n < tasks:
            h.processed(f"t{n}", W1, ts=s)
            n += 1
            s += step
        t = p_start + phase_s
    return h


def test_scaling_true() -> None:
    r = scaling.check(scaling_history({1: 10.0, 2: 20.0, 4: 39.0, 8: 76.0}).build(), {})
    assert r.valid is True, r.summary
    assert [c["workers"] for c in r.evidence["curve"]] == [1, 2, 4, 8]
    assert r.evidence["bends_at"] is None


def test_scaling_false_bends() -> None:
    r = scaling.check(scaling_history({1: 10.0, 2: 19.0, 4: 25.0, 8: 26.0}).build(), {})
    assert r.valid is False and r.evidence["bends_at"] == 4
    assert r.evidence["curve"][2]["efficiency"] == pytest.approx(25 / 40, abs=0.02)


def test_scaling_phase_starts_when_new_workers_are_ready() -> None:
    h = scaling_history({1: 10.0, 2: 20.0}, phase_s=9.0, ready_delay_s=1.5).build()
    r = scaling.check(h, {})
    assert r.evidence["phases"][1]["start"] == "scale, new workers ready"
    assert r.valid is True, r.summary


@pytest.mark.parametrize("case", ["one_phase", "no_t1", "backlog_ran_out", "phase_too_short"])
def test_scaling_unknown(case: str) -> None:
    if case == "one_phase":
        h = scaling_history({1: 10.0})
    elif case == "no_t1":
        h = scaling_history({2: 20.0, 4: 40.0})
    elif case == "backlog_ran_out":
        h = scaling_history({1: 10.0, 2: 20.0, 4: 40.0}, tasks=200)
    else:
        h = scaling_history({1: 10.0, 2: 20.0}, phase_s=5.0)
    r = scaling.check(h.build(), {})
    assert r.valid is None, r.summary
    if case == "backlog_ran_out":
        assert "4 worker(s): the backlog ran out" in r.summary
