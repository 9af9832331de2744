"""spec -> JobPlan: the ONE pure function that decides what a job runs. Every backend consumes only the plan.

Keeping argv, env, resources and mounts in one place is what makes `render` honest: the local command, the sbatch
script, the PyTorchJob and the Helm values are all views of the same JobPlan, so they cannot drift apart.
`make_plan` reads no files, no clock and no environment (`${VAR}` expansion happens when the spec is loaded).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shlex
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from types import MappingProxyType
from typing import Literal

from .container_image import DEFAULT_IMAGE
from .contract import REQUEUE_EXIT_CODE
from .spec import JobSpec, format_time_limit

Backend = Literal["local", "slurm", "k8s"]

#: The runtime's entry point; under torchrun it is run as a module.
RUNTIME_EXE = "gemma3-runtime"
RUNTIME_MODULE = "gemma3_runtime.cli.main"
#: how the runtime names the SFT dataset shipped inside its package (training/recipes.py BUNDLED_SFT_DATASET).
BUNDLED_DATASET = "bundled:wordcode"

#: The job wrapper module each step's command runs (`node` per node, `rank` per torchrun worker).
JOBWRAP_MODULE = "gemma3_launch.jobwrap"
#: The one run-time value a SLURM step's command holds as a reference: the container name, unique per job AND attempt
#: (`gemma3-<SLURM job id>-<restart count>`, exported by the batch script). The job wrapper substitutes it in exactly
#: this argv element and nowhere else, so no user text is ever expanded.
CONTAINER_NAME_ENV = "GEMMA3_CONTAINER_NAME"
CONTAINER_NAME_ARG = f"--container-name=${{{CONTAINER_NAME_ENV}}}"
#: torchrun reads its rendezvous from these variables (torch.distributed.run takes every option from PET_<OPTION>);
#: the node wrapper sets them from the scheduler (SLURM_NODEID, the batch script's MASTER_ADDR / MASTER_PORT), and
#: Kubeflow Trainer v2 injects them itself. So the torchrun line in the plan is complete as printed.
RENDEZVOUS_ENV = ("PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
#: Values longer than this (bytes), or holding a line break, travel as a file in the run dir instead of an argument.
MAX_ARG_BYTES = 1024
#: What a SLURM container step receives from the batch environment besides the plan's env and the named secrets.
SLURM_ESSENTIAL_ENV = ("MASTER_ADDR", "MASTER_PORT", CONTAINER_NAME_ENV, "SUBMITIT_EXECUTOR")

#: Set on every GPU job; harmless on CPU jobs, so they are GPU-only to keep CPU renders short.
NCCL_ENV = {
    "NCCL_DEBUG": "WARN",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
}


class PlanError(ValueError):
    """The spec is valid on its own but not for this cluster (e.g. more GPUs than a node has). `field` is dotted."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Cluster:
    """What the plan needs to know about the target: the backend and its limits. Built by the CLI, not read here."""

    backend: Backend
    max_gpus_per_node: int = 8
    max_nodes: int | None = None
    #: a tag-only image is an error instead of a warning (`--require-pinned-image`).
    require_pinned_image: bool = False
    #: image used when the spec names none (containers/image.env, via the generated container_image module).
    default_image: str = DEFAULT_IMAGE
    #: `--image IMAGE` on the command line and GEMMA3_LAUNCH_IMAGE in the submitting environment (read at the CLI
    #: edge); _image ranks them: spec container.image > --image > GEMMA3_LAUNCH_IMAGE > default_image.
    image_flag: str | None = None
    image_env: str | None = None
    #: the submitting directory (absolute) for local / SLURM: relative run dirs are resolved against it and it is the
    #: container's working directory. Empty: run dirs stay as written (pure renders in tests).
    workdir: str = ""
    #: the Python that runs the job wrapper: the image's own `python3` on clusters; the launcher's on `local`.
    python: str = "python3"


@dataclass(frozen=True)
class Step:
    """One `gemma3-runtime` invocation, run on `nnodes` nodes x `nproc_per_node` processes."""

    name: str
    args: tuple[str, ...]
    nnodes: int = 1
    nproc_per_node: int = 1
    #: the step handles SIGTERM/SIGUSR2 by saving and exiting with REQUEUE_EXIT_CODE (training only).
    preemptible: bool = False
    #: what the job wrapper executes for this step (SLURM: the srun line; elsewhere the node wrapper itself).
    command: tuple[str, ...] = ()
    #: what the node wrapper executes on each node: `gemma3-runtime ...`, or torchrun (rendezvous from RENDEZVOUS_ENV).
    node_command: tuple[str, ...] = ()

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def runtime_argv(self) -> tuple[str, ...]:
        """Single-process form: `gemma3-runtime <args>`."""
        return (RUNTIME_EXE, *self.args)

    def launch_argv(
        self, *, node_rank: str = "0", master_addr: str = "127.0.0.1", master_port: str = "29500"
    ) -> tuple[str, ...]:
        """The command one node runs: plain for a 1-process step, else torchrun with a static rendezvous.

        Static (not c10d elastic) rendezvous: ranks are node_rank * nproc + local_rank, deterministic and testable;
        the scheduler (SLURM / PyTorchJob) already owns membership. node_rank / master_addr may be shell expressions
        such as "$SLURM_NODEID" that the backend quotes accordingly.
        """
        if self.world_size == 1:
            return self.runtime_argv
        return (
            "torchrun",
            f"--nnodes={self.nnodes}",
            f"--nproc-per-node={self.nproc_per_node}",
            f"--node-rank={node_rank}",
            f"--master-addr={master_addr}",
            f"--master-port={master_port}",
            "-m",
            RUNTIME_MODULE,
            *self.args,
        )

    def shell(self) -> str:
        return shlex.join(self.runtime_argv)


@dataclass(frozen=True)
class MountPlan:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class ResourcePlan:
    nodes: int
    gpus_per_node: int
    nproc_per_node: int
    cpus_per_task: int
    memory: str | None
    time_limit: str  # canonical [D-]HH:MM:SS
    time_limit_s: int
    max_step_retries: int = 2  # in-allocation retries of a killed training step (jobwrap)


@dataclass(frozen=True)
class SlurmPlan:
    partition: str | None
    account: str | None
    qos: str | None
    constraint: str | None
    exclusive: bool
    extra_sbatch: tuple[str, ...]
    signal_lead_s: int
    max_requeues: int
    master_port: int | None  # None: derived from the SLURM job id at run time


@dataclass(frozen=True)
class PvcPlan:
    claim: str
    mount_path: str
    read_only: bool = False


@dataclass(frozen=True)
class TolerationPlan:
    key: str | None
    operator: str
    value: str | None
    effect: str | None


@dataclass(frozen=True)
class K8sPlan:
    namespace: str
    pvcs: tuple[PvcPlan, ...]
    secret_name: str | None
    node_selector: Mapping[str, str]
    tolerations: tuple[TolerationPlan, ...]
    priority_class: str | None
    queue: str | None
    service_account: str | None
    backoff_limit: int
    ttl_seconds_after_finished: int
    shm_size: str
    api: str = "trainjob"  # trainjob (Kubeflow Trainer v2) | pytorchjob (Training Operator v1)
    runtime_kind: str = "TrainingRuntime"
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class JobPlan:
    job_id: str  # unique per submission: also the run-dir name and the k8s object name
    job_name: str  # the spec's name
    kind: str
    backend: Backend
    steps: tuple[Step, ...]
    env: Mapping[str, str]  # non-secret only
    secrets: tuple[str, ...]  # NAMES; values come from the submitting env (local/slurm) or a k8s Secret
    resources: ResourcePlan
    mounts: tuple[MountPlan, ...]
    image: str
    run_dir: str
    device: Literal["cpu", "cuda"]
    spec_hash: str
    requeue_exit_code: int
    slurm: SlurmPlan
    k8s: K8sPlan
    #: outputs this job produces (checkpoint dir, exported HF dir) and what it reads (lineage).
    outputs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    inputs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    warnings: tuple[str, ...] = ()
    #: files written into the run dir before the backend sees the job: {relative path: text}. Long or multi-line
    #: values (a multi-line prompt) travel this way; the steps' arguments name them by absolute path.
    files: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: SLURM: the command that runs the job wrapper inside the container (srun ... python3); the batch script runs it.
    wrapper_command: tuple[str, ...] = ()
    #: where `image` came from: "spec" | "--image" | "GEMMA3_LAUNCH_IMAGE" | "default" (render says which won).
    image_source: str = "default"

    def to_dict(self) -> dict:
        """JSON-able view (plan.json in the run dir; `render --format plan`)."""
        return _jsonable(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> JobPlan:
        """The plan back from its JSON view (plan.json), typed: what the job wrapper reads. Raises ValueError."""
        return _from_jsonable(cls, data, "plan")

    @property
    def export_names(self) -> tuple[str, ...]:
        """The environment allowlist a container step gets: the plan's env, the named secrets, the essentials."""
        return tuple(dict.fromkeys([*self.env, *self.secrets, *SLURM_ESSENTIAL_ENV]))


def _jsonable(obj: object) -> object:
    if is_dataclass(obj):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [_jsonable(v) for v in obj]
    return obj


def _from_jsonable(kind: object, value: object, where: str) -> object:
    """Inverse of `_jsonable` for the plan's types (dataclasses, tuples, mappings, optionals, scalars)."""
    if is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected an object")
        hints = typing.get_type_hints(kind)
        known = {f.name for f in fields(kind)}
        args = {k: _from_jsonable(hints[k], v, f"{where}.{k}") for k, v in value.items() if k in known}
        try:
            return kind(**args)  # type: ignore[operator]
        except TypeError as exc:
            raise ValueError(f"{where}: {exc}") from None
    origin, params = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None:
            return None
        return _from_jsonable(next(p for p in params if p is not type(None)), value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list")
        return tuple(_from_jsonable(params[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or kind is Mapping:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected an object")
        return MappingProxyType({str(k): _from_jsonable(params[1], v, f"{where}.{k}") for k, v in value.items()})
    if origin is Literal:
        if value not in params:
            raise ValueError(f"{where}: expected one of {', '.join(map(str, params))}")
        return value
    if kind in (int, str, bool) and not isinstance(value, kind):
        raise ValueError(f"{where}: expected {kind.__name__}")  # type: ignore[union-attr]
    return value


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
    steps, inputs, outputs = _steps(
        _with_run_dir(spec, run_dir), device=device, nnodes=res.nodes, nproc=nproc, run_dir=run_dir, files=files
    )

    env = _job_env(spec, image, jid, outputs, device, nproc)
    secrets = tuple(spec.secrets)
    export_names = tuple(dict.fromkeys([*env, *secrets, *SLURM_ESSENTIAL_ENV]))
    container = _container_args(spec, cluster, image, run_dir, export_names) if cluster.backend == "slurm" else ()
    steps = tuple(
        _with_commands(step, index, cluster, run_dir, container, res.cpus_per_task, res.gpus_per_node)
        for index, step in enumerate(steps)
    )
    # SLURM: the batch script runs the job wrapper in the container too; it shares the allocation with its steps
    wrapper_command = (
        ("srun", "--nodes=1", "--ntasks=1", "--overlap", "--kill-on-bad-exit=1", *container, cluster.python)
        if cluster.backend == "slurm"
        else ()
    )

    return JobPlan(
        job_id=jid,
        job_name=spec.name,
        kind=spec.kind,
        backend=cluster.backend,
        steps=steps,
        env=MappingProxyType(env),
        secrets=secrets,
        resources=ResourcePlan(
            nodes=res.nodes,
            gpus_per_node=res.gpus_per_node,
            nproc_per_node=nproc,
            cpus_per_task=res.cpus_per_task,
            memory=res.memory,
            time_limit=format_time_limit(res.time_limit_s),
            time_limit_s=res.time_limit_s,
            max_step_retries=res.max_step_retries,
        ),
        mounts=tuple(MountPlan(m.source, m.target, m.read_only) for m in spec.mounts),
        image=image,
        image_source=image_source,
        run_dir=run_dir,
        device=device,
        spec_hash=shash,
        requeue_exit_code=REQUEUE_EXIT_CODE,
        slurm=_slurm_plan(spec),
        k8s=K8sPlan(
            namespace=spec.k8s.namespace,
            pvcs=tuple(PvcPlan(p.claim, p.mount_path, p.read_only) for p in spec.k8s.pvcs),
            secret_name=spec.k8s.secret_name,
            node_selector=MappingProxyType(dict(spec.k8s.node_selector)),
            tolerations=tuple(TolerationPlan(t.key, t.operator, t.value, t.effect) for t in spec.k8s.tolerations),
            priority_class=spec.k8s.priority_class,
            queue=spec.k8s.queue,
            service_account=spec.k8s.service_account,
            backoff_limit=spec.k8s.backoff_limit,
            ttl_seconds_after_finished=spec.k8s.ttl_seconds_after_finished,
            shm_size=spec.k8s.shm_size,
            api=spec.k8s.api,
            runtime_kind=spec.k8s.runtime_kind,
            labels=MappingProxyType(dict(spec.k8s.labels)),
            annotations=MappingProxyType(dict(spec.k8s.annotations)),
        ),
        outputs=MappingProxyType(outputs),
        inputs=MappingProxyType(inputs),
        warnings=tuple(warnings),
        files=MappingProxyType(files),
        wrapper_command=wrapper_command,
    )


def replace_steps(plan: JobPlan, steps: tuple[Step, ...], cluster: Cluster) -> JobPlan:
    """`plan` running `steps` instead, each given its commands as make_plan gives them (tests and tools that run a
    hand-made step). Not for SLURM plans, whose step commands carry the spec's container arguments."""
    if cluster.backend == "slurm":
        raise ValueError("replace_steps: SLURM steps need the spec's container arguments (use make_plan)")
    res = plan.resources
    made = tuple(
        _with_commands(step, i, cluster, plan.run_dir, (), res.cpus_per_task, res.gpus_per_node)
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


def _container_args(
    spec: JobSpec, cluster: Cluster, image: str, run_dir: str, export_names: tuple[str, ...]
) -> tuple[str, ...]:
    """pyxis options shared by every container step of a SLURM job: one image, one container name per job and
    attempt (steps reuse the imported container), the run dir / working dir / spec mounts, and an environment
    allowlist (`--export` names what srun passes; `--container-env` lets those win over the image's own values)."""
    workdir = cluster.workdir or "."
    mounts = [f"{run_dir}:{run_dir}"]
    if cluster.workdir:
        mounts.append(f"{workdir}:{workdir}")
    mounts += [f"{m.source}:{m.target}" + (":ro" if m.read_only else "") for m in spec.mounts]
    for path in (run_dir, workdir, *(m.source for m in spec.mounts), *(m.target for m in spec.mounts)):
        if "," in path or ":" in path:
            raise PlanError("mounts", f"expected paths without ',' or ':' on SLURM (pyxis mount syntax), got {path!r}")
    names = ",".join(export_names)
    return (
        f"--export={names}",
        f"--container-image={image}",
        CONTAINER_NAME_ARG,
        f"--container-mounts={','.join(dict.fromkeys(mounts))}",
        f"--container-workdir={workdir}",
        f"--container-env={names}",
        "--no-container-mount-home",
    )


def _with_commands(
    step: Step, index: int, cluster: Cluster, run_dir: str, container: tuple[str, ...], cpus: int, gpus: int
) -> Step:
    """The step with the exact commands that run it: the node command, and what the job wrapper executes."""
    # a local job runs the launcher's own Python environment, which need not be on PATH: its console scripts by module
    local = cluster.backend == "local"
    if step.world_size == 1:
        node_command = (cluster.python, "-m", RUNTIME_MODULE, *step.args) if local else step.runtime_argv
    else:
        node_command = (
            *((cluster.python, "-m", "torch.distributed.run") if local else ("torchrun",)),
            f"--nnodes={step.nnodes}",
            f"--nproc-per-node={step.nproc_per_node}",
            "-m",
            JOBWRAP_MODULE,
            "rank",
            RUNTIME_MODULE,
            *step.args,
        )
    node = (cluster.python, "-m", JOBWRAP_MODULE, "node", run_dir, str(index))
    if cluster.backend != "slurm":
        command = node
    else:
        srun = ["srun", f"--nodes={step.nnodes}", f"--ntasks={step.nnodes}", "--ntasks-per-node=1"]
        srun.append(f"--cpus-per-task={cpus}")
        if gpus:
            srun.append(f"--gpus-per-node={gpus}")
        command = (*srun, "--kill-on-bad-exit=1", "--overlap", *container, *node)
    return Step(step.name, step.args, step.nnodes, step.nproc_per_node, step.preemptible, command, node_command)


#: In checkpoint / export paths: this submission's run directory, so every submission gets fresh outputs
#: (the CPU demo re-runs from scratch) while a requeued job keeps resuming from its own checkpoints.
RUN_DIR_TOKEN = "{run_dir}"


def _with_run_dir(spec: JobSpec, run_dir: str) -> JobSpec:
    def sub(path: str | None) -> str | None:
        return path.replace(RUN_DIR_TOKEN, run_dir) if path else path

    ck = spec.checkpoint.model_copy(
        update={"dir": sub(spec.checkpoint.dir), "pretrained": sub(spec.checkpoint.pretrained)}
    )
    update: dict = {"checkpoint": ck}
    if spec.export:
        update["export"] = spec.export.model_copy(update={"hf_path": sub(spec.export.hf_path)})
    return spec.model_copy(update=update)


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


def _data_overrides(spec: JobSpec) -> list[str]:
    """The spec's data section as the runtime's overrides (training/config.py DataConfig: kind, data_paths, text_key,
    hf_split, hf_subset, cache_dir)."""
    data = spec.data
    if data is None:
        return []
    if data.format == "mock":
        return ["data.kind=mock"]
    kind = "sft" if data.format == "bundled" else data.format
    paths = [BUNDLED_DATASET] if data.format == "bundled" else list(data.paths)
    out = [f"data.kind={kind}", f"data.data_paths={json.dumps(paths)}"]  # JSON is YAML: safe for odd paths
    runtime_names = {"text_key": "text_key", "split": "hf_split", "subset": "hf_subset", "cache_dir": "cache_dir"}
    for spec_name, runtime_name in runtime_names.items():
        value = getattr(data, spec_name)
        if value is not None:
            out.append(f"data.{runtime_name}={json.dumps(value)}")  # a JSON string: a YAML string, never a number
    return out


def _train_overrides(spec: JobSpec) -> list[str]:
    """The train step's overrides from the spec's sections, then the user's own (last: they win)."""
    return [*_data_overrides(spec), *_wandb_overrides(spec), *spec.overrides]


def _wandb_overrides(spec: JobSpec) -> list[str]:
    """The spec's wandb section as the runtime's logging overrides (training/config.py LoggingConfig wandb_*); the
    run name defaults to the spec's name. Values are JSON (a YAML string / list): never read as numbers or flags."""
    w = spec.wandb
    if w is None:
        return []
    out = [f"logging.wandb_exp_name={json.dumps(w.name or spec.name)}"]
    if w.project:
        out.append(f"logging.wandb_project={json.dumps(w.project)}")
    if w.entity:
        out.append(f"logging.wandb_entity={json.dumps(w.entity)}")
    if w.tags:
        out.append(f"logging.wandb_tags={json.dumps(list(w.tags))}")
    return out


def _steps(
    spec: JobSpec, *, device: str, nnodes: int, nproc: int, run_dir: str, files: dict[str, str]
) -> tuple[tuple[Step, ...], dict, dict]:
    dev = ("--device", device)
    dtype = ("--torch-dtype", spec.torch_dtype) if spec.torch_dtype else ()
    ck = spec.checkpoint
    steps: list[Step] = []
    inputs: dict[str, str] = {}
    outputs: dict[str, str] = {}
    if spec.model:
        inputs["model"] = spec.model

    def gen_step(name: str, hf_path: str) -> Step:
        g = spec.generate
        assert g is not None
        if g.prompts_file:
            src: tuple[str, ...] = (_opt("--prompts-file", g.prompts_file),)
        elif _needs_file(g.prompt):
            # one JSONL record: a multi-line prompt stays ONE prompt (the runtime reads JSONL 'prompt' fields)
            files[PROMPT_FILE] = json.dumps({"prompt": g.prompt}, ensure_ascii=False) + "\n"
            src = (_opt("--prompts-file", posixpath.join(run_dir, PROMPT_FILE)),)
        else:
            src = (_opt("--prompt", g.prompt),)
        out = (
            _opt("--output", posixpath.join(run_dir, f"{name}.jsonl")),
        )  # the answers, for the record and the summary
        return Step(
            name,
            ("generate", _opt("--hf-model-path", hf_path), *src, "--max-new-tokens", str(g.max_new_tokens), *out, *dev),
        )

    if spec.kind == "import":
        steps.append(Step("import", ("convert", "import", *_import_args(spec.model, ck.dir), *dtype, *dev)))
        outputs["checkpoint"] = ck.dir
    elif spec.kind == "export":
        steps.append(Step("export", _export_args(spec, ck.dir, dev)))
        inputs["checkpoint"] = ck.dir
        outputs["hf_path"] = spec.export.hf_path
    elif spec.kind == "generate":
        args = list(gen_step("generate", spec.model).args)
        if ck.dir:
            args[2:2] = [_opt("--megatron-model-path", ck.dir)]
            inputs["checkpoint"] = ck.dir
        steps.append(Step("generate", tuple(args)))
    else:  # pretrain / finetune
        if spec.kind == "finetune" and spec.generate and spec.generate.before:
            steps.append(gen_step("generate_before", spec.model))
        run = ["run", "--recipe", spec.recipe]
        if spec.kind == "finetune":
            pretrained = ck.pretrained
            if not pretrained:
                pretrained = ck.dir.rstrip("/") + "_base"
                steps.append(
                    Step(
                        "import",
                        ("convert", "import", *_import_args(spec.model, pretrained), *dtype, *dev),
                    )
                )
                outputs["base_checkpoint"] = pretrained
            else:
                inputs["checkpoint"] = pretrained
            run += [_opt("--pretrained-checkpoint", pretrained)]
            if spec.peft != "none":
                run += ["--peft", spec.peft]
        # save AND load: the run resumes from its own checkpoints after a requeue (recipe default: $SAVE_DIR/<name>)
        run += [*dev, f"checkpoint.save={ck.dir}", f"checkpoint.load={ck.dir}", *_train_overrides(spec)]
        steps.append(Step("train", tuple(run), nnodes=nnodes, nproc_per_node=nproc, preemptible=True))
        outputs["checkpoint"] = ck.dir
        if spec.export:
            steps.append(Step("export", _export_args(spec, ck.dir, dev)))
            outputs["hf_path"] = spec.export.hf_path
            if spec.generate:
                steps.append(gen_step("generate_after", spec.export.hf_path))
    return tuple(steps), inputs, outputs


def _opt(flag: str, value: str) -> str:
    """`--flag=VALUE` as ONE argument: a user's value that starts with '-' is never read as another option."""
    return f"{flag}={value}"


def _import_args(model: str, megatron_path: str) -> tuple[str, str]:
    return _opt("--hf-model", model), _opt("--megatron-path", megatron_path)


#: the run-dir file a long or multi-line generate.prompt travels in.
PROMPT_FILE = "prompt.jsonl"


def _needs_file(value: str | None) -> bool:
    """A value that cannot be one safe argument: it holds a control character / line break, or is long."""
    from .quoting import has_control_chars

    return value is not None and (has_control_chars(value) or len(value.encode()) > MAX_ARG_BYTES)


def _export_args(spec: JobSpec, megatron_path: str, dev: tuple[str, ...]) -> tuple[str, ...]:
    assert spec.export is not None and spec.model is not None
    args = [
        "convert",
        "export",
        _opt("--hf-model", spec.model),
        _opt("--megatron-path", megatron_path),
        _opt("--hf-path", spec.export.hf_path),
    ]
    if spec.export.overwrite:
        args.append("--overwrite")
    if spec.export.hf_adapter:  # the HF PEFT adapter instead of the merged model (spec.py allows it for LoRA/DoRA)
        args.append("--hf-adapter")
    return (*args, *dev)
