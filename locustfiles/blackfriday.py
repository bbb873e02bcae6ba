"""The guide's "Black Friday" load: users ramp up to a peak, hold it, and ramp back
down, while the workers under test consume; the same tasks, check and exit codes
as ``taskqueue.py`` (this file runs its users), and the queue's depth, unacked
count and consumers sampled over the whole run, the drain included, into
``--queue-report`` (a plot, and the CSV beside it).

    TASKQUEUE_AMQP_PASSWORD=... locust -f locustfiles/blackfriday.py --headless \\
        --amqp-url amqp://user@staging:5672/%2F --queue tasks \\
        --peak-users 50 --ramp-s 120 --hold-s 300 --rate-per-user 20

The shape ends the run (no ``--run-time`` needed): 1 user up to ``--peak-users``
over ``--ramp-s``, the peak for ``--hold-s``, down to 1 over ``--ramp-s``. With
Kubernetes' HPA or KEDA on the queue's length, the consumers line of the plot is
the autoscaler's answer to the depth line.
"""

# Locust's event-hook decorators carry no types.
# mypy: disallow-untyped-decorators=False
from __future__ import annotations

from typing import Any

from locust import LoadTestShape, events
from taskqueue import TaskPublisher

from harness.loadgen import ramp_users

__all__ = ["BlackFriday", "TaskPublisher"]

PEAK_USERS_MAX = 10_000
PHASE_S_MAX = 86_400.0


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--peak-users", type=int, default=20,
                        help="the users at the peak (1..10000)")
    parser.add_argument("--ramp-s", type=float, default=60.0,
                        help="seconds to ramp up to the peak, and again to ramp down")
    parser.add_argument("--hold-s", type=float, default=120.0,
                        help="seconds at the peak")


@events.init.add_listener
def _check_options(environment: Any, **_: Any) -> None:
    o = environment.parsed_options
    if o is None:
        return
    if not 1 <= o.peak_users <= PEAK_USERS_MAX:
        raise SystemExit(f"blackfriday: --peak-users must be 1..{PEAK_USERS_MAX}")
    if not (0 <= o.ramp_s <= PHASE_S_MAX and 0 <= o.hold_s <= PHASE_S_MAX):
        raise SystemExit(f"blackfriday: --ramp-s and --hold-s must be 0..{PHASE_S_MAX:g}")


class BlackFriday(LoadTestShape):
    """Ramp up, hold, ramp down (``harness.loadgen.ramp_users``)."""

    def tick(self) -> tuple[int, float] | None:
        o = self.runner.environment.parsed_options if self.runner is not None else None
        if o is None:
            return None
        run_s = float(self.get_run_time())  # type: ignore[no-untyped-call]  # Locust's, unannotated
        users = ramp_users(run_s, o.peak_users, o.ramp_s, o.hold_s)
        if users is None:
            return None
        # Fast enough to follow the ramp, never slower than a user a second.
        rate = max(1.0, (o.peak_users - 1) / o.ramp_s) if o.ramp_s > 0 else float(o.peak_users)
        return users, rate
