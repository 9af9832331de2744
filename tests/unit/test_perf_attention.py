"""perf.attention.fast_attention (flex with cached block masks, SDPA is_causal / window mask) computes Gemma's
causal and sliding-window attention (W keys including the query itself), GQA included, like a fp32 reference. CPU."""

from __future__ import annotations

import pytest
import torch

from gemma3_runtime.perf.attention import fast_attention, reference_attention, sliding_block_mask

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("kernel", ["auto", "flash", "flex", "sdpa"])
@pytest.mark.parametrize("window", [None, 5, 200])
def test_matches_reference(kernel: str, window: int | None) -> None:
    g = torch.Generator().manual_seed(hash((kernel, window)) % 1000)
    b, hq, hkv, s, d = 2, 4, 1, 130, 16
    q = torch.randn(b, hq, s, d, generator=g)
    k = torch.randn(b, hkv, s, d, generator=g)
    v = torch.randn(b, hkv, s, d, generator=g)
    out = fast_attention(q, k, v, window=window, scale=0.3, kernel=kernel)
    ref = reference_attention(q.double(), k.double(), v.double(), window=window, scale=0.3)
    assert out.shape == (b, hq, s, d)
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-5


def test_window_semantics_include_the_query() -> None:
    # with W=1 each query sees only itself: output = its own value vector
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=g) for _ in range(3))
    out = fast_attention(q, k, v, window=1, scale=1.0, kernel="sdpa")
    assert torch.allclose(out, v, atol=1e-6)


def test_block_mask_is_cached() -> None:
    a = sliding_block_mask(256, 64, torch.device("cpu"))
    assert sliding_block_mask(256, 64, torch.device("cpu")) is a
    assert sliding_block_mask(256, None, torch.device("cpu")) is not a
