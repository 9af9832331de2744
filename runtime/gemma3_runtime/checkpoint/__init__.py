"""Megatron checkpoints: layout, commit protocol, save / load (docs/CONTRACTS.md)."""

from gemma3_runtime.checkpoint.layout import (  # noqa: F401
    FORMAT,
    RUN_CONFIG_FILE,
    TOKENIZER_DIR,
    TRACKER_FILE,
    ResolvedCheckpoint,
    iter_dir_name,
    resolve_checkpoint,
)
