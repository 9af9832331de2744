"""The Kubeflow Trainer v2 render: every job spec gives a TrainJob + TrainingRuntime that validate strictly against
the vendored CRDs and pass their CEL rules; the restart rules restart the JobSet on the requeue exit code or a pod
disruption and fail it otherwise; names the operator derives stay within 63 characters."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
from cel_rules import all_rules, cel_errors, is_transition_rule
from k8s_helpers import CRD_FILES, REPO, SPECS, crd_errors, k8s_plan, needs_k8s_secret, spec_id

from gemma3_launch.contract import REQUEUE_EXIT_CODE
from gemma3_launch.k8s_manifests import render_objects
from gemma3_launch.render_k8s import K8sRenderError, derived_names
from gemma3_launch.render_trainjob import (
    CONTAINER_NAME,
    jobset_failure_policy,
    pod_failure_policy,
    render_trainjob_objects,
)

pytestmark = pytest.mark.k8s
KUBE_VERSION = "1.30.0"
FEATURES = REPO / "tests" / "k8s" / "specs" / "k8s_features_2node.yaml"


def _plan(path: Path, **sets: str):
    plan = k8s_plan(path, **sets)
    return k8s_plan(path, **{**sets, "k8s.secret_name": "gemma3-credentials"}) if needs_k8s_secret(plan) else plan


def _problems(crd_schemas, document: dict) -> list[str]:
    validator, schema = crd_schemas.get(document["apiVersion"], document["kind"])
    return crd_errors(validator, document) + cel_errors(schema, document)


@pytest.mark.parametrize("runtime_kind", ["TrainingRuntime", "ClusterTrainingRuntime"])
@pytest.mark.parametrize("path", SPECS, ids=spec_id)
def test_trainjob_and_runtime_validate_strictly_with_cel(path: Path, runtime_kind: str, crd_schemas) -> None:
    objects = render_trainjob_objects(_plan(path, **{"k8s.runtime_kind": runtime_kind}))
    assert [o["kind"] for o in objects] == [runtime_kind, "TrainJob"]
    for document in objects:
        assert _problems(crd_schemas, document) == []


@pytest.mark.parametrize("path", SPECS, ids=spec_id)
def test_pytorchjob_still_validates_with_cel(path: Path, crd_schemas) -> None:
    (job,) = render_objects(_plan(path, **{"k8s.api": "pytorchjob"}))
    assert _problems(crd_schemas, job) == []


@pytest.mark.parametrize("path", SPECS, ids=spec_id)
def test_the_trainer_pod_is_a_valid_kubernetes_pod(path: Path) -> None:
    """The runtime's pod template with the TrainJob's trainer merged in, as Trainer v2 builds the node pods."""
    runtime, job = render_trainjob_objects(_plan(path))
    template = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    trainer = job["spec"]["trainer"]
    (container,) = template["spec"]["containers"]
    container.update(
        image=trainer["image"], command=trainer["command"], env=trainer["env"], resources=trainer["resourcesPerNode"]
    )
    pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
    kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)


def test_every_cel_rule_of_the_vendored_crds_compiles(crd_schemas) -> None:
    """The offline checker understands every rule it may meet (transition rules are skipped on create)."""
    import celpy

    env = celpy.Environment()
    checked = 0
    for kind, path in CRD_FILES.items():
        for api_version in _versions(path):
            _, schema = crd_schemas.get(api_version, kind)
            for _where, rule in all_rules(schema):
                env.compile(rule)  # raises on a rule cel-python cannot parse
                checked += not is_transition_rule(rule)
    assert checked >= 10


def _versions(path: Path) -> list[str]:
    import yaml

    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return [f"{crd['spec']['group']}/{v['name']}" for v in crd["spec"]["versions"]]


def test_the_checks_can_fail(crd_schemas) -> None:
    """Strict schema: a misspelt field is an error. CEL: a TrainJob name with a leading digit and a second ML
    policy break the CRDs' rules, as the API server would say."""
    runtime, job = render_trainjob_objects(_plan(FEATURES))
    job["spec"]["trainer"]["numProcPerNod"] = 8
    assert any("numProcPerNod" in e for e in _problems(crd_schemas, job))
    runtime, job = render_trainjob_objects(_plan(FEATURES))
    job["metadata"]["name"] = "1" + job["metadata"]["name"]
    assert any("metadata.name" in e or "matches" in e for e in _problems(crd_schemas, job))
    runtime["spec"]["mlPolicy"]["mpi"] = {}
    assert any("Only one of the policy" in e for e in _problems(crd_schemas, runtime))


# ---- restart rules -----------------------------------------------------------------------------------------------
def _job_failure(rules: list[dict], exit_code: int | None, disrupted: bool) -> tuple[str, str] | None:
    """(reason, message) of the Job failure Kubernetes' podFailurePolicy gives a failed pod (the Job controller's
    own message formats), or None when no rule matches (the Job then fails by backoffLimit 0)."""
    for index, rule in enumerate(rules):
        on_exit = rule.get("onExitCodes")
        if on_exit and exit_code is not None:
            assert on_exit["containerName"] == CONTAINER_NAME
            inside = exit_code in on_exit["values"]
            if inside == (on_exit["operator"] == "In"):
                return (
                    "PodFailurePolicy",
                    f"Container {CONTAINER_NAME} for pod ns/p failed with exit code {exit_code} matching "
                    f"{rule['action']} rule at index {index}",
                )
        for condition in rule.get("onPodConditions") or []:
            if disrupted and condition == {"type": "DisruptionTarget", "status": "True"}:
                return (
                    "PodFailurePolicy",
                    f"Pod ns/p has condition DisruptionTarget matching {rule['action']} rule at index {index}",
                )
    return None


def _jobset_action(policy: dict, failure: tuple[str, str] | None) -> str:
    reason, message = failure or ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    for rule in policy["rules"]:
        if rule.get("onJobFailureReasons") and reason not in rule["onJobFailureReasons"]:
            continue
        patterns = rule.get("onJobFailureMessagePatterns")
        if patterns and not any(re.search(p, message) for p in patterns):
            continue
        return rule["action"]
    return "RestartJobSet"  # JobSet's default when no rule matches: restart up to maxRestarts


@pytest.mark.parametrize(
    ("exit_code", "disrupted", "expected"),
    [
        (REQUEUE_EXIT_CODE, False, "RestartJobSet"),
        (143, True, "RestartJobSet"),  # a preempted / evicted pod: SIGTERM, then the condition
        (None, True, "RestartJobSet"),
        (1, False, "FailJobSet"),
        (2, False, "FailJobSet"),
        (137, False, "FailJobSet"),
        (143, False, "FailJobSet"),
    ],
)
def test_restart_rules(exit_code: int | None, disrupted: bool, expected: str) -> None:
    plan = _plan(FEATURES)
    action = _jobset_action(
        jobset_failure_policy(plan), _job_failure(pod_failure_policy()["rules"], exit_code, disrupted)
    )
    assert action == expected


def test_restart_rules_are_rendered_into_the_runtime() -> None:
    plan = _plan(FEATURES)
    runtime, _ = render_trainjob_objects(plan)
    jobset = runtime["spec"]["template"]["spec"]
    job = jobset["replicatedJobs"][0]["template"]["spec"]
    assert job["backoffLimit"] == 0 and job["podFailurePolicy"] == pod_failure_policy()
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it
    assert jobset["failurePolicy"] == jobset_failure_policy(plan)
    assert jobset["failurePolicy"]["maxRestarts"] == plan.k8s.backoff_limit == 5
    assert [r["action"] for r in jobset["failurePolicy"]["rules"]] == ["RestartJobSet", "RestartJobSet", "FailJobSet"]


# ---- where each setting lands ------------------------------------------------------------------------------------
def test_every_k8s_knob_lands_in_the_trainjob_or_its_runtime() -> None:
    plan = _plan(FEATURES)
    runtime, job = render_trainjob_objects(plan)
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
        "name": plan.job_id,
    }
    assert runtime["metadata"]["name"] == plan.job_id and runtime["metadata"]["namespace"] == "ml-training"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and job["spec"]["suspend"] is True
    assert "kueue.x-k8s.io/queue-name" not in runtime["metadata"]["labels"]
    assert job["spec"]["activeDeadlineSeconds"] == plan.resources.time_limit_s
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["resourcesPerNode"]["limits"] == {"memory": "512Gi", "nvidia.com/gpu": 8}
    assert trainer["command"][:2] == ["/bin/bash", "-c"] and "gemma3_launch.jobwrap job" in trainer["command"][2]
    assert "PET_NODE_RANK" in trainer["command"][2]
    assert [e["name"] for e in trainer["env"] if "valueFrom" in e] == ["HF_TOKEN", "WANDB_API_KEY"]
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 2, "torch": {}}
    jobset = runtime["spec"]["template"]["spec"]
    assert jobset["ttlSecondsAfterFinished"] == 3600
    pod = jobset["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "ml-high" and pod["serviceAccountName"] == "trainer"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"} and len(pod["tolerations"]) == 2
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/dev/shm", "/checkpoints", "/root/.cache/huggingface", "/data"} == mounts
    pod_labels = jobset["replicatedJobs"][0]["template"]["spec"]["template"]["metadata"]["labels"]
    for labels in (job["metadata"]["labels"], runtime["metadata"]["labels"], pod_labels):
        assert labels["team"] == "ml-research" and labels["example.com/cost-center"] == "c-42"
    assert job["metadata"]["annotations"]["example.com/owner"] == "ML research <ml@example.com>"


def test_a_cluster_runtime_is_named_by_its_content() -> None:
    one = render_trainjob_objects(_plan(FEATURES, **{"k8s.runtime_kind": "ClusterTrainingRuntime"}))[0]
    same = render_trainjob_objects(_plan(FEATURES, **{"k8s.runtime_kind": "ClusterTrainingRuntime", "name": "other"}))[
        0
    ]
    differs = render_trainjob_objects(
        _plan(FEATURES, **{"k8s.runtime_kind": "ClusterTrainingRuntime", "k8s.shm_size": "8Gi"})
    )[0]
    assert "namespace" not in one["metadata"] and one["metadata"]["name"].startswith("gemma3-launch-")
    assert one["metadata"]["name"] == same["metadata"]["name"] != differs["metadata"]["name"]


# ---- names the operator derives ----------------------------------------------------------------------------------
def test_derived_names() -> None:
    assert derived_names("trainjob", "job", 3) == ["job", "job-node-0", "job-node-0-2"]
    assert derived_names("pytorchjob", "job", 3) == ["job-master-0", "job-worker-1"]


@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
def test_a_name_whose_derived_names_are_too_long_is_refused(api: str) -> None:
    name = "a" * 40  # the spec's own limit; + the submit suffix (21) + '-node-0-15' is over 63
    plan = k8s_plan(FEATURES, **{"name": name, "k8s.api": api, "resources.nodes": "16"})
    with pytest.raises(K8sRenderError, match=r"^name: expected at most \d+ characters .* longer than 63$"):
        render_objects(plan)
    short = k8s_plan(FEATURES, **{"name": "a" * 25, "k8s.api": api, "resources.nodes": "16"})
    assert render_objects(short)


def test_every_vendored_crd_names_its_upstream() -> None:
    readme = (CRD_FILES["TrainJob"].parent / "README.md").read_text()
    vendored = sorted(p.name for p in CRD_FILES["TrainJob"].parent.glob("*.yaml"))
    assert vendored == sorted(p.name for p in CRD_FILES.values())
    for name in vendored:
        (row,) = [line for line in readme.splitlines() if line.startswith(f"| {name} |")]
        project, upstream_path, version = (cell.strip() for cell in row.strip("|").split("|")[1:4])
        assert "/" in project and upstream_path.endswith(name) and version


@pytest.mark.parametrize("api", ["trainjob", "pytorchjob"])
def test_the_kubelet_expands_nothing_of_ours(api: str) -> None:
    """`$(VAR)` in a command or env value is expanded by the kubelet and `$$` becomes `$`: every `$` we render is
    doubled, so after the kubelet's pass the container sees exactly the entrypoint script and the spec's values."""
    from gemma3_launch.k8s_entrypoint import entrypoint_script

    hostile = "$(HOSTNAME) $$ 100%"
    plan = _plan(FEATURES, **{"k8s.api": api, "env": "{NOTE: '" + hostile + "'}"})
    job = render_objects(plan)[-1]
    if api == "trainjob":
        container = job["spec"]["trainer"]
    else:
        container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]

    def kubelet(text: str) -> str:  # the kubelet's expansion with no variable defined: only `$$` -> `$` applies
        return re.sub(r"\$\$", "$", text)

    assert kubelet(container["command"][2]) == entrypoint_script(plan, api)
    assert re.search(r"(?<!\$)\$\((?!\$)", container["command"][2].replace("$$", "")) is None
    (note,) = [e["value"] for e in container["env"] if e["name"] == "NOTE"]
    assert "$(HOSTNAME)" in plan.env["NOTE"] and kubelet(note) == plan.env["NOTE"]  # the loader's own ${VAR} aside
