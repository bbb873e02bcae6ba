"""The shipped JSON Schemas accept what the harness writes and refuse what it
must not write (a missing broker, an unknown verdict word, an unknown claim)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from harness import report
from harness.checkers.base import ClaimResult
from harness.model import Scenario
from harness.resultschema import errors, kind_of

BROKER = {"rabbitmq_version": "3.10.8", "erlang_version": "25.2.3", "product": "RabbitMQ",
          "queues": {"go.logger": {"type": "quorum", "durable": True,
                                   "arguments": {"x-queue-type": "quorum"}, "policy": None,
                                   "operator_policy": None, "effective_policy_definition": {},
                                   "delivery_limit": None,
                                   "dead_letter_strategy": "at-most-once",
                                   "dead_letter_exchange": "go.logger.dlx",
                                   "consumer_timeout_ms": "broker default"},
                     "go.logger.dlq": None}}


def result() -> dict[str, Any]:
    sc = Scenario(name="crash-recovery", path="scenarios/crash-recovery.yaml",
                  claims=("no-loss",))
    return report.result_payload(
        sc, "20261202-000000-abc", 42, "docker",
        [ClaimResult("no-loss", True, "all 50 accounted for", {"lost": 0})], 0, [],
        "harness run scenarios/crash-recovery.yaml --seed 42 --backend docker", None,
        1_800_000_000.0, {"reference": True, "reporting": "full", "image": "w",
                          "image_id": "sha256:ab"}, BROKER)


def test_what_the_harness_writes_validates() -> None:
    assert errors("result", result()) == []
    no_broker = {**result(), "broker": None}  # a run that ended before it could read it
    assert errors("result", no_broker) == []


@pytest.mark.parametrize(("mutate", "where"), [
    (lambda r: r.pop("broker"), "'broker' is a required property"),
    (lambda r: r.update(verdict="MAYBE"), "verdict"),
    (lambda r: r["claims"][0].update(claim="fast"), "claims/0/claim"),
    (lambda r: r["claims"][0].update(invariant="yes"), "claims/0/invariant"),
    (lambda r: r.update(schema_version=2), "schema_version"),
    (lambda r: r["broker"]["queues"]["go.logger"].pop("dead_letter_strategy"),
     "broker/queues/go.logger"),
    (lambda r: r.update(worker={}), "worker"),
])
def test_what_it_must_not_write_is_refused(mutate: Any, where: str) -> None:
    r = copy.deepcopy(result())
    mutate(r)
    found = errors("result", r)
    assert found and any(where in e for e in found), found


def test_the_audit_schema_refers_into_the_result_schema() -> None:
    audit = {"schema_version": 1, "harness_version": "0.1.0",
             "started_at": "2026-12-02T00:00:00+00:00",
             "finished_at": "2026-12-02T00:04:00+00:00",
             "worker": {"reference": True, "reporting": "full"}, "broker": BROKER,
             "verdict": "PASS", "exit_code": 0, "elapsed_s": 250.0, "backend": "docker",
             "gate": ["no-loss"], "not_gated": [], "reporting": "full",
             "claims": [{"claim": "no-loss", "guide": "No messages lost!", "verdict": "holds",
                         "guide_claim": "true", "invariant": "true", "evidence": "x",
                         "why": "", "scenarios": ["crash-recovery"], "observable": True}],
             "runs": [{"scenario": "crash-recovery", "run_dir": "runs/x", "seed": 1,
                       "exit_code": 0, "rerun": "harness run x"}]}
    assert errors("audit", audit) == []
    audit["worker"] = {"nobody": True}
    assert any("worker" in e for e in errors("audit", audit))


def test_kind_of_names_the_files() -> None:
    from pathlib import Path

    assert kind_of(Path("runs/x/result.json")) == "result"
    assert kind_of(Path("runs/audit-20261202-000000.json")) == "audit"
    assert kind_of(Path("runs/x/history.jsonl")) is None
    with pytest.raises(ValueError, match="unknown kind"):
        errors("report", {})
