"""The JobPlan and its parts: the typed value every backend consumes, and its JSON form (plan.json).

plan.py builds it (make_plan); the job wrapper reads it back with `JobPlan.from_dict`. Frozen dataclasses of plain
values, so a plan prints, compares and round-trips through JSON exactly.
"""

from __future__ import annotations

import shlex
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from types import MappingProxyType
from typing import Literal

from .container_image import DEFAULT_IMAGE

Backend = Literal["local", "slurm", "k8s"]

#: The runtime's entry point; under torchrun it is run as a module.
RUNTIME_EXE = "gemma3-runtime"
RUNTIME_MODULE = "gemma3_runtime.cli.main"

#: The one run-time value a SLURM step's command holds as a reference: the container name, unique per job AND attempt
#: (`gemma3-<SLURM job id>-<restart count>`, exported by the batch script). The job wrapper substitutes it in exactly
#: this argv element and nowhere else, so no user text is ever expanded.
CONTAINER_NAME_ENV = "GEMMA3_CONTAINER_NAME"
CONTAINER_NAME_ARG = f"--container-name=${{{CONTAINER_NAME_ENV}}}"
#: torchrun reads its rendezvous from these variables (torch.distributed.run takes every option from PET_<OPTION>);
#: the node wrapper sets them from the scheduler (SLURM_NODEID, the batch script's MASTER_ADDR / MASTER_PORT), and
#: Kubeflow Trainer v2 injects them itself. So the torchrun line in the plan is complete as printed.
RENDEZVOUS_ENV = ("PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
#: What a SLURM container step receives from the batch environment besides the plan's env and the named secrets.
SLURM_ESSENTIAL_ENV = ("MASTER_ADDR", "MASTER_PORT", CONTAINER_NAME_ENV, "SUBMITIT_EXECUTOR")


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
        return container_env_names(self.env, self.secrets)


def container_env_names(env: Mapping[str, str], secrets: tuple[str, ...]) -> tuple[str, ...]:
    """The names a SLURM container step receives (srun --export / pyxis --container-env): the job's env, the named
    secrets, then the batch environment's essentials; each once, in that order."""
    return tuple(dict.fromkeys([*env, *secrets, *SLURM_ESSENTIAL_ENV]))


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
