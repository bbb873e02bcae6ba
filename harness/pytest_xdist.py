"""The plugin under pytest-xdist: one scenario's items on one xdist worker, and
the cores to itself for a timing-bound run (part of ``harness.pytest_plugin``,
which registers the hook)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from harness.flock import turnstile

# A timing-bound run waits at most this long for the cores (others' runs are
# bounded by their drain timeouts; an hour means something is stuck).
LOCK_TIMEOUT_S: Final = 3600.0


def scenario_nodeid(nodeid: str) -> str | None:
    """The scenario file part of a claim item's node id, else None."""
    file_part = nodeid.split("::", 1)[0]
    return file_part if file_part.endswith((".yaml", ".yml")) else None


@contextlib.contextmanager
def cores(*, exclusive: bool) -> Iterator[None]:
    """Hold the session's run lock: shared by ordinary runs, exclusive for a
    timing-bound one. One pair of files per test session (``PYTEST_XDIST_TESTRUNUID``
    is the same in every xdist worker); without xdist, runs are serial anyway.

    A turnstile first (taken and released by shared takers, held by an exclusive
    one while it waits), so that a stream of ordinary runs cannot starve a
    timing-bound one: once it waits, no new run starts before it."""
    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if uid is None:
        yield
        return
    base = Path(tempfile.gettempdir()) / f"rmq-harness-pytest-{uid}"
    with turnstile(str(base), exclusive=exclusive, timeout_s=LOCK_TIMEOUT_S,
                   waiting_for="the other runs of the session to leave the cores"):
        yield


# --------------------------------------------------------------------------- xdist


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Keep one scenario's items on one xdist worker whatever ``--dist`` is: under
    ``load`` and ``worksteal`` they would be scattered (and each worker would make
    the run again). ``each`` is left alone (every worker runs everything)."""
    dist = config.getvalue("dist")
    if dist not in ("load", "worksteal", "loadgroup", "loadscope", "loadfile"):
        return None
    if not (config.getoption("harness_scenarios", None) or config.getini("harness_scenarios")):
        return None  # nothing of ours collected: the user's scheduler, untouched
    from xdist.scheduler import (  # type: ignore[import-untyped]
        LoadFileScheduling,
        LoadGroupScheduling,
        LoadScopeScheduling,
    )

    base: type[Any] = {"loadscope": LoadScopeScheduling,
                       "loadfile": LoadFileScheduling}.get(dist, LoadGroupScheduling)

    class ScenarioScheduling(base):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            file_part = scenario_nodeid(nodeid)
            return file_part if file_part is not None else str(super()._split_scope(nodeid))

    return ScenarioScheduling(config, log)
