"""spec -> JobPlan: the ONE pure function that decides what a job runs. Every backend consumes only the plan.

Keeping argv, env, resources and mounts in one place is what makes `render` honest: the local command, the sbatch
script, the PyTorchJob and the Helm values are all views of the same JobPlan, so they cannot drift apart.
`make_plan` reads no files, no clock and no environment (`${VAR}` expansion happens when the spec is loaded).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Literal

from .contract import REQUEUE_EXIT_CODE
from .plan_commands import container_args, slurm_wrapper_command, with_commands
from .plan_steps import runtime_steps, with_run_dir
from .plan_types import (
    CONTAINER_NAME_ARG,
    CONTAINER_NAME_ENV,
    Cluster,
    JobPlan,
    K8sPlan,
    MountPlan,
    PlanError,
    PvcPlan,
    ResourcePlan,
    SlurmPlan,
    Step,
    TolerationPlan,
    container_env_names,
)
from .spec import JobSpec
from .spec_time import format_time_limit

#: the names other modules and the tests import from here (the plan's types live in plan_types.py)
__all__ = [
    "CONTAINER_NAME_ARG",
    "CONTAINER_NAME_ENV",
    "Cluster",
    "JobPlan",
    "PlanError",
    "Step",
    "image_is_pinned",
    "make_plan",
    "replace_steps",
    "spec_hash",
]

#: Set on every GPU job; harmless on CPU jobs, so they are GPU-only to keep CPU renders short.
NCCL_ENV = {
    "NCCL_DEBUG": "WARN",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
}


def spec_hash(spec: JobSpec) -> str:
    """Stable hash of the validated spec (after defaults and --set): identifies 'the same job'."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def image_is_pinned(image: str) -> bool:
    return "@sha256:" in image or image.startswith("/") or image.startswith("./")


def make_plan(spec: JobSpec, cluster: Cluster, *, job_id: str | None = None) -> JobPlan:
    """The plan for `spec` on `cluster`. Pure. `job_id` defaults to `<name>-<spec hash>` so renders are stable.

    Raises PlanError (-> exit 2) when the spec does not fit the cluster.
    """
    res = spec.resources
    _check_fits(spec, cluster)
    shash = spec_hash(spec)
    jid = job_id or f"{spec.name}-{shash[:8]}"
    device: Literal["cpu", "cuda"] = "cuda" if res.gpus_per_node > 0 else "cpu"
    nproc = res.procs_per_node

    warnings: list[str] = []
    image, image_source = _image(spec, cluster, warnings)

    run_dir = posixpath.join(spec.runs_dir, jid)
    if cluster.workdir and cluster.backend != "k8s":
        run_dir = posixpath.normpath(posixpath.join(cluster.workdir, run_dir))  # records hold absolute run dirs
    files: dict[str, str] = {}
    steps, inputs, outputs = runtime_steps(
        with_run_dir(spec, run_dir), device=device, nnodes=res.nodes, nproc=nproc, run_dir=run_dir, files=files
    )

    env = _job_env(spec, image, jid, outputs, device, nproc)
    secrets = tuple(spec.secrets)
    container: tuple[str, ...] = ()
    if cluster.backend == "slurm":
        container = container_args(spec, cluster, image, run_dir, container_env_names(env, secrets))
    steps = tuple(
        with_commands(step, index, cluster, run_dir, container, res.cpus_per_task, res.gpus_per_node)
        for index, step in enumerate(steps)
    )
    return JobPlan(
        job_id=jid,
        job_name=spec.name,
        kind=spec.kind,
        backend=cluster.backend,
        steps=steps,
        env=MappingProxyType(env),
        secrets=secrets,
        resources=_resource_plan(spec),
        mounts=tuple(MountPlan(m.source, m.target, m.read_only) for m in spec.mounts),
        image=image,
        image_source=image_source,
        run_dir=run_dir,
        device=device,
        spec_hash=shash,
        requeue_exit_code=REQUEUE_EXIT_CODE,
        slurm=_slurm_plan(spec),
        k8s=_k8s_plan(spec),
        outputs=MappingProxyType(outputs),
        inputs=MappingProxyType(inputs),
        warnings=tuple(warnings),
        files=MappingProxyType(files),
        wrapper_command=slurm_wrapper_command(cluster, container) if cluster.backend == "slurm" else (),
    )


def replace_steps(plan: JobPlan, steps: tuple[Step, ...], cluster: Cluster) -> JobPlan:
    """`plan` running `steps` instead, each given its commands as make_plan gives them (tests and tools that run a
    hand-made step). Not for SLURM plans, whose step commands carry the spec's container arguments."""
    if cluster.backend == "slurm":
        raise ValueError("replace_steps: SLURM steps need the spec's container arguments (use make_plan)")
    res = plan.resources
    made = tuple(
        with_commands(step, i, cluster, plan.run_dir, (), res.cpus_per_task, res.gpus_per_node)
        for i, step in enumerate(steps)
    )
    return replace(plan, steps=made)


def _image(spec: JobSpec, cluster: Cluster, warnings: list[str]) -> tuple[str, str]:
    """The job's image and where it came from: spec container.image > --image > GEMMA3_LAUNCH_IMAGE > the default.
    On a cluster, one not pinned by digest is a warning (an error with require_pinned_image)."""
    candidates = (
        ("spec", "container.image", spec.container.image),
        ("--image", "--image", cluster.image_flag),
        ("GEMMA3_LAUNCH_IMAGE", "GEMMA3_LAUNCH_IMAGE", cluster.image_env),
        ("default", "container.image", cluster.default_image),
    )
    source, field_name, image = next((c for c in candidates if c[2]), candidates[-1])
    if not image or any(not ch.isprintable() or ch.isspace() for ch in image):
        raise PlanError(field_name, "expected an image reference without spaces or control characters")
    if cluster.backend != "local" and not image_is_pinned(image):
        msg = f"{field_name}: '{image}' is not pinned by digest (expected '...@sha256:<digest>')"
        if cluster.require_pinned_image:
            raise PlanError(field_name, msg.split(": ", 1)[1])
        warnings.append(msg)
    return image, source


def _job_env(
    spec: JobSpec, image: str, job_id: str, outputs: Mapping[str, str], device: str, nproc: int
) -> dict[str, str]:
    """The job's non-secret environment: our defaults, then the spec's (the user's word wins)."""
    env: dict[str, str] = {"PYTHONUNBUFFERED": "1", "GEMMA3_LAUNCH_IMAGE": image, "GEMMA3_LAUNCH_JOB_ID": job_id}
    if spec.kind in ("pretrain", "finetune") and outputs.get("checkpoint"):
        env["SAVE_DIR"] = outputs["checkpoint"]
    if device == "cuda":
        env.update(NCCL_ENV)
    else:
        env["OMP_NUM_THREADS"] = str(max(1, spec.resources.cpus_per_task // nproc))
    env.update(spec.env)
    return env


def _slurm_plan(spec: JobSpec) -> SlurmPlan:
    s = spec.slurm
    return SlurmPlan(
        partition=s.partition,
        account=s.account,
        qos=s.qos,
        constraint=s.constraint,
        exclusive=s.exclusive,
        extra_sbatch=tuple(s.extra_sbatch),
        signal_lead_s=s.signal_lead_s,
        max_requeues=s.max_requeues,
        master_port=s.master_port,
    )


def _resource_plan(spec: JobSpec) -> ResourcePlan:
    res = spec.resources
    return ResourcePlan(
        nodes=res.nodes,
        gpus_per_node=res.gpus_per_node,
        nproc_per_node=res.procs_per_node,
        cpus_per_task=res.cpus_per_task,
        memory=res.memory,
        time_limit=format_time_limit(res.time_limit_s),
        time_limit_s=res.time_limit_s,
        max_step_retries=res.max_step_retries,
    )


def _k8s_plan(spec: JobSpec) -> K8sPlan:
    k = spec.k8s
    return K8sPlan(
        namespace=k.namespace,
        pvcs=tuple(PvcPlan(p.claim, p.mount_path, p.read_only) for p in k.pvcs),
        secret_name=k.secret_name,
        node_selector=MappingProxyType(dict(k.node_selector)),
        tolerations=tuple(TolerationPlan(t.key, t.operator, t.value, t.effect) for t in k.tolerations),
        priority_class=k.priority_class,
        queue=k.queue,
        service_account=k.service_account,
        backoff_limit=k.backoff_limit,
        ttl_seconds_after_finished=k.ttl_seconds_after_finished,
        shm_size=k.shm_size,
        api=k.api,
        runtime_kind=k.runtime_kind,
        labels=MappingProxyType(dict(k.labels)),
        annotations=MappingProxyType(dict(k.annotations)),
    )


def _check_fits(spec: JobSpec, cluster: Cluster) -> None:
    res = spec.resources
    if res.gpus_per_node > cluster.max_gpus_per_node and cluster.backend == "local":
        raise PlanError(
            "resources.gpus_per_node",
            f"expected at most {cluster.max_gpus_per_node} (the GPUs this machine has), got {res.gpus_per_node}; to see"
            " what would run, try `render --cluster slurm` (or k8s), or `--set resources.gpus_per_node=0` (CPU)",
        )
    if res.gpus_per_node > cluster.max_gpus_per_node:
        raise PlanError(
            "resources.gpus_per_node",
            f"expected at most {cluster.max_gpus_per_node} GPUs per node on the {cluster.backend} cluster, "
            f"got {res.gpus_per_node}",
        )
    if cluster.max_nodes is not None and res.nodes > cluster.max_nodes:
        raise PlanError(
            "resources.nodes",
            f"expected at most {cluster.max_nodes} node(s) on the {cluster.backend} cluster, got {res.nodes}",
        )
