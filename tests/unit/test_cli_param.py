"""``--param CLAIM.KEY=VALUE``: a checker parameter from the command line (e.g. a
brought worker's own retry base delay), validated early, carried into the run's
parameters and its rerun command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from harness.cli import _param, main
from harness.model import Scenario
from harness.options import RunOptions, rerun_command


def test_param_parses_numbers_words_and_booleans() -> None:
    assert _param("retry-backoff.base_ms=500") == ("retry-backoff", "base_ms", 500)
    assert _param("retry-backoff.jitter=full") == ("retry-backoff", "jitter", "full")
    assert _param("health-check.up_bound_s=12.5") == ("health-check", "up_bound_s", 12.5)


@pytest.mark.parametrize("bad", ["base_ms=500", "retry-backoff.=1", "nope.base_ms=1",
                                 "retry-backoff.base_ms", "retry-backoff.x=[1, 2]"])
def test_bad_param_is_one_line_and_exit_2(bad: str, capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _param(bad)
    with pytest.raises(SystemExit) as exc:
        main(["run", str(tmp_path / "x.yaml"), "--param", bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--param" in err[0]


def test_param_is_in_the_rerun_command() -> None:
    opts = RunOptions(params={"retry-backoff": {"base_ms": 500, "jitter": "full"}})
    sc = Scenario(name="s", path="scenarios/s.yaml", claims=("retry-backoff",))
    cmd = rerun_command(sc, opts, 7, "local")
    assert "--param retry-backoff.base_ms=500 --param retry-backoff.jitter=full" in cmd
