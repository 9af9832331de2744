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


def test_cudnn_kernel_off_the_gpu_says_why() -> None:
    from gemma3_runtime.perf import attention

    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(RuntimeError, match="'cudnn' is not available: load_cudnn_attention"):
        fast_attention(q, q[:, :1], q[:, :1], window=4, scale=0.25, kernel="cudnn")
    # a CPU model never loads cuDNN, and asking does not stop a later CUDA model from probing it
    assert attention.load_cudnn_attention(torch.device("cpu"), 16, 4) == "not a CUDA device"
    assert attention._CUDNN_STATUS is None


def test_cpu_models_do_not_prepare_cudnn() -> None:
    from model_helpers import tiny_config

    from gemma3_runtime.model import Gemma3ModelProvider
    from gemma3_runtime.perf.attention import prepare_cudnn_attention

    model = (
        Gemma3ModelProvider.from_config(tiny_config(), device="cpu", attention_kernel="auto")
        .finalize()
        .provide_distributed_model()[0]
    )
    assert prepare_cudnn_attention([model], torch.device("cpu")) is None


def test_unknown_fast_kernel_is_named() -> None:
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="fast attention kernel 'cudnn2', expected one of"):
        fast_attention(q, q, q, window=4, scale=0.25, kernel="cudnn2")
