"""The `k8s:` section of a job spec, validated as the Kubernetes API server would validate what it becomes.

Each field's grammar is the API server's own (k8s.io/apimachinery/pkg/util/validation): DNS-1123 labels and
subdomains for object names, qualified names and label values for labels, node selectors and toleration keys. A
value the server would reject is refused here, on the login node, with the field's name, instead of after the job
was queued. Names the operator derives from the job's name (pods, Services, Jobs) are checked where the job id is
known: render_k8s.check_derived_names.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from .spec_base import NonEmpty, Strict

#: DNS-1123 label: namespaces, Services; DNS-1035 label additionally starts with a letter (TrainJob, Service names).
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
#: DNS-1123 subdomain: most object names (Secrets, PVCs, PriorityClasses, ServiceAccounts).
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
#: The name part of a qualified name (label / annotation / node-selector / toleration key), and a label value.
QUALIFIED_NAME_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_MAX = 63
SUBDOMAIN_MAX = 253
#: The API server's cap on the total size of one object's annotations.
ANNOTATIONS_MAX_BYTES = 256 * 1024
#: Label and annotation keys the renderers set themselves: a spec may not override them.
RESERVED_PREFIXES = ("gemma3-launch/", "app.kubernetes.io/", "kueue.x-k8s.io/", "trainer.kubeflow.org/")


def _dns_label(value: str) -> str:
    if len(value) > LABEL_MAX or not DNS1123_LABEL.fullmatch(value):
        raise ValueError(f"expected a DNS-1123 label (lower-case letters, digits, '-'; at most {LABEL_MAX} characters)")
    return value


def _dns_subdomain(value: str) -> str:
    if len(value) > SUBDOMAIN_MAX or not DNS1123_SUBDOMAIN.fullmatch(value):
        raise ValueError(
            "expected a DNS-1123 subdomain (lower-case letters, digits, '-' and '.'; "
            f"at most {SUBDOMAIN_MAX} characters)"
        )
    return value


def qualified_name_problem(key: str) -> str | None:
    """Why `key` is not a Kubernetes qualified name ('[prefix/]name'), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > SUBDOMAIN_MAX or not DNS1123_SUBDOMAIN.fullmatch(prefix)):
        return "expected a key whose prefix (before '/') is a DNS-1123 subdomain"
    if len(name) > LABEL_MAX or not QUALIFIED_NAME_PART.fullmatch(name):
        return (
            f"expected a key name of at most {LABEL_MAX} letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a valid label value, or None."""
    if value and (len(value) > LABEL_MAX or not QUALIFIED_NAME_PART.fullmatch(value)):
        return (
            f"expected a label value of at most {LABEL_MAX} letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def _check_map(kind: str, mapping: dict[str, str], *, values_are_labels: bool) -> dict[str, str]:
    # The key is a name the user chose, never a credential: naming it is what makes the error actionable.
    for key, value in mapping.items():
        problem = qualified_name_problem(key)
        if problem:
            raise ValueError(f"{kind} key {key[:80]!r}: {problem}")
        if values_are_labels and (problem := label_value_problem(value)):
            raise ValueError(f"{key}: {problem}")  # the loader folds the key into the field's path
    return mapping


def _labels(mapping: dict[str, str]) -> dict[str, str]:
    _check_map("label", mapping, values_are_labels=True)
    _refuse_reserved("label", mapping)
    return mapping


def _annotations(mapping: dict[str, str]) -> dict[str, str]:
    _check_map("annotation", mapping, values_are_labels=False)
    _refuse_reserved("annotation", mapping)
    if sum(len(k.encode()) + len(v.encode()) for k, v in mapping.items()) > ANNOTATIONS_MAX_BYTES:
        raise ValueError(f"expected annotations of at most {ANNOTATIONS_MAX_BYTES} bytes in total")
    return mapping


def _refuse_reserved(kind: str, mapping: dict[str, str]) -> None:
    for key in mapping:
        if key.startswith(RESERVED_PREFIXES):
            raise ValueError(
                f"{kind} {key}: expected a key outside {', '.join(RESERVED_PREFIXES)} (set by the launcher)"
            )


def _node_selector(mapping: dict[str, str]) -> dict[str, str]:
    return _check_map("node selector", mapping, values_are_labels=True)


def _label_value(value: str) -> str:
    problem = label_value_problem(value)
    if problem or not value:
        raise ValueError(problem or "expected a non-empty label value")
    return value


def _abs_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("expected an absolute path (starting with '/')")
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
DnsSubdomain = Annotated[str, AfterValidator(_dns_subdomain)]
LabelValue = Annotated[str, AfterValidator(_label_value)]
AbsPath = Annotated[str, AfterValidator(_abs_path)]
#: The shared-memory mount every pod gets: a spec mount there would hide it.
SHM_PATH = "/dev/shm"


class Toleration(Strict):
    key: NonEmpty | None = Field(None, description="The taint key tolerated; none (with Exists) tolerates every taint.")
    operator: Literal["Equal", "Exists"] = Field("Equal", description="Equal: key and value match; Exists: key only.")
    value: str | None = Field(None, description="The taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="The taint effect tolerated; none: every effect."
    )

    @model_validator(mode="after")
    def _as_the_api_server(self) -> Toleration:
        if self.key is not None and (problem := qualified_name_problem(self.key)):
            raise ValueError(f"key: {problem}")
        if self.operator == "Exists" and self.value:
            raise ValueError("value: expected no value with operator 'Exists'")
        if self.key is None and self.operator != "Exists":
            raise ValueError("operator: expected 'Exists' for a toleration without a key (it matches every taint)")
        if self.value and (problem := label_value_problem(self.value)):
            raise ValueError(f"value: {problem}")
        return self


class Pvc(Strict):
    claim: DnsSubdomain = Field(description="The PersistentVolumeClaim's name (in k8s.namespace).")
    mount_path: AbsPath = Field(description="Where the claim is mounted in every pod (absolute path).")
    read_only: bool = Field(False, description="Mount the claim read-only.")


class K8s(Strict):
    api: Literal["trainjob", "pytorchjob"] = Field(
        "trainjob",
        description="trainjob: Kubeflow Trainer v2 (a TrainJob and a TrainingRuntime); pytorchjob: the Training"
        " Operator's PyTorchJob (v1 clusters).",
    )
    runtime_kind: Literal["TrainingRuntime", "ClusterTrainingRuntime"] = Field(
        "TrainingRuntime",
        description="trainjob only: a per-job namespaced TrainingRuntime, or a ClusterTrainingRuntime named by its"
        " content (jobs with the same settings share it; created once, never deleted by `cancel`).",
    )
    namespace: DnsLabel = Field("default", description="The namespace the job runs in.")
    pvcs: list[Pvc] = Field(
        default_factory=list, description="PersistentVolumeClaims mounted in every pod (run dirs, checkpoints, data)."
    )
    secret_name: DnsSubdomain | None = Field(
        None, description="The Kubernetes Secret holding the values of `secrets` (its keys are the secret names)."
    )
    node_selector: Annotated[dict[str, str], AfterValidator(_node_selector)] = Field(
        default_factory=dict, description="Pod nodeSelector labels."
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Pod tolerations.")
    priority_class: DnsSubdomain | None = Field(None, description="The pods' PriorityClass.")
    queue: LabelValue | None = Field(
        None, description="Kueue LocalQueue (label kueue.x-k8s.io/queue-name); none: no Kueue."
    )
    service_account: DnsSubdomain | None = Field(None, description="The pods' service account.")
    labels: Annotated[dict[str, str], AfterValidator(_labels)] = Field(
        default_factory=dict, description="Extra labels on the job object and its pods."
    )
    annotations: Annotated[dict[str, str], AfterValidator(_annotations)] = Field(
        default_factory=dict, description="Extra annotations on the job object and its pods (256 KiB in all)."
    )
    backoff_limit: int = Field(3, ge=0, le=100, description="Restarts of a failed job before it counts as failed.")
    ttl_seconds_after_finished: int = Field(
        86400, ge=0, description="Seconds a finished job object is kept before Kubernetes deletes it."
    )
    shm_size: Annotated[str, Field(pattern=r"^[1-9][0-9]*(Mi|Gi)$")] = Field(
        "16Gi", description="Size of the pods' /dev/shm (a memory-backed volume), e.g. 16Gi."
    )

    @field_validator("pvcs")
    @classmethod
    def _mount_paths(cls, pvcs: list[Pvc]) -> list[Pvc]:
        seen: set[str] = set()
        for index, pvc in enumerate(pvcs):
            path = pvc.mount_path.rstrip("/") or "/"
            if path == SHM_PATH:
                raise ValueError(f"entry {index}: expected a mount_path other than {SHM_PATH} (the pod's shm)")
            if path in seen:
                raise ValueError(f"entry {index}: expected each mount_path once, {path} is mounted twice")
            seen.add(path)
        return pvcs
