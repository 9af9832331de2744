"""The sections of a job spec (resources, container, mounts, data, checkpoint, export, wandb, generate, slurm); the
top level and the rules across sections are spec.JobSpec, the Kubernetes section spec_k8s.K8s. The string grammars
are listed in spec.py's docstring.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from .spec_base import NonEmpty, Strict
from .spec_time import TIME_FORMS, TIME_LIMIT_MARGIN_S, parse_time_limit

MEMORY_RE = r"^[1-9][0-9]*[KMGT]$"


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
