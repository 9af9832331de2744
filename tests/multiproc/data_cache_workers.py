"""Workers for test_data_cache_ranks.py, run on every rank by the torchrun helper (gloo, CPU)."""

from __future__ import annotations

import json
import os


def tokenize_sft(tokenizer_dir: str, source: str, cache_dir: str, out: str) -> None:
    """Every rank asks for the SFT examples of `source` through the cache; each writes what it got."""
    import torch.distributed as dist
    from transformers import AutoTokenizer

    from gemma3_runtime.data.cached import sft_examples
    from gemma3_runtime.training.config import DataConfig

    dist.init_process_group("gloo")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        cfg = DataConfig(kind="sft", data_paths=[source])
        examples = sft_examples(cfg.data_paths, tokenizer, cfg, cache_dir, "data.data_paths")
        with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as f:
            json.dump([e.input_ids for e in examples], f)
    finally:
        dist.destroy_process_group()
