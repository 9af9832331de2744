"""Task accuracy during training: greedy answers of the model to held-out prompts, scored by the dataset's scorer.

Uses the model's own KV cache (prefill once, then one token per step), batched with left padding. Runs on every
rank of the model-parallel group in lockstep (TP needs all ranks); not available with PP > 1.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from gemma3_runtime.training.checkpointing import unwrap


@torch.no_grad()
def greedy_answers(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
                   device: torch.device, batch_size: int = 16) -> list[str]:
    from gemma3_runtime.model.kv_cache import KVCache

    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    stop = {tokenizer.eos_token_id}
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>") if hasattr(tokenizer, "convert_tokens_to_ids") else None
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        stop.add(end_of_turn)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = [bos + list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts[start:start + batch_size]]
            width = max(len(c) for c in chunk)
            ids = torch.tensor([[pad] * (width - len(c)) + c for c in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk], device=device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = KVCache(max_length=width + max_new_tokens)
            logits = inner(input_ids=ids, position_ids=positions, attention_mask=mask, kv_cache=cache)
            next_token = logits[:, -1].float().argmax(-1)
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
                logits = inner(input_ids=next_token[:, None], position_ids=last_pos[:, None], attention_mask=mask,
                               kv_cache=cache)
                next_token = logits[:, -1].float().argmax(-1)
            answers.extend(tokenizer.decode(g, skip_special_tokens=True) for g in generated)
    finally:
        inner.train(was_training)
    return answers


def task_accuracy(model: torch.nn.Module, tokenizer: Any, items: Sequence[Any], max_new_tokens: int,
                  device: torch.device) -> tuple[float, list[str]]:
    from gemma3_runtime.data.synthetic import is_correct

    outputs = greedy_answers(model, tokenizer, [it.prompt for it in items], max_new_tokens, device)
    correct = sum(is_correct(o, it.completion) for o, it in zip(outputs, items))
    return correct / max(len(items), 1), outputs
