"""Rank-side code for real-model TP tests: import the HF directory at TP=N through the bridge, save rank 0's logits."""

from __future__ import annotations

import torch
import torch.distributed as dist


def tp_logits(hf_dir: str, ids: str, out: str, tp: int = 2) -> None:
    from gemma3_runtime import AutoBridge

    provider = AutoBridge.from_hf_pretrained(hf_dir).to_megatron_provider()
    provider.tensor_model_parallel_size = tp
    provider.pipeline_model_parallel_size = 1
    provider.device = "cpu"
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)[0].eval()
    input_ids = torch.load(ids)
    with torch.no_grad():
        logits = model(input_ids=input_ids, position_ids=torch.arange(input_ids.shape[1])[None])[0]
    if dist.get_rank() == 0:
        torch.save(logits, out)
    dist.barrier()
