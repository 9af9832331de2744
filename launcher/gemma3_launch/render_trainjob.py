"""JobPlan -> Kubeflow Trainer v2 objects: a TrainJob and the TrainingRuntime it references. Pure.

Where each setting lands (docs/CONTRACTS.md has the table):
- the TrainJob carries what its API can: image, command (the job wrapper's entrypoint), env and secretKeyRefs,
  nodes x processes per node, resources per node, the time limit (activeDeadlineSeconds), the Kueue queue label
  with `suspend`, our labels and annotations;
- the per-job TrainingRuntime (name = the job id; or, with `k8s.runtime_kind: ClusterTrainingRuntime`, one
  cluster-scoped runtime named by its content, shared by every job with the same settings) carries the rest: the
  torch ML policy, /dev/shm and the volumes, node selector, tolerations, priority class, service account, the
  JobSet's ttlSecondsAfterFinished, and the restart rules.

Restart rules. The training container's exit code REQUEUE_EXIT_CODE (the runtime saved after SIGTERM) and a pod
disruption (preemption, eviction, node drain: condition DisruptionTarget) restart the WHOLE JobSet, so every node
rejoins one static rendezvous and training resumes from the last checkpoint; any other failure fails the job at
once. The child Job's podFailurePolicy turns each case into a Job failure whose message names the matching rule,
and the JobSet's failurePolicy rules match those messages; `k8s.backoff_limit` bounds the restarts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .contract import REQUEUE_EXIT_CODE
from .plan import JobPlan
from .render_k8s import (
    APP_NAME,
    LABEL_APP,
    LABEL_KUEUE_QUEUE,
    check_plan,
    container_command,
    container_env,
    job_annotations,
    job_labels,
    pod_labels,
    pod_scheduling,
    resources,
    volume_mounts,
    volumes,
)

GROUP = "trainer.kubeflow.org"
API_VERSION = f"{GROUP}/v1alpha1"
KIND = "TrainJob"
#: Trainer v2's torch policy injects PET_* into the container named `node` of the replicated job `node`.
CONTAINER_NAME = "node"
REPLICATED_JOB = "node"
#: The label Trainer v2 uses to find the trainer step of a runtime.
LABEL_ANCESTOR = f"{GROUP}/trainjob-ancestor-step"
LABEL_FRAMEWORK = f"{GROUP}/framework"
#: The controller that reconciles the TrainJob (Kueue's MultiKueue would be the other choice).
MANAGED_BY = f"{GROUP}/trainjob-controller"
#: The labels JobSet and the Job controller put on every pod (`logs` selects by them).
LABEL_JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
LABEL_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"

#: podFailurePolicy rule indices; the JobSet rules match the Job's failure message, which names the index.
RULE_REQUEUE_EXIT, RULE_DISRUPTION, RULE_OTHER_EXIT = 0, 1, 2
#: The Job failure reason Kubernetes sets when a podFailurePolicy FailJob rule matched.
POD_FAILURE_POLICY_REASON = "PodFailurePolicy"


def pod_failure_policy() -> dict[str, Any]:
    """The child Job's rules: every pod failure fails the Job at once, with a message naming the rule."""
    rules = [  # in RULE_* order: the first rule that matches decides
        {
            "action": "FailJob",
            "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "In", "values": [REQUEUE_EXIT_CODE]},
        },
        {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {
            "action": "FailJob",
            "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "NotIn", "values": [0, REQUEUE_EXIT_CODE]},
        },
    ]
    return {"rules": rules}


def jobset_failure_policy(plan: JobPlan) -> dict[str, Any]:
    """The JobSet's rules over the Job failures above: requeue exit code / disruption -> restart all, else fail.

    The patterns are the messages the Job controller writes for a FailJob rule (pkg/controller/job/
    pod_failure_policy.go): 'Container node for pod NS/NAME failed with exit code 199 matching FailJob rule at
    index 0' and 'Pod NS/NAME has condition DisruptionTarget matching FailJob rule at index 1'."""
    return {
        "maxRestarts": plan.k8s.backoff_limit,
        "restartStrategy": "Recreate",
        "rules": [
            {
                "name": "requeue-exit-code",
                "action": "RestartJobSet",
                "onJobFailureReasons": [POD_FAILURE_POLICY_REASON],
                "onJobFailureMessagePatterns": [
                    f"failed with exit code {REQUEUE_EXIT_CODE} matching FailJob rule at index {RULE_REQUEUE_EXIT}$"
                ],
            },
            {
                "name": "pod-disruption",
                "action": "RestartJobSet",
                "onJobFailureReasons": [POD_FAILURE_POLICY_REASON],
                "onJobFailureMessagePatterns": [
                    f"has condition DisruptionTarget matching FailJob rule at index {RULE_DISRUPTION}$"
                ],
            },
            {"name": "any-other-failure", "action": "FailJobSet"},
        ],
    }


def runtime_spec(plan: JobPlan) -> dict[str, Any]:
    """The TrainingRuntime's spec: the torch policy and the JobSet template every pod of the job comes from."""
    container = {
        "name": CONTAINER_NAME,
        "image": plan.image,
        "imagePullPolicy": "IfNotPresent",
        "volumeMounts": volume_mounts(plan),
    }
    pod_spec = {"restartPolicy": "Never", "containers": [container], "volumes": volumes(plan), **pod_scheduling(plan)}
    job_template = {
        "metadata": {"labels": {LABEL_ANCESTOR: "trainer"}},
        "spec": {
            "backoffLimit": 0,  # every failure goes to podFailurePolicy -> the JobSet's rules
            "podFailurePolicy": pod_failure_policy(),
            "template": {"metadata": {"labels": _runtime_pod_labels(plan)}, "spec": pod_spec},
        },
    }
    return {
        "mlPolicy": {"numNodes": plan.resources.nodes, "torch": {}},
        "template": {
            "spec": {
                "ttlSecondsAfterFinished": plan.k8s.ttl_seconds_after_finished,
                "failurePolicy": jobset_failure_policy(plan),
                # groupName: the CRD default, explicit so the stored object equals the rendered one
                "replicatedJobs": [
                    {"name": REPLICATED_JOB, "groupName": "default", "replicas": 1, "template": job_template}
                ],
            }
        },
    }


def _runtime_pod_labels(plan: JobPlan) -> dict[str, str]:
    """A per-job runtime labels its pods with the job; a shared cluster runtime cannot (JobSet's own labels,
    jobset.sigs.k8s.io/jobset-name, still name the job on every pod)."""
    return pod_labels(plan) if plan.k8s.runtime_kind == "TrainingRuntime" else {LABEL_APP: APP_NAME}


def runtime_name(plan: JobPlan) -> str:
    """Per-job runtime: the job id. Cluster runtime: `gemma3-launch-<hash of its spec>`, shared by equal jobs."""
    if plan.k8s.runtime_kind == "TrainingRuntime":
        return plan.job_id
    digest = hashlib.sha256(json.dumps(runtime_spec(plan), sort_keys=True).encode()).hexdigest()[:16]
    return f"gemma3-launch-{digest}"


def render_runtime(plan: JobPlan) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": runtime_name(plan), "labels": {LABEL_FRAMEWORK: "torch"}}
    if plan.k8s.runtime_kind == "TrainingRuntime":  # per job: found by the job's labels (not Kueue's: not a job)
        metadata["namespace"] = plan.k8s.namespace
        metadata["labels"].update({k: v for k, v in job_labels(plan).items() if k != LABEL_KUEUE_QUEUE})
    return {"apiVersion": API_VERSION, "kind": plan.k8s.runtime_kind, "metadata": metadata, "spec": runtime_spec(plan)}


def render_trainjob(plan: JobPlan) -> dict[str, Any]:
    """The TrainJob `submit --cluster k8s` creates for `plan` (the default `k8s.api: trainjob`)."""
    check_plan(plan)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": plan.job_id,
            "namespace": plan.k8s.namespace,
            "labels": job_labels(plan),
            "annotations": job_annotations(plan),
        },
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": plan.k8s.runtime_kind, "name": runtime_name(plan)},
            "managedBy": MANAGED_BY,  # the CRD default, explicit so the stored object equals the rendered one
            "suspend": bool(plan.k8s.queue),
            "activeDeadlineSeconds": plan.resources.time_limit_s,
            "trainer": {
                "image": plan.image,
                "command": container_command(plan, "trainjob"),
                "env": container_env(plan),
                "numNodes": plan.resources.nodes,
                "numProcPerNode": plan.resources.nproc_per_node,
                "resourcesPerNode": resources(plan),
            },
        },
    }


def render_trainjob_objects(plan: JobPlan) -> list[dict[str, Any]]:
    """[runtime, TrainJob]: the order `submit` creates them in (the TrainJob's webhook looks the runtime up)."""
    return [render_runtime(plan), render_trainjob(plan)]
