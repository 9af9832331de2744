"""One GPU: the per-chunk fused kernel path of context parallelism, all CP ranks emulated in one process
(`emulated_context_attention`, no communication), against full attention on the same inputs through our non-CP fast
path (perf/attention.py's "flash" kernel: FlashAttention-2's window for sliding layers, SDPA causal for global ones).

bf16, S = 8192, the 1B's attention shapes (4 query heads, 1 KV head, head_dim 256, W 512) and the 4B's (8, 4, 256,
W 1024), CP 2/4/8 (chunks of 2048/1024/512 tokens), global layers, the model's window (inside one chunk's reach at
CP 2, spanning 2 chunks for the 4B at CP 8) and a window of 2.5 chunks (spanning 3) at every CP size.

Tolerance (normwise relative, per tensor, against the full fast path): 1e-2 for the output and dQ, 2e-2 for dK and
dV. Both sides are bf16 kernels with fp32 accumulation that differ in tiling only; bf16 keeps 8 significant bits (unit
roundoff 2^-8 = 3.9e-3, about 2.3e-3 rms per rounding), so rounding the output and dQ once already gives a few 1e-3.
dK and dV of a key are summed over every chunk that sees it (up to 2·CP = 16 bf16 additions for a global layer, as the
real CP backward's accumulation and reduce-scatter do), which adds up to ~sqrt(16) roundings: hence twice the margin.
A band aligned top-left instead of bottom-right, or off by a key, moves the outputs by far more (a changed key among
W = 512 moves a row by ~1/sqrt(W) = 4e-2); the index arithmetic itself is checked exactly in fp32 on CPU
(tests/unit/test_cp_attention.py). Each tensor's distance to the fp32 math is printed beside the fast path's own.

Packed documents (segment ids) take the varlen kernel: one FlashAttention-2 varlen call per chunk over its document
pieces (2 rows, the 1B's shapes, CP 2 global / CP 4 the model's window / CP 8 a window spanning 3 chunks), compared
with the masked per-chunk path on the same inputs (same tolerances); the piece arithmetic is checked exactly on CPU
(tests/unit/test_cp_varlen.py).
"""

import pytest
import torch

from gemma3_runtime.parallel import context_attention
from gemma3_runtime.parallel.chunk_kernels import (
    flash_chunk_attention,
    flash_varlen_chunk_attention,
    pick_chunk_kernel,
)
from gemma3_runtime.parallel.context_attention import emulated_context_attention
from gemma3_runtime.perf.attention import fast_attention

pytestmark = pytest.mark.gpu

SEQ_LEN = 8192
SHAPES = {"1b": (4, 1, 256, 512), "4b": (8, 4, 256, 1024)}  # query heads, kv heads, head_dim, sliding window
TOLERANCE = {"out": 1e-2, "dq": 1e-2, "dk": 2e-2, "dv": 2e-2}


@pytest.fixture(scope="module")
def cuda():
    if not torch.cuda.is_available():
        pytest.fail("the gpu tier needs a CUDA GPU (run it on the device machine: bench/gpu_session/run.sh cptests)")
    return torch.device("cuda")


def _inputs(model: str, device, seed: int):
    heads, kv_heads, head_dim, _ = SHAPES[model]
    gen = torch.Generator(device=device).manual_seed(seed)
    shapes = [(1, SEQ_LEN, h, head_dim) for h in (heads, kv_heads, kv_heads, heads)]
    return [torch.randn(*s, device=device, generator=gen, dtype=torch.bfloat16) for s in shapes]


def _run(attend, q, k, v, upstream, dtype=None):
    inputs = [(t.to(dtype) if dtype else t).clone().requires_grad_() for t in (q, k, v)]
    out = attend(*inputs)
    out.backward(upstream.to(out.dtype))
    return [out.detach(), *(t.grad for t in inputs)]


def _full_fast(window, scale):
    def attend(q, k, v):
        q_, k_, v_ = (t.transpose(1, 2) for t in (q, k, v))
        return fast_attention(q_, k_, v_, window=window, scale=scale, kernel="flash").transpose(1, 2)

    return attend


def _full_fp32(window, scale):
    def attend(q, k, v):
        groups = q.shape[2] // k.shape[2]
        q_, k_, v_ = (t.transpose(1, 2) for t in (q, k, v))
        k_, v_ = k_.repeat_interleave(groups, dim=1), v_.repeat_interleave(groups, dim=1)
        i = torch.arange(q.shape[1], device=q.device)
        allowed = i[None, :] <= i[:, None]
        if window is not None:
            allowed = allowed & (i[None, :] > i[:, None] - window)
        scores = (q_ @ k_.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
        return (torch.softmax(scores, dim=-1) @ v_).transpose(1, 2)

    return attend


def _rel(ours, ref) -> float:
    return float((ours.float() - ref.float()).norm() / ref.float().norm())


def _cases():
    for model, (_, _, _, model_window) in SHAPES.items():
        for cp in (2, 4, 8):
            chunk = SEQ_LEN // (2 * cp)
            for kind, window in (("global", None), ("model_window", model_window), ("wide", chunk * 5 // 2 + 1)):
                yield pytest.param(model, cp, window, id=f"{model}-cp{cp}-{kind}")


def _assert_within_tolerance(label: str, ours, other, other_name: str, exact) -> None:
    """Output and dQ/dK/dV of `ours` within TOLERANCE of `other` (both bf16 kernels); each one's distance to the
    fp32 math `exact` is printed beside."""
    for name, mine, theirs, ref in zip(("out", "dq", "dk", "dv"), ours, other, exact, strict=True):
        vs_other, ours_err, other_err = _rel(mine, theirs), _rel(mine, ref), _rel(theirs, ref)
        print(f"{label} {name}: vs {other_name} {vs_other:.2e}, vs fp32 {ours_err:.2e} ({other_name} {other_err:.2e})")
        assert vs_other <= TOLERANCE[name], (name, vs_other)


@pytest.mark.parametrize(("model", "cp", "window"), list(_cases()))
def test_fused_chunks_equal_full_attention(cuda, model, cp, window):
    q, k, v, upstream = _inputs(model, cuda, seed=cp)
    scale = SHAPES[model][2] ** -0.5
    calls = []

    def counted_flash(*args):
        calls.append(args[0].shape[1])
        return flash_chunk_attention(*args)

    assert pick_chunk_kernel(q, packed=False) is flash_chunk_attention  # what "auto" picks for these inputs

    def emulated(kernel):
        return lambda a, b, c: emulated_context_attention(
            a, b, c, cp_size=cp, window=window, scale=scale, chunk_kernel=kernel
        )

    fused = _run(emulated("auto"), q, k, v, upstream)
    counted = _run(emulated(counted_flash), q, k, v, upstream)
    assert calls == [SEQ_LEN // (2 * cp)] * (2 * cp)  # every chunk of every rank went through the fused kernel
    # "auto" ran that same kernel: the same output bits (the masked path's differ; only the forward is compared
    # bitwise, since flash's backward may accumulate dQ with atomics in any order)
    assert torch.equal(fused[0], counted[0])
    full = _run(_full_fast(window, scale), q, k, v, upstream)
    exact = _run(_full_fp32(window, scale), q, k, v, upstream, dtype=torch.float32)
    _assert_within_tolerance(f"{model} cp{cp} window {window}", fused, full, "full", exact)


def test_fused_path_has_no_quadratic_scratch(cuda):
    """The 1B at CP 2 (chunks of 2048 tokens, keys up to 8192), global layer: the fused forward + backward allocates
    less than half of the masked per-chunk path, whose kept [L, K] scores alone are ~6 B x 4 heads x 2048 x (2048 +
    4096 + 6144 + 8192) = 1 GB against ~0.2 GB of linear tensors (inputs, outputs, gradients) on both paths."""
    q, k, v, upstream = _inputs("1b", cuda, seed=0)
    peaks = {}
    for kernel in ("auto", None):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _run(
            lambda a, b, c, kernel=kernel: emulated_context_attention(
                a, b, c, cp_size=2, window=None, scale=0.0625, chunk_kernel=kernel
            ),
            q,
            k,
            v,
            upstream,
        )
        peaks[kernel] = torch.cuda.max_memory_allocated() - base
    print(f"peak extra memory: fused {peaks['auto'] / 2**20:.0f} MiB, masked {peaks[None] / 2**20:.0f} MiB")
    assert peaks["auto"] * 2 < peaks[None]


def _packed_segment_ids(device) -> torch.Tensor:
    """[2, S] packed-document ids (data/sft.py's layout: 1, 2, ... per document, 0 for the tail padding): row 0 with
    boundaries inside chunks and on chunk edges at every CP size (2048, 5120) and padding; row 1 with a document
    spanning most of the sequence, a one-token document and a short last one."""
    rows = [(1000, 2048, 3000, 5120, 7900), (6000, 6001, 8000)]
    ids = torch.zeros(2, SEQ_LEN, dtype=torch.long)
    for row, cuts in enumerate(rows):
        for cut in cuts:
            ids[row, cut:] += 1
        ids[row] += 1
    ids[0, 7900:] = 0
    return ids.to(device)


def _packed_cases():
    for cp, kind in ((2, "global"), (4, "model_window"), (8, "wide")):
        window = {"global": None, "model_window": SHAPES["1b"][3], "wide": SEQ_LEN // (2 * cp) * 5 // 2 + 1}[kind]
        yield pytest.param(cp, window, id=f"1b-cp{cp}-{kind}")


@pytest.mark.parametrize(("cp", "window"), list(_packed_cases()))
def test_packed_documents_take_the_varlen_kernel(cuda, cp, window):
    """Packed documents (2 rows, the 1B's shapes): "auto" runs every chunk as one FlashAttention-2 varlen call over
    its document pieces, equal to the masked per-chunk path (same mask, eager bf16 math) within the chunk
    tolerances above, output and dQ/dK/dV (the varlen backward is the aten op's own autograd formula)."""
    heads, kv_heads, head_dim, _ = SHAPES["1b"]
    gen = torch.Generator(device=cuda).manual_seed(100 + cp)
    shapes = [(2, SEQ_LEN, h, head_dim) for h in (heads, kv_heads, kv_heads, heads)]
    q, k, v, upstream = (torch.randn(*s, device=cuda, generator=gen, dtype=torch.bfloat16) for s in shapes)
    segments = _packed_segment_ids(cuda)
    scale = head_dim**-0.5
    calls = []

    def counted_varlen(*args):
        calls.append(args[-1] is not None)
        return flash_varlen_chunk_attention(*args)

    assert pick_chunk_kernel(q, packed=True) is flash_varlen_chunk_attention

    def emulated(kernel):
        return lambda a, b, c: emulated_context_attention(
            a, b, c, cp_size=cp, window=window, scale=scale, segment_ids=segments, chunk_kernel=kernel
        )

    varlen = _run(emulated("auto"), q, k, v, upstream)
    counted = _run(emulated(counted_varlen), q, k, v, upstream)
    assert calls == [True] * (2 * cp)  # every chunk went through the varlen kernel with its segment ids
    assert torch.equal(varlen[0], counted[0])
    masked = _run(emulated(None), q, k, v, upstream)
    exact = _run(emulated(None), q, k, v, upstream, dtype=torch.float32)
    _assert_within_tolerance(f"packed 1b cp{cp} window {window}", varlen, masked, "masked", exact)


def test_dispatch_reads_pick_chunk_kernel(cuda):
    q = torch.zeros(1, 16, 2, 256, device=cuda, dtype=torch.bfloat16)
    assert pick_chunk_kernel(q.float(), packed=False) is None  # fp32: no flash kernel
    assert pick_chunk_kernel(q.float(), packed=True) is None
    assert context_attention.pick_chunk_kernel is pick_chunk_kernel  # the dispatch reads this very function
