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


def gguf_matches_hf_dir(gguf_path: str, hf_dir: str, out_path: str) -> None:
    """Import the .gguf and the HF directory made from it; write which Megatron parameters differ (JSON)."""
    import json

    from gemma3_runtime import AutoBridge

    models = {}
    for label, ref in (("gguf", gguf_path), ("hf", hf_dir)):
        bridge = AutoBridge.from_hf_pretrained(ref)
        provider = bridge.to_megatron_provider()
        provider.device = "cpu"
        provider.finalize()
        models[label] = (bridge.config, dict(provider.provide_distributed_model(wrap_with_ddp=False)[0]
                                            .named_parameters()))
    (cfg_a, a), (cfg_b, b) = models["gguf"], models["hf"]
    result = {
        "same_config": cfg_a == cfg_b,
        "names": sorted(a) == sorted(b),
        "count": len(a),
        "different": sorted(n for n in a if n in b and not torch.equal(a[n], b[n])),
    }
    with open(out_path, "w") as f:
        json.dump(result, f)
