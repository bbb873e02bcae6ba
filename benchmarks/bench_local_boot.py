"""Private RabbitMQ node boot (the local backend), with and without the short
code path of ``harness.cluster.local.plugin_farm``, alternating in one run.

    python benchmarks/bench_local_boot.py [--runs 3]

Each boot is ``LocalCluster.start_broker()`` until the node answers AMQP and the
management API, then ``stop()``. The baseline boots from the package as it is
(71 plugin directories on the code path); the other from the farm (the 25 the
management plugin needs). Prints both medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness.cluster import local
from harness.history import Recorder


def boot_s(farm: bool, tmp: Path, n: int) -> float:
    real = local.plugin_farm
    if not farm:
        local.plugin_farm = lambda *a, **k: None
    run_dir = tmp / f"boot-{n}-{int(farm)}"
    run_dir.mkdir()
    rec = Recorder(run_dir / "history.jsonl")
    cluster = local.LocalCluster(f"bench-boot-{os.getpid()}-{n}", run_dir, rec)
    try:
        t0 = time.monotonic()
        cluster.start_broker()
        return time.monotonic() - t0
    finally:
        cluster.stop()
        rec.close()
        local.plugin_farm = real


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not 1 <= args.runs <= 20:
        ap.error("--runs must be 1..20")
    with_farm: list[float] = []
    without: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as d:
        for n in range(args.runs):
            without.append(boot_s(False, Path(d), n))
            with_farm.append(boot_s(True, Path(d), n))
            print(f"run {n + 1}: package {without[-1]:.1f} s, short code path "
                  f"{with_farm[-1]:.1f} s", flush=True)
    a, b = statistics.median(without), statistics.median(with_farm)
    print()
    print("| figure | value |")
    print("|---|---|")
    print(f"| private node boot, package as is (71 plugin dirs), median of {args.runs} | "
          f"{a:.1f} s |")
    print(f"| private node boot, short code path (plugin_farm), median of {args.runs} | "
          f"{b:.1f} s (ratio {b / a:.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
