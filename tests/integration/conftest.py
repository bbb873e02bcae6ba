"""Fixtures shared by the integration tests.

``cluster``: the local backend with its broker started, for one test module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from harness.cluster.local import LocalCluster
from harness.history import Recorder


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    run_dir = tmp_path_factory.mktemp(f"{module}-run")
    rec = Recorder(run_dir / "history.jsonl")
    # One run id per process and module: xdist may interleave two modules' tests.
    c = LocalCluster(f"it-{os.getpid()}-{module[:12]}", run_dir, rec)
    try:
        c.start_broker()
        yield c
    finally:
        c.stop()
        rec.close()
