"""How each step is launched: the node command (the runtime, or torchrun over the job wrapper's `rank` level) and
what the job wrapper executes for it (SLURM: the srun line with the pyxis container options). Part of make_plan
(plan.py); pure like it.
"""

from __future__ import annotations

from .plan_types import CONTAINER_NAME_ARG, RUNTIME_MODULE, Cluster, PlanError, Step
from .spec import JobSpec

#: The job wrapper module each step's command runs (`node` per node, `rank` per torchrun worker).
JOBWRAP_MODULE = "gemma3_launch.jobwrap"


def container_args(
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


def with_commands(
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


def slurm_wrapper_command(cluster: Cluster, container: tuple[str, ...]) -> tuple[str, ...]:
    """SLURM: the batch script runs the job wrapper in the container too; it shares the allocation with its steps."""
    return ("srun", "--nodes=1", "--ntasks=1", "--overlap", "--kill-on-bad-exit=1", *container, cluster.python)
