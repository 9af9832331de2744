"""Rank-side code for the TP / PP tests (run under torchrun by tests/conftest.py's `torchrun` helper).

Each rank builds its shard of a tiny Gemma 3, loads a TP=1 megatron dist-checkpoint written by the test (so the
checkpoint resharding is exercised too), runs a forward (PP by hand: send/recv between the two stages), and the
last stage compares its logits with the TP=1/PP=1 reference.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from model_helpers import tiny_config


def build(tp: int, pp: int, kernel: str = "sdpa", sp: bool = False):
    from gemma3_runtime.model import Gemma3ModelProvider

    provider = Gemma3ModelProvider.from_config(
        tiny_config(), device="cpu", attention_kernel=kernel, sequence_parallel=sp
    )
    provider.tensor_model_parallel_size = tp
    provider.pipeline_model_parallel_size = pp
    return provider.finalize().provide_distributed_model(wrap_with_ddp=False)[0]


def pipeline_forward(model, ids: torch.Tensor, **kwargs):
    """Forward through PP stages by explicit send/recv; returns the output on the last stage, else None."""
    from megatron.core import parallel_state as ps

    positions = torch.arange(ids.shape[1]).expand_as(ids)
    if ps.get_pipeline_model_parallel_world_size() == 1:
        return model(input_ids=ids, position_ids=positions, **kwargs)
    if not ps.is_pipeline_first_stage():
        hidden = torch.empty(ids.shape[1], ids.shape[0], model.config.hidden_size, dtype=model.config.params_dtype)
        dist.recv(hidden, src=ps.get_pipeline_model_parallel_prev_rank())
        model.set_input_tensor(hidden.requires_grad_(torch.is_grad_enabled()))
    out = model(input_ids=ids if ps.is_pipeline_first_stage() else None, position_ids=positions, **kwargs)
    if not ps.is_pipeline_last_stage():
        dist.send(out.detach().contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
        return None
    return out


def check_tied_embedding_sync(model) -> None:
    """PP > 1: the last stage's output_layer copy must start equal to the first stage's embedding."""
    from megatron.core import parallel_state as ps

    if ps.get_pipeline_model_parallel_world_size() == 1:
        return
    if ps.is_pipeline_first_stage():
        dist.send(
            model.embedding.word_embeddings.weight.detach().contiguous(), dst=ps.get_pipeline_model_parallel_last_rank()
        )
    if ps.is_pipeline_last_stage():
        first = torch.empty_like(model.output_layer.weight)
        dist.recv(first, src=ps.get_pipeline_model_parallel_first_rank())
        assert torch.count_nonzero(first) > 0 and torch.equal(first, model.output_layer.weight)


def check_parity(
    tp: int,
    pp: int,
    ckpt: str,
    ids: str,
    ref: str,
    save_to: str = "",
    kernel: str = "sdpa",
    sp: bool = False,
    grads: str = "",
    tol: float = 1e-5,
) -> None:
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    from gemma3_runtime.compat.megatron_cpu import cpu_checkpoint_io

    model = build(tp, pp, kernel, sp)
    check_tied_embedding_sync(model)
    with cpu_checkpoint_io():
        state = dist_checkpointing.load(model.sharded_state_dict(), ckpt)
    model.load_state_dict(state)
    model.eval()
    input_ids = torch.load(ids)
    with torch.no_grad():
        logits = pipeline_forward(model, input_ids)
    if logits is not None:
        diff = (logits - torch.load(ref)).abs().max().item()
        print(f"[rank {dist.get_rank()}] tp={tp} pp={pp} sp={sp} max |logit diff| vs TP1/PP1 = {diff:.3e}", flush=True)
        assert diff <= tol, diff
    # a training step's backward runs through the kv-head all-gather (TP > kv heads) and the PP send/recv
    model.train()
    labels = torch.roll(input_ids, -1, 1)
    loss = pipeline_forward(model, input_ids, labels=labels)
    if loss is not None:
        loss.mean().backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        if grads and pp == 1:
            compare_tp_grads(model, torch.load(grads), tp)
    if save_to:
        with cpu_checkpoint_io():
            dist_checkpointing.save(model.sharded_state_dict(), save_to)
    dist.barrier()
    assert ps.get_tensor_model_parallel_world_size() == tp


def _tp_slice(name: str, full: torch.Tensor, rank: int, tp: int) -> torch.Tensor:
    """This rank's shard of a TP=1 tensor, by megatron's layout rules (docs/CONTRACTS.md)."""
    if name.endswith("linear_fc1.weight"):  # rank i holds cat(gate_i, up_i)
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp)[rank], up.chunk(tp)[rank]])
    if name.endswith(("linear_qkv.weight", "word_embeddings.weight")):
        return full.chunk(tp, dim=0)[rank]
    if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return full.chunk(tp, dim=1)[rank]
    return full


def compare_tp_grads(model, reference: dict, tp: int) -> None:
    """Sharded and replicated gradients equal TP=1's. Partial ones are summed over TP first, as megatron's
    finalize_model_grads does: q/k norms (heads split over ranks) and, with sequence parallel, every param marked
    `sequence_parallel` (norms over a sequence shard) - so this also checks our norms carry that mark."""
    from megatron.core import parallel_state as ps

    rank, group = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_group()
    worst = 0.0
    for name, p in model.named_parameters():
        grad = p.grad
        if "q_layernorm" in name or "k_layernorm" in name or getattr(p, "sequence_parallel", False):
            grad = grad.clone()
            dist.all_reduce(grad, group=group)
        expected = _tp_slice(name, reference[name], rank, tp)
        worst = max(worst, (grad - expected).abs().max().item())
        assert torch.allclose(grad, expected, atol=1e-6, rtol=1e-4), name
    print(f"[rank {dist.get_rank()}] tp={tp} max |grad diff| vs TP1 = {worst:.3e}", flush=True)


class ByteTokenizer:
    """Stand-in tokenizer for `greedy_answers` on the tiny model: one id per byte (+4); pad 0, bos 1, eos 2. Decodes
    to the ids themselves, so two runs' answers compare token for token."""

    pad_token_id, bos_token_id, eos_token_id, unk_token_id = 0, 1, 2, 3

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [b + 4 for b in text.encode()]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids)


GREEDY_PROMPTS = ["a", "hello there", "abc", "the quick brown fox"]  # 2 batches of 2, left padding in each


def greedy_answers_of(model) -> list[str]:
    from gemma3_runtime.training.task_eval import greedy_answers

    return greedy_answers(
        model, ByteTokenizer(), GREEDY_PROMPTS, max_new_tokens=6, device=torch.device("cpu"), batch_size=2
    )


def check_greedy_answers(tp: int, pp: int, ckpt: str, ref: str) -> None:
    """Task-eval greedy decoding on a TP/PP-split model gives the TP1/PP1 answers on every rank."""
    import json
    from pathlib import Path

    from megatron.core import dist_checkpointing

    from gemma3_runtime.compat.megatron_cpu import cpu_checkpoint_io

    model = build(tp, pp)
    with cpu_checkpoint_io():
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), ckpt))
    answers = greedy_answers_of(model)
    expected = json.loads(Path(ref).read_text())
    print(f"[rank {dist.get_rank()}] tp={tp} pp={pp} greedy answers {answers}", flush=True)
    assert answers == expected, (answers, expected)
    assert model.training  # greedy_answers puts the model back in training mode
