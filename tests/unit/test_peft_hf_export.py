"""LoRA / DoRA on a tiny random Gemma 3 (megatron, TP=1): merge exactness on the whole model, the merged HF export
in transformers, and the unmerged HF PEFT adapter loaded with `peft.PeftModel` - all against the adapted model.

Tiny config: 6 layers (global at 2 and 5), window 8, GQA 4:1, inputs of 24 tokens (longer than the window)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

pytestmark = pytest.mark.unit

SEQ = 24


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(Gemma3Config, HF base directory) of a tiny random Gemma 3 with non-zero norms."""
    from model_helpers import hf_model, tiny_config

    cfg = tiny_config()
    path = tmp_path_factory.mktemp("tiny_hf")
    hf_model(cfg).save_pretrained(path)
    return cfg, path


def _megatron(cfg, hf_dir):
    from gemma3_runtime.bridge.engine import WeightEngine
    from gemma3_runtime.bridge.safetensors_io import HFTensorReader
    from gemma3_runtime.model.provider import Gemma3ModelProvider

    models = Gemma3ModelProvider.from_config(cfg, device="cpu").provide_distributed_model()
    with HFTensorReader(Path(hf_dir)) as reader:
        WeightEngine(cfg).load(models, reader, "model.")
    return models


def _hf(hf_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def _perturb_adapters(models, scale: float) -> None:
    """Stand-in for training: non-trivial B, A and magnitudes."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in models[0].named_parameters():
            if ".adapter." in name:
                p.add_(torch.randn(p.shape, generator=gen) * scale * (p.abs().mean() + 0.05))


def _inputs(cfg):
    ids = torch.randint(0, cfg.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(3))
    return ids, torch.arange(SEQ)[None].expand(2, SEQ)


def _max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_merge_and_both_hf_exports_match_the_adapted_model(tiny, tmp_path, kind):
    import peft

    from gemma3_runtime.bridge.engine import WeightEngine
    from gemma3_runtime.bridge.peft_adapter import save_hf_adapter
    from gemma3_runtime.peft import PeftConfig, apply_peft, merge_peft

    cfg, hf_dir = tiny
    models = _megatron(cfg, hf_dir)
    ids, pos = _inputs(cfg)
    with torch.no_grad():
        base_logits = models[0](input_ids=ids, position_ids=pos)
    pcfg = PeftConfig(kind=kind, rank=4, alpha=8)
    apply_peft(models, pcfg)
    _perturb_adapters(models, 0.5)
    with torch.no_grad():
        adapted = models[0](input_ids=ids, position_ids=pos)
    assert _max_diff(adapted, base_logits) > 0.05, "adapters are trivial; the test would prove nothing"

    # unmerged: HF PEFT adapter on the original HF base
    adapter_dir = save_hf_adapter(models, pcfg, cfg, tmp_path / "adapter", base_model_name_or_path=str(hf_dir))
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["use_dora"] is (kind == "dora") and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    peft_model = peft.PeftModel.from_pretrained(_hf(hf_dir), adapter_dir).eval()
    with torch.no_grad():
        peft_logits = peft_model(input_ids=ids).logits
    print(
        f"{kind}: adapters move logits by {_max_diff(adapted, base_logits):.3g}; "
        f"HF PEFT adapter vs adapted {_max_diff(peft_logits, adapted):.3g}"
    )
    assert _max_diff(peft_logits, adapted) < 1e-4

    # the bridge's export of a model that still carries adapters = the exact merge, model left untouched
    view = dict(WeightEngine(cfg).export(models))
    assert sum(".adapter." in n for n, _ in models[0].named_parameters()) > 0

    # merged: exact in place, then a plain HF export
    merge_peft(models)
    with torch.no_grad():
        merged = models[0](input_ids=ids, position_ids=pos)
    assert _max_diff(merged, adapted) < 1e-5
    hf = _hf(hf_dir)
    state = dict(WeightEngine(cfg).export(models))
    assert state.keys() == view.keys() and all(torch.equal(state[k], view[k]) for k in state)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    with torch.no_grad():
        assert _max_diff(hf(input_ids=ids).logits, adapted) < 1e-4


def test_anchor_placement_is_not_mergeable_on_the_whole_model(tiny):
    """Negative control: the same adapters after the post-norms change the function when merged."""
    from gemma3_runtime.peft import PeftConfig, apply_peft, merge_peft

    cfg, hf_dir = tiny
    models = _megatron(cfg, hf_dir)
    ids, pos = _inputs(cfg)
    apply_peft(models, PeftConfig(kind="lora", rank=4, alpha=8), update_position="post_norm")
    _perturb_adapters(models, 0.5)
    with torch.no_grad():
        adapted = models[0](input_ids=ids, position_ids=pos)
        merge_peft(models)
        merged = models[0](input_ids=ids, position_ids=pos)
    print(f"anchor placement: merged vs adapted {_max_diff(merged, adapted):.3g}")
    assert _max_diff(merged, adapted) > 1e-2
