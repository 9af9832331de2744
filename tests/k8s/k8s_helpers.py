"""Helpers of the k8s tier: every job spec as a plan, the vendored CRD schemas made strict, their CEL rules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema

from gemma3_launch.loader import load_spec
from gemma3_launch.plan import Cluster, JobPlan, make_plan

REPO = Path(__file__).resolve().parents[2]
#: The five CRDs, vendored (tests/k8s/crds/README.md names each one's upstream project, path and version).
CRD_DIR = Path(__file__).parent / "crds"
PYTORCHJOB_CRD = CRD_DIR / "kubeflow.org_pytorchjobs.yaml"
CRD_FILES = {
    "PyTorchJob": PYTORCHJOB_CRD,
    "TrainJob": CRD_DIR / "trainer.kubeflow.org_trainjobs.yaml",
    "TrainingRuntime": CRD_DIR / "trainer.kubeflow.org_trainingruntimes.yaml",
    "ClusterTrainingRuntime": CRD_DIR / "trainer.kubeflow.org_clustertrainingruntimes.yaml",
    "JobSet": CRD_DIR / "jobset.x-k8s.io_jobsets.yaml",
}
#: Set to 1 to run the k8s tier without the real kube-apiserver (its tests then skip, saying so); without it, a
#: missing prerequisite (no Go/etcd to build with) FAILS the tier.
OFFLINE_ENV = "GEMMA3_K8S_OFFLINE"
TESTBED = REPO / "scripts" / "k8s_testbed"
CHART = REPO / "helm" / "gemma3-launch"
#: every example spec plus this tier's own, which turns on every k8s knob (PVCs, Kueue, tolerations, 2 nodes...)
SPECS = sorted(REPO.glob("jobspecs/*.yaml")) + sorted((Path(__file__).parent / "specs").glob("*.yaml"))


def spec_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def k8s_plan(path: Path, **sets: str) -> JobPlan:
    spec = load_spec(path, [f"{k}={v}" for k, v in sets.items()], environ={**os.environ, "SAVE_DIR": "/ckpt"})
    return make_plan(spec, Cluster("k8s"), job_id=f"{spec.name}-test")


def needs_k8s_secret(plan: JobPlan) -> bool:
    return bool(plan.secrets) and not plan.k8s.secret_name


def strict_schema(schema: Any) -> Any:
    """What apiserver fieldValidation=Strict does: objects that list properties (and do not preserve unknown
    fields) reject any other key."""
    if isinstance(schema, dict):
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for key, value in schema.items():
            if key in ("properties", "patternProperties"):
                for sub in value.values():
                    strict_schema(sub)
            elif isinstance(value, (dict, list)):
                strict_schema(value)
    elif isinstance(schema, list):
        for item in schema:
            strict_schema(item)
    return schema


def crd_errors(validator: jsonschema.Draft7Validator, document: dict) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}"
        for e in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]
