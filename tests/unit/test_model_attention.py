"""What generation and packed training build on: KV-cached decoding (sq < sk), left-padded batches with per-row
position offsets, packed documents (segment ids), and agreement of the three attention kernels."""

from __future__ import annotations

import pytest
import torch
from model_helpers import build_model, tiny_config

from gemma3_runtime.model.kv_cache import KVCache

pytestmark = pytest.mark.unit

TOL = 2e-5


@pytest.fixture(scope="module")
def cfg():
    return tiny_config()


@pytest.fixture(scope="module")
def model(cfg):
    torch.manual_seed(3)
    return build_model(cfg)


def _ids(cfg, b, s, seed=0):
    return torch.randint(3, cfg.vocab_size, (b, s), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("max_length", [None, 64])
def test_kv_cached_decoding_matches_full_forward(model, cfg, max_length):
    ids = _ids(cfg, 2, 36)
    with torch.no_grad():
        full = model(input_ids=ids)
        cache = KVCache(max_length=max_length)
        steps = [model(input_ids=ids[:, :20], kv_cache=cache)]
        for t in range(20, 36):
            steps.append(model(input_ids=ids[:, t : t + 1], position_ids=torch.full((2, 1), t), kv_cache=cache))
    assert cache.length == 36
    assert (torch.cat(steps, dim=1) - full).abs().max() <= TOL


def test_left_padded_batch_matches_each_row_alone(model, cfg):
    """Row 0 has 8 pads on the left; its positions start at 0 at its first real token."""
    a, b = _ids(cfg, 1, 30, seed=1), _ids(cfg, 1, 22, seed=2)
    pad = torch.zeros(1, 8, dtype=torch.long)
    ids = torch.cat([torch.cat([pad, b], 1), a])
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, :8] = False
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        alone_a, alone_b = model(input_ids=a), model(input_ids=b)
        both = model(input_ids=ids, position_ids=positions, attention_mask=mask)
        assert torch.isfinite(both).all()
        assert (both[1] - alone_a[0]).abs().max() <= TOL
        assert (both[0, 8:] - alone_b[0]).abs().max() <= TOL
        # and decoding on top of the padded prefill (mask grows with the cache)
        cache = KVCache()
        model(input_ids=ids[:, :24], position_ids=positions[:, :24], attention_mask=mask[:, :24], kv_cache=cache)
        for t in range(24, 30):
            step = model(
                input_ids=ids[:, t : t + 1],
                position_ids=positions[:, t : t + 1],
                attention_mask=mask[:, : t + 1],
                kv_cache=cache,
            )
            assert (step[:, 0] - both[:, t]).abs().max() <= TOL


def test_segment_ids_isolate_packed_documents(model, cfg):
    a, b = _ids(cfg, 1, 18, seed=4), _ids(cfg, 1, 14, seed=5)
    packed = torch.cat([a, b], 1)
    segments = torch.tensor([[1] * 18 + [2] * 14])
    positions = torch.cat([torch.arange(18), torch.arange(14)])[None]
    with torch.no_grad():
        out = model(input_ids=packed, position_ids=positions, segment_ids=segments)
        assert (out[0, :18] - model(input_ids=a)[0]).abs().max() <= TOL
        assert (out[0, 18:] - model(input_ids=b)[0]).abs().max() <= TOL


def test_kernels_agree_with_padding_and_decoding(cfg):
    torch.manual_seed(5)
    ref = build_model(cfg, attention_kernel="eager")
    state = ref.state_dict()
    ids = _ids(cfg, 2, 26, seed=6)
    mask = torch.ones(2, 26, dtype=torch.bool)
    mask[1, :5] = False
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = ref(input_ids=ids, position_ids=positions, attention_mask=mask)
        for kernel in ("sdpa", "flex"):
            other = build_model(cfg, attention_kernel=kernel)
            other.load_state_dict(state)
            got = other(input_ids=ids, position_ids=positions, attention_mask=mask)
            assert (got - expected).abs().max() <= TOL, kernel
            cache = KVCache()
            other(input_ids=ids[:, :25], position_ids=positions[:, :25], attention_mask=mask[:, :25], kv_cache=cache)
            last = other(input_ids=ids[:, 25:], position_ids=positions[:, 25:], attention_mask=mask, kv_cache=cache)
            assert (last[:, 0] - expected[:, 25]).abs().max() <= TOL, kernel


def test_four_dimensional_megatron_mask_is_refused(model, cfg):
    ids = _ids(cfg, 1, 6)
    with pytest.raises(ValueError, match=r"attention_mask must be None or a \[batch, keys\] padding mask"):
        model(input_ids=ids, attention_mask=torch.ones(1, 1, 6, 6, dtype=torch.bool))
