"""``python -m worker``: the reference task worker (worker contract v1).

Exit codes: 0 after SIGTERM/SIGINT (also when tasks were still running after
the grace period: they stay unacked and the broker requeues them), 2 for a bad
configuration or a topology that conflicts with what the broker already has.
"""

from __future__ import annotations

import logging
import os
import sys

from worker.bugs import HEALTH_ALWAYS_OK
from worker.config import ConfigError, load_config
from worker.consumer import Worker
from worker.events import EventEmitter
from worker.health import HealthServer, HealthState


def main() -> int:
    level = (os.environ.get("WORKER_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(
        stream=sys.stderr,
        level=level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # we report connection errors ourselves
    try:
        cfg = load_config(os.environ)
    except ConfigError as exc:
        print(f"worker: bad configuration: {exc}", file=sys.stderr, flush=True)
        return 2
    if cfg.bug:
        logging.getLogger("worker").warning("planted bug WORKER_BUG=%s is on", cfg.bug)
    state = HealthState(cfg.worker_id, stale_s=cfg.liveness_stale_s)
    server: HealthServer | None = None
    if cfg.health_port:
        try:
            server = HealthServer(state, cfg.health_port,
                                  always_ok=cfg.bug == HEALTH_ALWAYS_OK)
        except OSError as exc:
            print(f"worker: cannot listen on HEALTH_PORT={cfg.health_port}: {exc.strerror} "
                  "(pick a free port, or 0 to disable)", file=sys.stderr, flush=True)
            return 2
        server.start()
    worker = Worker(cfg, EventEmitter(cfg.worker_id, mode=cfg.events), state)
    worker.install_signal_handlers()
    code = worker.run()
    if server is not None:
        server.stop()
    if worker.in_flight:
        # Pool threads still run abandoned tasks; interpreter exit would join them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
