"""What each step of a job runs: the runtime's arguments for every step a spec's kind needs (import, train,
export, generate), from the spec's sections. Part of make_plan (plan.py); pure like it.
"""

from __future__ import annotations

import json
import posixpath

from .plan_types import Step
from .spec import JobSpec

#: how the runtime names the SFT dataset shipped inside its package (training/recipes.py BUNDLED_SFT_DATASET).
BUNDLED_DATASET = "bundled:wordcode"
#: Values longer than this (bytes), or holding a line break, travel as a file in the run dir instead of an argument.
MAX_ARG_BYTES = 1024

#: In checkpoint / export paths: this submission's run directory, so every submission gets fresh outputs
#: (the CPU demo re-runs from scratch) while a requeued job keeps resuming from its own checkpoints.
RUN_DIR_TOKEN = "{run_dir}"


def with_run_dir(spec: JobSpec, run_dir: str) -> JobSpec:
    def sub(path: str | None) -> str | None:
        return path.replace(RUN_DIR_TOKEN, run_dir) if path else path

    ck = spec.checkpoint.model_copy(
        update={"dir": sub(spec.checkpoint.dir), "pretrained": sub(spec.checkpoint.pretrained)}
    )
    update: dict = {"checkpoint": ck}
    if spec.export:
        update["export"] = spec.export.model_copy(update={"hf_path": sub(spec.export.hf_path)})
    return spec.model_copy(update=update)


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


def runtime_steps(
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
