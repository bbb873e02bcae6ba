"""``harness.loadgen.ConfirmWindow``: the confirm bookkeeping of the Locust load
file, driven by hand with the broker's answers as RabbitMQ sends them."""

from __future__ import annotations

import pytest

from harness.loadgen import (
    MAX_WINDOW,
    Completed,
    ConfirmWindow,
    Ledger,
    LedgerCounts,
    LoadFacts,
    QueueSample,
    body_maker,
    judge_load,
    queue_samples_csv,
    queue_summary,
    quote_ids,
    ramp_users,
)
from harness.tasks import task_body
from harness.vocab import EXIT_OK, EXIT_UNDECIDED, EXIT_VIOLATED


def test_window_bounds_are_checked_early() -> None:
    for bad in (0, -1, MAX_WINDOW + 1):
        with pytest.raises(ValueError, match="confirm window must be"):
            ConfirmWindow(bad)


def test_tags_count_from_one_and_room_shrinks_to_zero() -> None:
    w = ConfirmWindow(3)
    assert [w.sent(f"t{i}", 10, now_s=0.0) for i in range(3)] == [1, 2, 3]
    assert w.room == 0 and w.outstanding == 3


def test_a_single_ack_settles_only_its_tag_with_its_latency() -> None:
    w = ConfirmWindow(5)
    w.sent("a", 7, now_s=1.0)
    w.sent("b", 8, now_s=1.5)
    [s] = w.answer(2, multiple=False, ack=True, now_s=2.0)
    assert (s.task_id, s.latency_s, s.size, s.error) == ("b", 0.5, 8, None)
    assert w.outstanding == 1 and w.room == 4


def test_a_multiple_ack_settles_every_tag_up_to_it_oldest_first() -> None:
    w = ConfirmWindow(10)
    for i in range(5):
        w.sent(f"t{i + 1}", 1, now_s=float(i))
    done = w.answer(3, multiple=True, ack=True, now_s=10.0)
    assert [s.task_id for s in done] == ["t1", "t2", "t3"]
    assert [s.latency_s for s in done] == [10.0, 9.0, 8.0]
    assert w.outstanding == 2
    # The broker may confirm tag 5 alone before a multiple covering 4.
    assert [s.task_id for s in w.answer(5, multiple=False, ack=True, now_s=11.0)] == ["t5"]
    assert [s.task_id for s in w.answer(5, multiple=True, ack=True, now_s=12.0)] == ["t4"]
    assert w.outstanding == 0


def test_a_nack_is_a_failure() -> None:
    w = ConfirmWindow(2)
    w.sent("a", 1, now_s=0.0)
    [s] = w.answer(1, multiple=False, ack=False, now_s=0.1)
    assert s.error == "nacked by the broker"


def test_a_returned_task_fails_even_though_its_ack_follows() -> None:
    w = ConfirmWindow(2)
    w.sent("a", 1, now_s=0.0)
    w.sent("b", 1, now_s=0.0)
    w.returned("a", "returned: 312 NO_ROUTE")
    done = w.answer(2, multiple=True, ack=True, now_s=0.1)
    assert [(s.task_id, s.error) for s in done] == [("a", "returned: 312 NO_ROUTE"),
                                                   ("b", None)]


def test_an_unknown_or_repeated_tag_settles_nothing() -> None:
    w = ConfirmWindow(2)
    w.sent("a", 1, now_s=0.0)
    assert len(w.answer(1, multiple=False, ack=True, now_s=0.1)) == 1
    assert w.answer(1, multiple=False, ack=True, now_s=0.2) == []
    assert w.answer(9, multiple=False, ack=True, now_s=0.2) == []


def test_abandon_fails_every_outstanding_publish_and_empties_the_window() -> None:
    w = ConfirmWindow(4)
    w.sent("a", 1, now_s=0.0)
    w.sent("b", 1, now_s=1.0)
    done = w.abandon("connection closed", now_s=2.0)
    assert [(s.task_id, s.latency_s, s.error) for s in done] == [
        ("a", 2.0, "connection closed"), ("b", 1.0, "connection closed")]
    assert w.outstanding == 0 and w.room == 4
    # Tags go on from where they were: the channel's numbering does not restart.
    assert w.sent("c", 1, now_s=3.0) == 3


# -- Ledger: loss and duplicates by id ------------------------------------------


def test_ledger_lost_is_confirmed_and_never_completed() -> None:
    led = Ledger()
    for i, t in enumerate(("a", "b", "c")):
        led.published(t, ts=100.0 + i)
    led.confirmed("a")
    led.confirmed("b")  # "c" never confirmed: not judged
    done = led.completed("a", processed_ts=100.25)
    assert done == Completed("a", 0.25, skewed=False, duplicate=False)
    c = led.counts()
    assert (c.published, c.confirmed, c.completed) == (3, 2, 1)
    assert c.lost == ("b",) and c.duplicated == ()
    assert led.pending == 1


def test_ledger_second_completion_is_a_duplicate() -> None:
    led = Ledger()
    led.published("a", ts=1.0)
    led.confirmed("a")
    assert led.completed("a", 2.0) is not None
    second = led.completed("a", 3.0)
    assert second is not None and second.duplicate
    assert led.counts().duplicated == ("a",) and led.counts().lost == ()


def test_ledger_counts_foreign_ids_and_clock_skew_without_judging_them() -> None:
    led = Ledger()
    led.published("a", ts=10.0)
    led.confirmed("a")
    assert led.completed("someone-else", 11.0) is None
    done = led.completed("a", processed_ts=9.5)  # the worker's clock is behind
    assert done is not None and done.skewed and done.latency_s == 0.0
    c = led.counts()
    assert (c.foreign, c.skewed, c.lost) == (1, 1, ())  # foreign: never matched


def test_ledger_without_completions_says_so() -> None:
    led = Ledger()
    led.published("a", ts=1.0)
    led.confirmed("a")
    assert not led.any_completion  # the check then counts by the broker only


def test_ledger_is_bounded() -> None:
    led = Ledger(max_ids=2)
    led.published("a", 0.0)
    led.published("b", 0.0)
    with pytest.raises(OverflowError, match="more than 2 tasks"):
        led.published("c", 0.0)
    with pytest.raises(ValueError, match="max_ids must be"):
        Ledger(max_ids=0)


def test_ledger_matches_a_completion_that_came_before_its_publish() -> None:
    """Distributed mode: the master hears of a publish in a worker's report, which
    may come after the completion."""
    led = Ledger()
    assert led.completed("a", processed_ts=5.0) is None
    assert led.counts().foreign == 1  # unmatched so far
    matched = led.published("a", ts=4.0)
    assert matched == [Completed("a", 1.0, skewed=False, duplicate=False)]
    led.confirmed("a")
    c = led.counts()
    assert (c.completed, c.lost, c.foreign) == (1, (), 0)
    assert led.published("a", ts=4.0) == []  # a repeated report changes nothing


def test_quote_ids_lists_a_few_then_counts() -> None:
    assert quote_ids(["a", "b"]) == "a, b"
    assert quote_ids([str(i) for i in range(8)]) == "0, 1, 2, 3, 4 and 3 more"


# -- judge_load: the check's verdict from hand-built facts ---------------------------


def facts(**over: object) -> LoadFacts:
    base: dict[str, object] = dict(
        queue="tasks", drain_timeout_s=60.0, confirmed=100, publish_failures=0,
        connect_errors=0, queued_before=0, left=0, unacked=0, acked=100, entered=100,
        redelivered=0, dead=0, by_id=LedgerCounts(100, 100, 100, (), (), 0, 0))
    base.update(over)
    return LoadFacts(**base)  # type: ignore[arg-type]


def test_judge_passes_a_drained_queue_with_every_task_acked_and_completed_once() -> None:
    code, text = judge_load(facts())
    assert code == EXIT_OK
    assert "by id: 100 of 100 confirmed completed" in text


def test_judge_without_completions_says_it_counted_by_the_broker() -> None:
    code, text = judge_load(facts(by_id=None))
    assert code == EXIT_OK and "judged by the broker's counters only" in text


@pytest.mark.parametrize(("over", "why"), [
    ({"left": 5}, "did not drain"),
    ({"unacked": 3}, "did not drain"),
    ({"by_id": LedgerCounts(100, 100, 98, ("a", "b"), (), 0, 0)},
     "2 confirmed task(s) never completed, the queue empty (a, b)"),
    ({"by_id": LedgerCounts(100, 100, 100, (), ("a",), 0, 0)}, "1 task(s) processed twice (a)"),
    ({"dead": 2}, "2 task(s) dead-lettered"),
    ({"acked": 90, "by_id": None}, "10 task(s) never acked"),
    # Retried copies' acks make up the count; the nacked ones still show.
    ({"acked": 110, "entered": 120, "by_id": None},
     "10 message(s) entered the queue (or were in it"),
])
def test_judge_fails_on_the_broker_s_evidence_or_the_workers_admission(
        over: dict[str, object], why: str) -> None:
    code, text = judge_load(facts(**over))
    assert code == EXIT_VIOLATED and why in text


def test_judge_fails_on_evidence_even_with_a_problem_on_the_harness_s_side() -> None:
    # A duplicate is a duplicate, whatever else went wrong.
    f = facts(by_id=LedgerCounts(100, 100, 100, (), ("a",), 0, 0),
              problems=("a Locust worker sent no final report",))
    assert judge_load(f)[0] == EXIT_VIOLATED


@pytest.mark.parametrize(("over", "why"), [
    ({"problems": ("1 Locust worker(s) sent no final report",)}, "no final report"),
    ({"confirmed": 0, "acked": 0, "entered": 0, "by_id": None, "connect_errors": 2},
     "the broker took no connection (2 user(s)"),
    ({"confirmed": 0, "acked": 0, "entered": 0, "by_id": None}, "no publish was confirmed"),
    ({"publish_failures": 3}, "3 publish(es) failed"),
    ({"acked": None, "entered": None, "by_id": None}, "no statistics"),
    # Without completions a redelivered task may have been processed twice.
    ({"redelivered": 2, "by_id": None}, "2 redelivery(ies)"),
])
def test_judge_is_undecided_when_the_harness_cannot_tell(over: dict[str, object],
                                                         why: str) -> None:
    code, text = judge_load(facts(**over))
    assert code == EXIT_UNDECIDED and why in text


def test_body_maker_makes_task_body_s_bytes() -> None:
    make = body_maker("load-ab12cd34-", {"sleep_ms": 100})
    for n in (1, 99999):
        tid, body = make(n)
        assert tid == f"load-ab12cd34-{n}"
        assert body == task_body(tid, n, {"sleep_ms": 100})
    with pytest.raises(ValueError, match="needs escaping"):
        body_maker('bad"id-', {})


def test_ledger_two_early_completions_of_one_id_are_a_duplicate() -> None:
    """Distributed: a worker's reports never came, its completions did, twice."""
    led = Ledger()
    led.completed("a", 1.0)
    led.completed("a", 2.0)
    assert led.counts().duplicated == ("a",)


# -- the Black Friday shape and the queue's samples --------------------------------------

def test_the_black_friday_ramp_goes_up_holds_and_comes_down() -> None:
    users = [ramp_users(t, peak=10, ramp_s=10, hold_s=5) for t in range(0, 27)]
    assert users[0] == 1 and users[5] in (5, 6) and users[10] == 10 and users[14] == 10
    assert users[15] == 10 and users[20] in (5, 6) and users[24] in (1, 2)
    assert users[25] is None and users[26] is None  # over: the shape ends the run
    ups = [u or 0 for u in users[:11]]
    assert ups == sorted(ups)  # never down on the way up
    assert ramp_users(0.0, peak=3, ramp_s=0, hold_s=1) == 3  # no ramp: the peak at once
    with pytest.raises(ValueError, match="peak >= 1"):
        ramp_users(1.0, peak=0, ramp_s=1, hold_s=1)


def test_queue_samples_as_csv_and_a_summary_line() -> None:
    samples = [QueueSample(0.0, 1, 0, 0, 2), QueueSample(1.0, 4, 30, 10, 3),
               QueueSample(2.0, 2, None, None, None), QueueSample(3.5, 1, 0, 0, 3)]
    text = queue_samples_csv(samples)
    assert text.splitlines()[0] == "t_s,users,ready,unacked,consumers"
    assert text.splitlines()[2] == "1.000,4,30,10,3" and text.splitlines()[3] == "2.000,2,,,"
    line = queue_summary(samples)
    assert "4 sample(s) over 3.5 s; deepest 40 (ready 30, unacked 10) at 1 s" in line
    assert "consumers 2..3; users up to 4" in line
    assert "none read" in queue_summary([QueueSample(0.0, 1, None, None, None)])


def test_joined_sends_keep_the_bytes_in_order_through_partial_sends() -> None:
    """Three frames a task become one send; a partial send puts the rest back first;
    the buffered count drops by what went out; a frame over the bound goes alone."""
    from collections import deque

    from harness.loadgen import SEND_COALESCE_BYTES, coalescing_produce

    class Transport:
        def __init__(self, frames: list[bytes], limit: int) -> None:
            self._tx_buffers = deque(frames)
            self._tx_buffered_byte_count = sum(len(f) for f in frames)
            self._sock = object()
            self.sends: list[bytes] = []
            self.limit = limit

        def _sigint_safe_send(self, _sock: object, data: bytes) -> int:
            n = min(len(data), self.limit)
            self.sends.append(data[:n])
            return n

    frames = [b"M1", b"H1", b"B1", b"M2", b"H2", b"B2"]
    t = Transport(frames, limit=1 << 20)
    coalescing_produce(t)
    assert t.sends == [b"M1H1B1M2H2B2"] and t._tx_buffered_byte_count == 0
    t = Transport(frames, limit=5)  # the kernel takes 5 bytes a call
    coalescing_produce(t)
    assert b"".join(t.sends) == b"M1H1B1M2H2B2" and len(t.sends) == 3
    assert t._tx_buffered_byte_count == 0 and not t._tx_buffers
    big = b"x" * (SEND_COALESCE_BYTES + 1)
    t = Transport([b"a", big, b"b"], limit=1 << 20)
    coalescing_produce(t)
    assert t.sends == [b"a", big, b"b"]
