"""The runtime's own config validation, run on the login node for every training step of a plan.

`validate` and `submit` call `check_plan`: it hands the exact argv the plan will run (`gemma3-runtime run ...`,
with the world size nodes x processes per node) to the runtime's torch-free `validate_run_argv`, so a misspelt
override, a batch that does not divide or a parallel layout the model cannot take exits 2 here instead of failing
after the job queued. The launcher imports only gemma3_runtime.training.run_args (which pulls the config modules,
never torch or numpy). Where the runtime is not installed next to the launcher, one warning says the check was skipped.
"""

from __future__ import annotations

from .plan import JobPlan

SKIPPED_WARNING = (
    "the runtime (gemma3_runtime) is not installed next to the launcher: the training config was not validated "
    "here; the job validates it when it starts"
)


def check_plan(plan: JobPlan, where: str) -> list[str]:
    """Validate the runtime config of every `run` step; returns warning lines. Raises SpecError naming `where`."""
    from .loader import SpecError

    run_steps = [step for step in plan.steps if step.args[:1] == ("run",)]
    if not run_steps:
        return []
    try:
        from gemma3_runtime.training.run_args import UserInputError, validate_run_argv
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "gemma3_runtime":
            return [SKIPPED_WARNING]
        raise
    for step in run_steps:
        try:
            validate_run_argv(step.args[1:], world_size=step.world_size)
        except UserInputError as exc:
            raise SpecError(f"{where}: {step.name} step: {' '.join(str(exc).split())}") from None
    return []
