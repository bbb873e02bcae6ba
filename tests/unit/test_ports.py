"""``free_port`` never hands the same port to two harness processes within its
hold time (a port found free stays free only until someone binds it)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from harness.cluster.local import node


class Sequence(random.Random):
    def __init__(self, values: list[int]) -> None:
        super().__init__(0)
        self.values = values

    def randint(self, a: int, b: int) -> int:
        return self.values.pop(0)


def test_a_recent_pick_is_not_handed_out_again(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(node, "_port_rng", Sequence([25001, 25001, 25002]))
    first = node.free_port()
    second = node.free_port()  # the generator offers 25001 again: refused
    assert (first, second) == (25001, 25002)
    assert (tmp_path / node.PORT_LEDGER_NAME).is_file()


def test_an_old_or_broken_ledger_costs_nothing(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    (tmp_path / node.PORT_LEDGER_NAME).write_text("{not json")
    monkeypatch.setattr(node, "_port_rng", Sequence([25003]))
    assert node.free_port() == 25003
    # An entry older than the hold time is forgotten.
    (tmp_path / node.PORT_LEDGER_NAME).write_text('{"25004": 0}')
    monkeypatch.setattr(node, "_port_rng", Sequence([25004]))
    assert node.free_port() == 25004
