"""torchrun worker for tests/real_model/test_convert_tp.py: import an HF model through AutoBridge at a given TP
size and save the last stage's logits for `ids_path` (rank 0 writes)."""

from __future__ import annotations

import torch


def logits_at_tp(hf_dir: str, tp: int, ids_path: str, out_path: str) -> None:
    from gemma3_runtime import AutoBridge

    ids = torch.load(ids_path)
    bridge = AutoBridge.from_hf_pretrained(hf_dir)
    provider = bridge.to_megatron_provider()
    provider.tensor_model_parallel_size = tp
    provider.pipeline_model_parallel_size = 1
    provider.device = "cpu"
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    with torch.no_grad():
        logits = model[0](input_ids=ids, position_ids=positions, attention_mask=None)
    if torch.distributed.get_rank() == 0:
        torch.save(logits.float(), out_path)
