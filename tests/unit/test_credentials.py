"""Credentials never leave a run: the redactor, the directory scrub, the rerun
command, and the CLI's messages about a broker URL."""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import credentials
from harness.cli import main
from harness.model import Scenario
from harness.options import RunOptions, rerun_command

SECRET = "s3cr/et p@ss"
USER = "ci-user"


@pytest.fixture(autouse=True)
def _forget() -> Iterator[None]:
    credentials.clear()
    yield
    credentials.clear()


def forms() -> list[str]:
    return [SECRET, urllib.parse.quote(SECRET, safe=""), urllib.parse.quote_plus(SECRET),
            base64.b64encode(SECRET.encode()).decode(),
            base64.b64encode(f"{USER}:{SECRET}".encode()).decode()]


def test_every_form_of_a_registered_secret_is_redacted() -> None:
    credentials.register(SECRET, USER)
    for f in forms():
        out = credentials.redact(f"url amqp://{USER}:{f}@host/ end")
        assert f not in out and credentials.MASK in out, f


def test_nothing_is_redacted_before_registration_or_for_trivial_secrets() -> None:
    assert credentials.redact(f"x {SECRET}") == f"x {SECRET}"
    credentials.register("guest", "guest")
    credentials.register("ab")
    assert not credentials.active()
    assert credentials.redact("guest:guest abc") == "guest:guest abc"


def test_scrub_tree_rewrites_only_files_that_carry_it(tmp_path: Path) -> None:
    credentials.register(SECRET, USER)
    (tmp_path / "logs").mkdir()
    dirty = tmp_path / "logs" / "worker-1.log"
    dirty.write_text(f"connecting to amqp://{USER}:{forms()[1]}@h:5672\n")
    clean = tmp_path / "history.jsonl"
    clean.write_text('{"type":"processed"}\n')
    before = clean.stat().st_mtime_ns
    assert credentials.scrub_tree(tmp_path) == []
    text = dirty.read_text()
    assert forms()[1] not in text and credentials.MASK in text
    assert clean.stat().st_mtime_ns == before


def test_rerun_command_refers_to_the_variable_never_the_url() -> None:
    sc = Scenario(name="s", path="scenarios/s.yaml", claims=("no-loss",))
    url = f"amqp://{USER}:{urllib.parse.quote(SECRET, safe='')}@broker:5672/"
    cmd = rerun_command(sc, RunOptions(broker_url=url, vhost="ci"), 7, "local")
    assert "HARNESS_BROKER_URL" in cmd and "--vhost ci" in cmd
    assert all(f not in cmd for f in forms()) and "broker:5672" not in cmd


def test_a_bad_broker_url_is_one_line_without_the_password(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    scenario = Path(__file__).resolve().parents[2] / "scenarios" / "no-duplicates.yaml"
    for url in (f"http://{USER}:{SECRET}@h/", f"amqp://{USER}:{SECRET}@h:99999/"):
        code = main(["run", str(scenario), "--out", str(tmp_path), "--backend", "local",
                     "--broker-url", url])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "--broker-url" in err[0], err
        assert SECRET not in err[0] and urllib.parse.quote(SECRET) not in err[0]


def test_vhost_without_a_broker_url_is_refused(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_BROKER_URL", raising=False)
    scenario = Path(__file__).resolve().parents[2] / "scenarios" / "no-duplicates.yaml"
    code = main(["run", str(scenario), "--out", str(tmp_path), "--vhost", "ci"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--vhost needs --broker-url" in err[0]


@pytest.mark.parametrize("secret", ['s3cr"et!', "pässwort1", "a\\b-xyz9"])
def test_json_escaped_forms_are_redacted(secret: str, tmp_path: Path) -> None:
    import json

    credentials.register(secret, USER)
    for ascii_only in (True, False):
        text = json.dumps({"x": secret, "url": f"amqp://{USER}:{secret}@h/"},
                          ensure_ascii=ascii_only)
        out = credentials.redact(text)
        assert json.dumps(secret)[1:-1] not in out and secret not in out, out
        f = tmp_path / f"r{ascii_only}.json"
        f.write_text(text, encoding="utf-8")
    credentials.scrub_tree(tmp_path)
    for f in tmp_path.iterdir():
        data = f.read_text(encoding="utf-8")
        assert secret not in data and json.dumps(secret)[1:-1] not in data, data


def test_any_amqp_url_loses_its_password_once_a_secret_is_known() -> None:
    credentials.register(SECRET, USER)
    out = credentials.redact("worker: connecting to amqps://bob:Other%2Bpw@host:5671/v")
    assert "Other" not in out and "amqps://bob:***@host:5671/v" in out


def test_the_default_vhost_is_never_the_harnesss(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    scenario = Path(__file__).resolve().parents[2] / "scenarios" / "no-duplicates.yaml"
    code = main(["run", str(scenario), "--out", str(tmp_path), "--backend", "local",
                 "--broker-url", "amqp://u:pw12345@h:5672/", "--vhost", "/"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--vhost /" in err[0]
