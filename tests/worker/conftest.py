"""Fixtures of the reference worker's own tests.

``broker``: a private RabbitMQ node (the harness's own starter, through
``tests/helpers/private_broker.py``) for one test module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from private_broker import PrivateBroker


@pytest.fixture(scope="module")
def broker() -> Iterator[PrivateBroker]:
    b = PrivateBroker("wt")
    try:
        yield b.start()
    finally:
        b.stop()
