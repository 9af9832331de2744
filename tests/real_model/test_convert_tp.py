"""The real 270M (one kv head) imported at TP=2 by two gloo processes computes the same logits as at TP=1 on a
>1,100-token input (past the 512 window, through all three global layers)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.real_model


def test_270m_tp2_logits_match_tp1(real_270m_dir, long_input_ids, run_torchrun, tmp_path):
    import torch

    ids_path = tmp_path / "ids.pt"
    torch.save(long_input_ids, ids_path)
    outputs = {}
    for tp in (1, 2):
        outputs[tp] = tmp_path / f"logits_tp{tp}.pt"
        run_torchrun("multiproc.bridge_logits:logits_at_tp", nproc=tp, timeout=900,
                     kwargs={"hf_dir": str(real_270m_dir), "tp": tp, "ids_path": str(ids_path),
                             "out_path": str(outputs[tp])})
    tp1 = torch.load(outputs[1])
    tp2 = torch.load(outputs[2])
    assert tp1.shape == tp2.shape == (1, long_input_ids.shape[1], 262144)
    diff = (tp1 - tp2).abs().max().item()
    print(f"270M TP=2 vs TP=1 max |logit diff| over {long_input_ids.shape[1]} tokens: {diff:.3g}")
    assert diff <= 1e-4
