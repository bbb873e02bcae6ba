"""``--worker-env NAME=VALUE``: more environment for a brought worker (a framework's
settings, e.g. Celery's ``acks_late`` for the example app), validated early, never
a name the harness sets, carried into every worker and the rerun command, with a
secret's value never printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import credentials
from harness.cli import main
from harness.model import ClusterSpec, Scenario
from harness.options import (
    HARNESS_ENV_KEYS,
    OptionsError,
    RunOptions,
    build_options,
    parse_worker_env,
    rerun_command,
    worker_env,
    worker_identity,
    worker_spec,
)


def test_parses_names_and_values_with_equals_signs() -> None:
    assert parse_worker_env(["CELERY_ACKS_LATE=true", "OPTS=a=b", "EMPTY="]) == {
        "CELERY_ACKS_LATE": "true", "OPTS": "a=b", "EMPTY": ""}


@pytest.mark.parametrize("bad", ["NOEQUALS", "1X=2", "=v", "A-B=1"])
def test_malformed_item_is_refused(bad: str) -> None:
    with pytest.raises(OptionsError, match="NAME=VALUE"):
        parse_worker_env([bad])


def test_every_name_the_harness_sets_is_reserved() -> None:
    sc = Scenario(name="s", path="s.yaml", claims=("no-loss",),
                  cluster=ClusterSpec(extra_env={"MINE": "1"}))
    set_by_harness = set(worker_env(sc)) - {"MINE"}
    assert set_by_harness <= HARNESS_ENV_KEYS
    with pytest.raises(OptionsError, match="RABBITMQ_QUEUE: the harness sets it"):
        parse_worker_env(["RABBITMQ_QUEUE=other"])
    with pytest.raises(OptionsError, match="WORKER_ID"):
        build_options(backend="local", worker_cmd="w", worker_env={"WORKER_ID": "x"})


def test_cli_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    code = main(["run", "scenarios/no-duplicates.yaml", "--backend", "local",
                 "--worker-cmd", "w", "--worker-env", "RABBITMQ_URL=amqp://x"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--worker-env RABBITMQ_URL" in err[0]


def test_reaches_every_worker_over_the_scenario_env() -> None:
    sc = Scenario(name="s", path="s.yaml", claims=("no-loss",),
                  cluster=ClusterSpec(extra_env={"CELERY_ACKS_LATE": "false", "KEEP": "1"}))
    opts = RunOptions(worker_cmd="w", worker_env={"CELERY_ACKS_LATE": "true"})
    env = worker_spec(sc, opts, "run-1").env
    assert env["CELERY_ACKS_LATE"] == "true" and env["KEEP"] == "1"


def test_rerun_and_identity_keep_values_but_never_a_secret() -> None:
    credentials.clear()
    try:
        opts = build_options(backend="local", worker_cmd="w",
                             worker_env={"CELERY_POOL": "threads", "API_TOKEN": "s3cr3t-value"})
        sc = Scenario(name="s", path="scenarios/s.yaml", claims=("no-loss",))
        cmd = rerun_command(sc, opts, 7, "local")
        assert "--worker-env CELERY_POOL=threads" in cmd
        assert '--worker-env "API_TOKEN=$API_TOKEN"' in cmd
        assert "s3cr3t-value" not in cmd
        assert worker_identity(opts)["env"] == {"API_TOKEN": "***", "CELERY_POOL": "threads"}
        assert "s3cr3t-value" not in repr(opts)
        assert credentials.redact("token s3cr3t-value") != "token s3cr3t-value"
    finally:
        credentials.clear()


def test_a_url_with_a_password_is_a_secret_whatever_its_name() -> None:
    credentials.clear()
    try:
        opts = build_options(backend="local", worker_cmd="w", worker_env={
            "CELERY_RESULT_BACKEND": "redis://app:hunter2pw@cache:6379/0",
            "DATABASE_URL": "postgres://db.internal/app", "DB_PWD": "pa55w0rd-x"})
        sc = Scenario(name="s", path="scenarios/s.yaml", claims=("no-loss",))
        cmd = rerun_command(sc, opts, 7, "local")
        for secret in ("hunter2pw", "pa55w0rd-x", "postgres://db.internal"):
            assert secret not in cmd and secret not in str(worker_identity(opts))
        assert '--worker-env "DB_PWD=$DB_PWD"' in cmd
    finally:
        credentials.clear()


def test_the_reference_workers_planted_bugs_are_not_set_this_way() -> None:
    with pytest.raises(OptionsError, match="WORKER_BUG"):
        parse_worker_env(["WORKER_BUG=double-ack"])
