"""Fast core attention for the common training/prefill case: full sequences, no padding, no packing, no KV cache.

WHY: the general kernels in model/attention.py pass a boolean [sq, sk] mask to SDPA, which rules out the flash
kernels (SDPA falls back to the memory-efficient or math kernel), and build a flex block mask per layer per forward.
In the common case the mask is a pure function of (s, window), so no mask tensor is needed at all: kernels with
their own causal / diagonal-band masking compute only the blocks inside the window ("auto": cuDNN's fused kernels
where the cuDNN frontend is installed, else FlashAttention-2's window for sliding layers and SDPA `is_causal` for
global ones; see FAST_KERNELS for the alternatives a benchmark can pass as `kernel`).
Anything else (padding, segments, KV cache, sq != sk, dropout) stays on the model's general path.
Semantics are the model's: query i sees key j iff i - W < j <= i on sliding layers, j <= i on global ones.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..parallel.chunk_kernels import flash_window_supported

#: "flash": SDPA is_causal for global layers, FlashAttention-2's native sliding window (window_size_left) through
#: aten._flash_attention_forward for sliding ones (CUDA, bf16/fp16, head_dim <= 256): no wasted blocks at all.
#: "sdpa": SDPA is_causal for global layers, SDPA with a boolean window mask for sliding ones.
#: "flex": SDPA is_causal for global layers, flex attention with a cached sliding-window block mask for sliding ones
#: (flex for the global layers too is slower than flash: docs/PERFORMANCE.md).
#: "cudnn": cuDNN's fused attention through the cuDNN frontend's torch op (`torch.ops.cudnn.sdpa_fwd`, package
#: nvidia-cudnn-frontend) for BOTH kinds of layer: its own diagonal band for sliding ones, causal for global ones,
#: GQA native (no kv expansion). Only after `load_cudnn_attention` has run its probe (see there).
#: "auto": "cudnn" where it is loaded and applies, else "flash" where that applies (CUDA, bf16/fp16, head_dim
#: <= 256), else "sdpa" (CPU, fp32).
FAST_KERNELS = ("auto", "cudnn", "flash", "flex", "sdpa")

_BLOCK_MASKS: dict[tuple, object] = {}
#: why cuDNN attention is off ("" = loaded and probed); None = not tried yet. A module global, not a call, so that a
#: compiled layer reads it as a constant instead of tracing an import.
_CUDNN_STATUS: str | None = None
_WINDOW_MASKS: dict[tuple, torch.Tensor] = {}


def sliding_block_mask(s: int, window: int | None, device: torch.device):
    """Cached flex BlockMask for causal (window None) or sliding-window causal attention over s positions."""
    mask = _BLOCK_MASKS.get((s, window, str(device)))
    return mask if mask is not None else _build_block_mask(s, window, device)


@torch.compiler.disable
def _build_block_mask(s: int, window: int | None, device: torch.device):
    """Outside any compiled graph (a compiled layer that meets a missing mask breaks once, then recompiles clean);
    `prebuild_masks` normally fills the cache before the first step."""
    key = (s, window, str(device))
    mask = _BLOCK_MASKS.get(key)
    if mask is None:
        from torch.nn.attention.flex_attention import create_block_mask

        if window is None:

            def mask_mod(b, h, q_idx, kv_idx):
                return kv_idx <= q_idx
        else:

            def mask_mod(b, h, q_idx, kv_idx):
                return (kv_idx <= q_idx) & (kv_idx > q_idx - window)

        mask = create_block_mask(mask_mod, None, None, s, s, device=device)
        _BLOCK_MASKS[key] = mask
    return mask


def _window_mask(s: int, window: int, device: torch.device) -> torch.Tensor:
    key = (s, window, str(device))
    mask = _WINDOW_MASKS.get(key)
    if mask is None:
        i = torch.arange(s, device=device)
        mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
        _WINDOW_MASKS[key] = mask
    return mask


@functools.cache
def _compiled_flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(q, k, v, block_mask, scale):
    from torch.nn.attention.flex_attention import flex_attention

    fn = _compiled_flex() if q.device.type == "cuda" else flex_attention
    return fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


def flash_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int, scale: float
) -> torch.Tensor:
    """Sliding-window causal attention with FlashAttention-2's own window (keys i - (W-1) .. i), GQA native.

    WHY: SDPA exposes no window argument, flex's block-sparse kernel is several times slower than flash at
    head_dim 256, and a masked SDPA computes all s x s blocks. aten._flash_attention_forward (the kernel behind
    SDPA's flash backend) takes window_size_left/right and has an autograd formula (its backward honours the window).
    Layout: [b, h, s, d] in and out; the kernel wants [b, s, h, d] with a contiguous last dim (a transpose view).
    """
    b, _, s, _ = q.shape
    out = torch.ops.aten._flash_attention_forward(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        None,
        None,
        s,
        s,
        0.0,
        True,
        False,
        scale=scale,
        window_size_left=window - 1,
        window_size_right=0,
    )[0]
    return out.transpose(1, 2)


def cudnn_attention_ready(q: torch.Tensor) -> bool:
    return _CUDNN_STATUS == "" and flash_window_supported(q)


def cudnn_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int | None, scale: float
) -> torch.Tensor:
    """Causal (window None) or sliding-window causal attention on cuDNN's fused kernels, GQA native.

    WHY: with cuDNN for both layer kinds the 1B's training step is faster than with FlashAttention-2's window + SDPA
    causal (docs/PERFORMANCE.md), although neither cuDNN kernel is faster alone: the gain is around the kernels (no
    kv-head expansion and its gradient reduction, no contiguity copies). torch's own cuDNN SDPA backend has no window
    argument; the cuDNN frontend's op does (`window_left` = W keys including the query's own, the model's semantics).
    Layout: [b, h, s, d] views with any strides (the batch-major decoder's transposed views go in without a copy); the
    output adopts q's layout.
    """
    out, _ = torch.ops.cudnn.sdpa_fwd(
        q, k, v, scale, is_causal=True, window_left=-1 if window is None else window, return_lse=True
    )
    return out


def load_cudnn_attention(device: torch.device, head_dim: int, window: int | None) -> str:
    """Import the cuDNN frontend's torch op and prove it on this device once: a small bf16 forward + backward at the
    model's head_dim, global and sliding, against the fp32 reference. Returns "" when cuDNN attention is on, else
    why it is off (missing package, old cuDNN, no kernel for this head_dim or GPU, wrong numbers); never raises,
    since "auto" then simply stays on FlashAttention-2."""
    global _CUDNN_STATUS
    if device.type != "cuda":
        return "not a CUDA device"  # not remembered: a later CUDA model still gets its probe
    if _CUDNN_STATUS is not None:
        return _CUDNN_STATUS
    try:
        importlib.import_module("cudnn.sdpa.fwd.torch_op")  # registers torch.ops.cudnn.sdpa_fwd / sdpa_bwd
        _CUDNN_STATUS = _probe_cudnn(device, head_dim, window)
    except Exception as exc:  # ImportError, cudnnGraphNotSupportedError, a CUDA error from the backend
        _CUDNN_STATUS = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return _CUDNN_STATUS


def _probe_cudnn(device: torch.device, head_dim: int, window: int | None) -> str:
    s, w = 256, min(window or 64, 64)
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, do = (
        torch.randn(1, heads, s, head_dim, device=device, generator=gen, dtype=torch.bfloat16) for heads in (2, 1, 1, 2)
    )
    for band in (None, w):
        xs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = cudnn_attention(*xs, window=band, scale=head_dim**-0.5)
        out.backward(do)
        ref_xs = [t.float().requires_grad_(True) for t in (q, k, v)]
        ref = reference_attention(*ref_xs, window=band, scale=head_dim**-0.5)
        ref.backward(do.float())
        for name, got, want in zip(
            ("out", "dq", "dk", "dv"), [out] + [x.grad for x in xs], [ref] + [x.grad for x in ref_xs], strict=False
        ):
            err = float((got.float() - want).norm() / want.norm().clamp_min(1e-12))
            if not err < 2e-2:
                return f"probe: {name} of the {'window ' + str(band) if band else 'causal'} case is off by {err:.3g}"
    return ""


def _expand_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GQA by expansion: [b, g, s, d] -> [b, h, s, d] (cheap: kv is small), so every SDPA backend accepts it."""
    groups = q.shape[1] // k.shape[1]
    if groups == 1:
        return k, v
    return k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)


def fast_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int | None,
    scale: float,
    kernel: str = "auto",
) -> torch.Tensor:
    """q [b, hq, s, d], k/v [b, hkv, s, d] (same s, no padding) -> [b, hq, s, d].

    window None = causal (global layer); W = the W most recent keys including the query itself.
    """
    if kernel not in FAST_KERNELS:
        raise ValueError(f"fast attention kernel {kernel!r}, expected one of {FAST_KERNELS}")
    s = q.shape[2]
    if window is not None and window >= s:
        window = None  # the window covers the whole sequence: plain causal
    if kernel == "auto":
        # flex has no CPU backward (and no fused CPU kernel): on CPU "auto" is "sdpa"
        # (fp32 on CUDA: no flash; flex at head_dim 256 in fp32 may exceed shared memory, so the masked SDPA)
        kernel = "cudnn" if cudnn_attention_ready(q) else "flash" if flash_window_supported(q) else "sdpa"
    if kernel == "cudnn":
        if not cudnn_attention_ready(q):
            why = (
                "load_cudnn_attention() has not run"
                if _CUDNN_STATUS is None
                else _CUDNN_STATUS or "it needs CUDA bf16/fp16 tensors with head_dim <= 256, a multiple of 8"
            )
            raise RuntimeError(f"fast attention kernel 'cudnn' is not available: {why}")
        return cudnn_attention(q, k, v, window=window, scale=scale)
    if kernel == "flash" and window is not None and flash_window_supported(q):
        return flash_window_attention(q, k, v, window=window, scale=scale)
    if kernel == "flex" and window is not None:
        return _flex(q, k, v, sliding_block_mask(s, window, q.device), scale)
    k, v = _expand_kv(q, k, v)
    if window is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=_window_mask(s, window, q.device), scale=scale)


def _auto_core_attentions(models) -> list:
    """The models' core attentions on the "auto" kernel (the ones that take this module's fast path)."""
    return [
        m
        for model in (models if isinstance(models, (list, tuple)) else [models])
        for m in model.modules()
        if getattr(m, "kernel", None) == "auto" and hasattr(m, "window")
    ]


def prepare_cudnn_attention(models, device: torch.device) -> str | None:
    """Load and probe cuDNN attention when the models' "auto" core attentions could use it (CUDA, half-precision
    parameters, the "auto" fast kernel). Returns `load_cudnn_attention`'s verdict, or None when it does not apply."""
    if device.type != "cuda":
        return None
    cores = _auto_core_attentions(models)
    if not cores or cores[0].config.params_dtype not in (torch.bfloat16, torch.float16):
        return None
    windows = [m.window for m in cores if m.window is not None]
    return load_cudnn_attention(device, cores[0].config.kv_channels, min(windows) if windows else None)


def prebuild_masks(models, seq_length: int, device: torch.device) -> int:
    """Fill the window-mask cache for every window the models' "auto" core attentions will ask for at `seq_length`,
    so compiled layers never trace mask construction (bf16/fp16 models on CUDA take the mask-free kernels; CPU and
    fp32 take the masked SDPA). Returns the number of masks built."""
    windows = {m.window for m in _auto_core_attentions(models) if m.window is not None and m.window < seq_length}
    for w in windows:
        _window_mask(seq_length, w, device)
    return len(windows)


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int | None, scale: float
) -> torch.Tensor:
    """fp32 matmul + softmax reference (tests, benchmark checks)."""
    s = q.shape[2]
    k, v = _expand_kv(q, k, v)
    i = torch.arange(s, device=q.device)
    allowed = i[None, :] <= i[:, None]
    if window is not None:
        allowed = allowed & (i[None, :] > i[:, None] - window)
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v.float()).to(q.dtype)
