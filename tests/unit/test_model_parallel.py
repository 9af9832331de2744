"""TP=2 and PP=2 on CPU (two gloo processes) equal TP=1/PP=1, on a tiny random Gemma 3 with 2 global layers and
fewer kv heads (1) than TP ranks; weights travel as megatron dist-checkpoints, so TP1 <-> TP2 / PP2 resharding of
our modules' sharded_state_dict is tested on the way."""

from __future__ import annotations

import pytest
import torch
from model_helpers import build_model, build_model_with_random_norms, tiny_config

pytestmark = pytest.mark.unit


def _save(model, path) -> None:
    from megatron.core import dist_checkpointing

    from gemma3_runtime.compat.megatron_cpu import cpu_checkpoint_io

    path.mkdir(parents=True, exist_ok=True)
    with cpu_checkpoint_io():
        dist_checkpointing.save(model.sharded_state_dict(), str(path))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A TP=1 model with every weight random (norms too), its checkpoint, an input and the reference logits."""
    root = tmp_path_factory.mktemp("tp1")
    cfg = tiny_config()
    assert cfg.num_kv_heads < 2 and len(cfg.global_layers) >= 2
    model = build_model_with_random_norms(cfg, seed=11)
    ids = torch.randint(0, cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(input_ids=ids)
    model(input_ids=ids, labels=torch.roll(ids, -1, 1)).mean().backward()
    torch.save({n: p.grad for n, p in model.named_parameters()}, root / "grads.pt")
    model.zero_grad()
    _save(model, root / "ckpt")
    torch.save(ids, root / "ids.pt")
    torch.save(logits, root / "ref.pt")
    return root, logits, ids


@pytest.mark.parametrize("tp,pp,sp", [(2, 1, False), (1, 2, False), (2, 1, True)])
def test_parallel_logits_equal_tp1_pp1(reference, run_torchrun, tp, pp, sp, tmp_path):
    root, ref_logits, ids = reference
    saved = tmp_path / "resaved"
    saved.mkdir()
    proc = run_torchrun(
        "multiproc.parallel_model:check_parity",
        nproc=2,
        kwargs=dict(
            tp=tp,
            pp=pp,
            sp=sp,
            ckpt=str(root / "ckpt"),
            ids=str(root / "ids.pt"),
            ref=str(root / "ref.pt"),
            grads=str(root / "grads.pt"),
            save_to=str(saved),
        ),
    )
    lines = [line for line in proc.stdout.splitlines() if "max |" in line]
    assert any("logit diff" in line for line in lines)
    assert pp > 1 or any("grad diff" in line for line in lines)
    print("\n".join(lines))
    # and back: the TP2 / PP2 checkpoint loads into a TP1 model with the same logits
    from megatron.core import dist_checkpointing

    from gemma3_runtime.compat.megatron_cpu import cpu_checkpoint_io

    model = build_model(tiny_config())
    with cpu_checkpoint_io():
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), str(saved)))
    with torch.no_grad():
        assert (model(input_ids=ids) - ref_logits).abs().max() <= 1e-5


def test_task_eval_greedy_answers_under_pp2_equal_pp1(reference, run_torchrun, tmp_path):
    """training/task_eval.py decodes stage by stage under PP (hidden states sent on, tokens broadcast back)."""
    import json

    from megatron.core import dist_checkpointing
    from multiproc.parallel_model import greedy_answers_of

    from gemma3_runtime.compat.megatron_cpu import cpu_checkpoint_io

    root, _, _ = reference
    model = build_model(tiny_config())
    with cpu_checkpoint_io():
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), str(root / "ckpt")))
    expected = greedy_answers_of(model)
    assert any(answer for answer in expected)  # something is generated, not only an immediate eos
    (tmp_path / "ref.json").write_text(json.dumps(expected))
    proc = run_torchrun(
        "multiproc.parallel_model:check_greedy_answers",
        nproc=2,
        kwargs=dict(tp=1, pp=2, ckpt=str(root / "ckpt"), ref=str(tmp_path / "ref.json")),
    )
    assert proc.stdout.count("greedy answers") == 2  # both stages return the answers
