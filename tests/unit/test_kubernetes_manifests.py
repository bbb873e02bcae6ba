"""deploy/kubernetes/: every manifest validates offline against the Kubernetes
schemas of a pinned version (kubernetes-validate ships them; strict: an unknown
field is an error), and the facts the guide's claims depend on agree with the
reference worker's own configuration (worker/config.py reads the container's
env): the probes' paths and port, the grace period against the worker's SIGTERM
drain, the autoscalers' bounds and target, the queue KEDA watches. Each fact has
a mutation that must be caught."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import kubernetes_validate
import pytest
import yaml

from worker.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
# The Kubernetes version whose schemas the manifests are held to.
K8S_VERSION: Final = "1.33.0"
OVERLAYS: Final = ("hpa", "keda")
# Kubernetes' SIGKILL after the grace period must come after the worker's own drain
# bound and the time it takes to close its connection and exit.
EXIT_MARGIN_S: Final = 5.0
GUIDE_REPLICAS: Final = (3, 50)  # "Horizontal Pod Autoscaler (scale 3-50 pods)"

Doc = dict[str, Any]


def resources(directory: Path) -> list[Doc]:
    """The documents a kustomization lists, directories followed. Written by hand: a
    resource walk is all these files need, and kustomize is not a Python library."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    out: list[Doc] = []
    for item in kust["resources"]:
        path = (directory / item).resolve()
        if path.is_dir():
            out += resources(path)
        else:
            out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def worker_config(container: Doc) -> Config:
    """The worker's configuration from the container's env, as the worker reads it
    (a value from a Secret stands in as a placeholder)."""
    env = {e["name"]: str(e.get("value", "from-secret")) for e in container.get("env", ())}
    return load_config(env)


def port_of(container: Doc, port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", ())
                 if p.get("name") == port), None)


def problems(docs: list[Doc]) -> list[str]:
    """What disagrees with the worker's configuration or the guide's claims."""
    out: list[str] = []
    deployments = {d["metadata"]["name"]: d for d in of_kind(docs, "Deployment")}
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        for c in pod["containers"]:
            cfg = worker_config(c)
            for probe, path in (("readinessProbe", "/healthcheck"), ("livenessProbe", "/livez")):
                get = (c.get(probe) or {}).get("httpGet")
                if get is None:
                    out.append(f"{name}: no {probe} httpGet")
                    continue
                if get.get("path") != path:
                    out.append(f"{name}: {probe} path {get.get('path')} (the worker's is {path})")
                if port_of(c, get.get("port", "")) != cfg.health_port:
                    out.append(f"{name}: {probe} port {get.get('port')} is not the worker's "
                               f"HEALTH_PORT {cfg.health_port}")
            grace = pod.get("terminationGracePeriodSeconds", 30)
            if grace < cfg.shutdown_grace_s + EXIT_MARGIN_S:
                out.append(f"{name}: terminationGracePeriodSeconds {grace} < the worker's drain "
                           f"WORKER_SHUTDOWN_GRACE_S {cfg.shutdown_grace_s:g} + {EXIT_MARGIN_S:g}")
            for e in c.get("env", ()):
                if "PASS" in e["name"] and "value" in e:
                    out.append(f"{name}: {e['name']} is written in the manifest")
    targets: dict[str, list[str]] = {}
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        targets.setdefault(ref["name"], []).append("HorizontalPodAutoscaler")
        bounds = (hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"])
        if bounds != GUIDE_REPLICAS:
            out.append(f"HPA bounds {bounds}, the guide's are {GUIDE_REPLICAS}")
    for so in of_kind(docs, "ScaledObject"):
        ref = so["spec"]["scaleTargetRef"]
        targets.setdefault(ref["name"], []).append("ScaledObject")
        bounds = (so["spec"].get("minReplicaCount", 0), so["spec"].get("maxReplicaCount", 100))
        if bounds != GUIDE_REPLICAS:
            out.append(f"ScaledObject bounds {bounds}, the guide's are {GUIDE_REPLICAS}")
        scaled = deployments.get(ref["name"])
        queue = (worker_config(scaled["spec"]["template"]["spec"]["containers"][0]).queue
                 if scaled is not None else None)
        for t in so["spec"]["triggers"]:
            if t["type"] == "rabbitmq" and t["metadata"].get("queueName") != queue:
                out.append(f"ScaledObject watches queue {t['metadata'].get('queueName')}, the "
                           f"worker consumes {queue}")
    for target, scalers in targets.items():
        if target not in deployments:
            out.append(f"{', '.join(scalers)} targets {target}, which is not a Deployment here")
        if len(scalers) > 1:
            out.append(f"{' and '.join(scalers)} both scale {target}: they fight")
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        if not any(sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()
                   for d in deployments.values()):
            out.append(f"PodDisruptionBudget {pdb['metadata']['name']} selects no worker pod")
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_validates_against_the_pinned_kubernetes_schemas(overlay: str) -> None:
    docs = resources(KUBE / overlay)
    kinds = sorted(d["kind"] for d in docs)
    assert "Deployment" in kinds and "StatefulSet" in kinds and "PodDisruptionBudget" in kinds
    for d in docs:
        if d["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: not among Kubernetes' schemas (its facts are checked below)
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    dep = copy.deepcopy(of_kind(resources(KUBE / "base"), "Deployment")[0])
    dep["spec"]["template"]["spec"]["terminationGracePeriod"] = 40
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_manifests_agree_with_the_workers_configuration(overlay: str) -> None:
    docs = resources(KUBE / overlay)
    assert problems(docs) == []
    scalers = of_kind(docs, "HorizontalPodAutoscaler") + of_kind(docs, "ScaledObject")
    assert len(scalers) == 1  # one autoscaler per overlay


def _container(docs: list[Doc]) -> Doc:
    c: Doc = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    return c


def _set_env(docs: list[Doc], name: str, value: str) -> None:
    env = _container(docs)["env"]
    next(e for e in env if e["name"] == name)["value"] = value


MUTATIONS: Final[dict[str, tuple[str, Callable[[list[Doc]], None], str]]] = {
    "liveness on /healthcheck": (
        "hpa", lambda d: _container(d)["livenessProbe"]["httpGet"].update(path="/healthcheck"),
        "livenessProbe path /healthcheck"),
    "readiness on another port": (
        "hpa", lambda d: _container(d)["readinessProbe"]["httpGet"].update(port=8081),
        "readinessProbe port 8081 is not the worker's HEALTH_PORT 8080"),
    "the worker moved its health port": (
        "hpa", lambda d: _set_env(d, "HEALTH_PORT", "9090"),
        "port health is not the worker's HEALTH_PORT 9090"),
    "grace shorter than the drain": (
        "hpa", lambda d: _set_env(d, "WORKER_SHUTDOWN_GRACE_S", "60"),
        "terminationGracePeriodSeconds 40 < the worker's drain"),
    "KEDA on another queue": (
        "keda", lambda d: _set_env(d, "RABBITMQ_QUEUE", "go.email"),
        "ScaledObject watches queue go.logger, the worker consumes go.email"),
    "HPA and ScaledObject together": (
        "keda", lambda d: d.extend(resources(KUBE / "hpa")[-1:]),
        "HorizontalPodAutoscaler and ScaledObject both scale go-worker"),
    "HPA bounds": (
        "hpa", lambda d: of_kind(d, "HorizontalPodAutoscaler")[0]["spec"].update(maxReplicas=10),
        "HPA bounds (3, 10)"),
    "a password in the manifest": (
        "hpa", lambda d: _container(d)["env"].append({"name": "RABBITMQ_PASSWORD",
                                                      "value": "hunter2"}),
        "RABBITMQ_PASSWORD is written in the manifest"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_disagreement_with_the_worker_is_caught(mutation: str) -> None:
    overlay, mutate, expected = MUTATIONS[mutation]
    docs = copy.deepcopy(resources(KUBE / overlay))
    mutate(docs)
    found = problems(docs)
    assert any(expected in p for p in found), found
