"""How long the fault close-connections takes to land, on a local broker.

    python benchmarks/bench_close_connections.py --cuts 5

A reference worker on a private RabbitMQ node (local backend); each cut closes its
connection right after the worker's previous reconnect. Figures, per cut: the time
``close_connections`` took (it finds the connection in the broker's connection
tracking, ``disable_stats``), and the baseline measured in the same run: how long
after the reconnect the statistics database (the plain ``/api/connections``, which
close-connections used before) lists the new connection, which is the least the old
path waited.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from harness.cluster.base import WorkerSpec
from harness.cluster.local import LocalCluster
from harness.history import Recorder

WORKER: Final = "w1"
LISTED_WAIT_S: Final = 15.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuts", type=int, default=5)
    args = ap.parse_args()
    if not 1 <= args.cuts <= 50:
        print("--cuts must be 1..50", file=sys.stderr)
        return 2
    closes: list[float] = []
    listed: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-cc-") as tmp:
        rec = Recorder(Path(tmp) / "history.jsonl")
        cluster = LocalCluster("bench-cc", Path(tmp), rec)
        try:
            cluster.start_broker()
            assert cluster.admin is not None
            admin = cluster.admin
            cluster.start_worker(WORKER, WorkerSpec(env={"RABBITMQ_QUEUE": "bench.cc",
                                                         "WORKER_RECONNECT_MAX_S": "1"}))
            _, conns = cluster.worker_connections(WORKER)
            deadline = time.monotonic() + LISTED_WAIT_S
            while not conns and time.monotonic() < deadline:
                time.sleep(0.05)
                _, conns = cluster.worker_connections(WORKER)
            for _ in range(args.cuts):
                old = {c.mgmt_name for c in conns}
                t0 = time.monotonic()
                cluster.close_connections(WORKER)
                closes.append(time.monotonic() - t0)
                # The reconnect, then the plain listing's first sight of it.
                new: set[str] = set()
                deadline = time.monotonic() + LISTED_WAIT_S
                while not new and time.monotonic() < deadline:
                    _, conns = cluster.worker_connections(WORKER)
                    new = {c.mgmt_name for c in conns} - old
                    time.sleep(0.02)
                t1 = time.monotonic()
                while (not new & {c.mgmt_name for c in admin.connections()}
                       and time.monotonic() < t1 + LISTED_WAIT_S):
                    time.sleep(0.05)
                listed.append(time.monotonic() - t1)
        finally:
            cluster.stop()
            rec.close()
    med_close, med_listed = statistics.median(closes), statistics.median(listed)
    print(f"close-connections over {args.cuts} cuts: median {med_close * 1000:.0f} ms "
          f"(max {max(closes) * 1000:.0f} ms)")
    print(f"baseline, the statistics listing of a new connection: median {med_listed:.2f} s "
          f"(max {max(listed):.2f} s)")
    print(f"ratio {med_close / med_listed:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
