"""Fixtures shared by the integration tests.

``broker``: a private RabbitMQ node (no Docker) for one test module. Modules that
need another broker (the docker tests, the publisher's tests) define their own
``broker`` fixture, which takes precedence over this one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest_worker import PrivateBroker


@pytest.fixture(scope="module")
def broker() -> Iterator[PrivateBroker]:
    b = PrivateBroker()
    try:
        b.start()
        yield b
    finally:
        b.stop()
