"""Task accuracy during training: greedy answers of the model to held-out prompts, scored by the dataset's scorer.

Uses the model's own KV cache (prefill once, then one token per step), batched with left padding. Runs on every
rank of the model-parallel group in lockstep (TP needs all ranks). With PP > 1 each forward goes stage by stage: a
stage receives the previous stage's hidden states, runs its layers with its own KV cache (which holds only its layers)
and sends its output on; the last stage picks the greedy token and broadcasts it over the pipeline group, so every
rank feeds and decodes the same tokens and returns the same answers. Strictly one sequence batch at a time (no
pipelining of batches): this is a small held-out eval, where simplicity beats the idle stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gemma3_runtime.model.wrapping import unwrap


def _next_tokens(
    inner: torch.nn.Module, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Any
) -> torch.Tensor:
    """One forward over all layers; returns the greedy next token [b] of each row, the same on every rank."""
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized() or ps.get_pipeline_model_parallel_world_size() == 1:
        logits = inner(input_ids=ids, position_ids=positions, attention_mask=mask, kv_cache=cache)
        return logits[:, -1].float().argmax(-1)
    config = inner.config
    dtype = getattr(config, "pipeline_dtype", None) or config.params_dtype
    first, last = ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage()
    if not first:
        seq = ids.shape[1] // ps.get_tensor_model_parallel_world_size() if config.sequence_parallel else ids.shape[1]
        hidden = torch.empty(seq, ids.shape[0], config.hidden_size, dtype=dtype, device=ids.device)
        torch.distributed.recv(hidden, src=ps.get_pipeline_model_parallel_prev_rank())
        inner.set_input_tensor(hidden)
    out = inner(input_ids=ids if first else None, position_ids=positions, attention_mask=mask, kv_cache=cache)
    if last:
        tokens = out[:, -1].float().argmax(-1)
    else:
        torch.distributed.send(out.to(dtype).contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
        tokens = torch.empty(ids.shape[0], dtype=torch.long, device=ids.device)
    torch.distributed.broadcast(
        tokens, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
    )
    return tokens


@torch.no_grad()
def greedy_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    device: torch.device,
    batch_size: int = 16,
) -> list[str]:
    from gemma3_runtime.model.kv_cache import KVCache

    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    stop = {tokenizer.eos_token_id}
    end_of_turn = (
        tokenizer.convert_tokens_to_ids("<end_of_turn>") if hasattr(tokenizer, "convert_tokens_to_ids") else None
    )
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        stop.add(end_of_turn)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = [
                bos + list(tokenizer(p, add_special_tokens=False)["input_ids"])
                for p in prompts[start : start + batch_size]
            ]
            width = max(len(c) for c in chunk)
            ids = torch.tensor([[pad] * (width - len(c)) + c for c in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk], device=device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = KVCache(max_length=width + max_new_tokens)
            next_token = _next_tokens(inner, ids, positions, mask, cache)
            generated = [[] for _ in chunk]
            done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
            last_pos = positions[:, -1]
            for step in range(max_new_tokens):
                for i, tok in enumerate(next_token.tolist()):
                    if not done[i]:
                        if tok in stop:
                            done[i] = True
                        else:
                            generated[i].append(tok)
                if bool(done.all()) or step == max_new_tokens - 1:
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                last_pos = last_pos + 1
                next_token = _next_tokens(inner, next_token[:, None], last_pos[:, None], mask, cache)
            answers.extend(tokenizer.decode(g, skip_special_tokens=True) for g in generated)
    finally:
        inner.train(was_training)
    return answers


def task_accuracy(
    model: torch.nn.Module, tokenizer: Any, items: Sequence[Any], max_new_tokens: int, device: torch.device
) -> tuple[float, list[str]]:
    from gemma3_runtime.data.synthetic import is_correct

    outputs = greedy_answers(model, tokenizer, [it.prompt for it in items], max_new_tokens, device)
    correct = sum(is_correct(o, it.completion) for o, it in zip(outputs, items, strict=False))
    return correct / max(len(items), 1), outputs
