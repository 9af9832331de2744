"""torchrun workers for the bridge's real-model tests (tests/real_model/test_gguf_import.py)."""

from __future__ import annotations

import torch


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
        models[label] = (
            bridge.config,
            dict(provider.provide_distributed_model(wrap_with_ddp=False)[0].named_parameters()),
        )
    (cfg_a, a), (cfg_b, b) = models["gguf"], models["hf"]
    result = {
        "same_config": cfg_a == cfg_b,
        "names": sorted(a) == sorted(b),
        "count": len(a),
        "different": sorted(n for n in a if n in b and not torch.equal(a[n], b[n])),
    }
    with open(out_path, "w") as f:
        json.dump(result, f)
