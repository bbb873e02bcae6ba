"""Celery's signals are global: a test that connects receivers (``harness_events``
installs its handlers) must leave every signal as it found it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def signals_kept() -> Iterator[None]:
    """Every Celery signal's receivers as they were on entry, and its per-sender cache
    cleared (a stale cache entry would keep a removed receiver alive)."""
    from celery import signals
    from celery.utils.dispatch.signal import Signal

    every: list[Any] = [v for v in vars(signals).values() if isinstance(v, Signal)]
    saved = {s: list(s.receivers or []) for s in every}
    try:
        yield
    finally:
        for sig, receivers in saved.items():
            sig.receivers = receivers
            cache = getattr(sig, "sender_receivers_cache", None)
            if cache is not None:
                cache.clear()
