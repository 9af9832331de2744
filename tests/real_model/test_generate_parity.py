"""Generation on the real Gemma 3 270M (CPU, fp32): our KV-cached engine on our Megatron model (converted in
memory by the bridge) against transformers' own `generate`, token for token, 48 new greedy tokens.

The prompts cover: short ones, one that crosses the 512-token window DURING decoding (the ring buffer of the
sliding layers wraps mid-generation), and one longer than the window (it wraps inside the prefill). The batch
test puts all of them in ONE left-padded batch (widths 5..~700), so padding, per-row RoPE offsets and the window
counted in real tokens are all exercised.
"""

from __future__ import annotations

import pytest
import torch
from corpus import long_text

pytestmark = pytest.mark.real_model

NEW_TOKENS = 48
SHORT_PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):\n    "]
WINDOW_CROSSING_LEN = 490  # + 48 new tokens: decoding crosses column 512
LONGER_THAN_WINDOW_LEN = 700


@pytest.fixture(scope="module")
def ours(real_270m_dir):
    from gemma3_runtime.generate.api import engine_for
    from gemma3_runtime.generate.loading import build_model, resolve_sources

    torch.manual_seed(0)
    sources = resolve_sources(str(real_270m_dir), None)
    model = build_model(sources, torch.device("cpu"), "float32")
    return engine_for(model), sources


@pytest.fixture(scope="module")
def prompt_ids(ours):
    _, sources = ours
    tok = sources.tokenizer
    ids = [tok(p)["input_ids"] for p in SHORT_PROMPTS]
    prose = tok(long_text(), add_special_tokens=False)["input_ids"]
    for length in (WINDOW_CROSSING_LEN, LONGER_THAN_WINDOW_LEN):
        ids.append([tok.bos_token_id] + prose[1000 : 1000 + length - 1])
    return ids


@pytest.fixture(scope="module")
def one_by_one(ours, prompt_ids):
    engine, sources = ours
    return [
        engine.generate([ids], NEW_TOKENS, stop_ids=sources.stop_ids, pad_id=sources.pad_id).tokens[0]
        for ids in prompt_ids
    ]


def test_greedy_is_token_for_token_transformers_generate(real_270m_dir, ours, prompt_ids, one_by_one):
    from transformers import AutoModelForCausalLM

    _, sources = ours
    hf = AutoModelForCausalLM.from_pretrained(str(real_270m_dir), dtype=torch.float32).eval()
    for ids, mine in zip(prompt_ids, one_by_one, strict=False):
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                top_k=None,
                top_p=None,
                eos_token_id=list(sources.stop_ids),
                pad_token_id=sources.pad_id,
            )
        reference = ref[0, len(ids) :].tolist()
        assert mine == reference, (
            f"prompt of {len(ids)} tokens diverges at token "
            f"{next(i for i, (a, b) in enumerate(zip(mine + [-1], reference + [-2], strict=False)) if a != b)}"
        )
    assert sum(len(t) for t in one_by_one) > 3 * NEW_TOKENS  # not trivially short (stop tokens at once)


def test_batch_equals_one_by_one(ours, prompt_ids, one_by_one):
    engine, sources = ours
    out = engine.generate(prompt_ids, NEW_TOKENS, stop_ids=sources.stop_ids, pad_id=sources.pad_id)
    assert out.tokens == one_by_one
    assert out.prompt_lengths == [len(i) for i in prompt_ids]
