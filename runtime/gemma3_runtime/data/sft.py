"""Supervised finetuning data from JSONL: prompt/completion or chat `messages`, loss on completions only, packing.

Each example becomes (input_ids, labels, loss_mask) already shifted by one: tokens = [bos] + prompt + completion +
[eos]; input = tokens[:-1], labels = tokens[1:], loss only where the label is a completion token (or the final eos).
Because the shift happens per example, no label ever crosses into the next example when several are packed.

Packing (data.packing=true, the default): examples are shuffled with the seed and placed greedily, in order, into
sequences of data.seq_length tokens; the tail is padded (pad id, no loss). What the model sees:
- attention: every packed example attends only to itself - the batch carries `segment_ids` (1, 2, ... per example,
  0 for padding) from which the loop builds a block-diagonal causal mask (see training/step.py);
- position ids restart at 0 for each example, so a packed example is computed exactly as if it were alone.
Unpacked (data.packing=false): one example per sequence, right-padded; too-long examples are truncated from the end.

Chat rows `{"messages": [{"role": "user"|"system"|"assistant"|"model", "content": ...}, ...]}` use the tokenizer's
chat template when it has one, else the Gemma turn format (`<start_of_turn>user\\n...<end_of_turn>\\n`); loss on the
assistant turns only.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gemma3_runtime.errors import UserInputError

IGNORE_SEGMENT = 0


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    loss_mask: list[int]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a bad line is a UserInputError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"data path {str(path)!r} does not exist (expected a JSONL file)")
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserInputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not ("messages" in row or ("prompt" in row and "completion" in row)):
                raise UserInputError(
                    f"{path}:{lineno}: expected an object with 'prompt' and 'completion', or 'messages'"
                )
            rows.append(row)
    if not rows:
        raise UserInputError(f"{path}: no examples (expected JSONL rows)")
    return rows


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_prompt_completion(tokenizer: Any, prompt: str, completion: str) -> TokenizedExample:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt_ids = bos + _encode(tokenizer, prompt)
    completion_ids = _encode(tokenizer, completion) + [tokenizer.eos_token_id]
    return _shift(prompt_ids + completion_ids, [0] * len(prompt_ids) + [1] * len(completion_ids))


def _gemma_turn(role: str, content: str) -> str:
    role = "model" if role in ("assistant", "model") else "user"
    return f"<start_of_turn>{role}\n{content}<end_of_turn>\n"


def tokenize_messages(tokenizer: Any, messages: Sequence[dict[str, str]]) -> TokenizedExample:
    """Chat: the template's tokens, loss on assistant turns."""
    if getattr(tokenizer, "chat_template", None):
        tokens: list[int] = []
        mask: list[int] = []
        for i, message in enumerate(messages):
            full = list(tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=True))
            full = list(full["input_ids"]) if isinstance(full, dict) else full
            new = full[len(tokens) :]
            if message.get("role") in ("assistant", "model"):
                prompt = (
                    list(tokenizer.apply_chat_template(list(messages[:i]), tokenize=True, add_generation_prompt=True))
                    if i
                    else []
                )
                head = max(0, len(prompt) - len(tokens))
                mask += [0] * head + [1] * (len(new) - head)
            else:
                mask += [0] * len(new)
            tokens = full
        return _shift(tokens, mask)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    tokens, mask = list(bos), [0] * len(bos)
    system = ""
    for message in messages:
        role, content = message.get("role"), message.get("content", "")
        if role == "system":  # Gemma has no system role: prepend to the next user turn, as its template does
            system = content + "\n\n"
            continue
        if role in ("assistant", "model"):
            head = _encode(tokenizer, "<start_of_turn>model\n")
            body = _encode(tokenizer, f"{content}<end_of_turn>\n")
            tokens += head + body
            mask += [0] * len(head) + [1] * len(body)
        else:
            ids = _encode(tokenizer, _gemma_turn("user", system + content))
            system = ""
            tokens += ids
            mask += [0] * len(ids)
    return _shift(tokens, mask)


def _shift(tokens: list[int], completion_mask: list[int]) -> TokenizedExample:
    return TokenizedExample(input_ids=tokens[:-1], labels=tokens[1:], loss_mask=completion_mask[1:])


def tokenize_row(tokenizer: Any, row: dict[str, Any]) -> TokenizedExample:
    if "messages" in row:
        return tokenize_messages(tokenizer, row["messages"])
    return tokenize_prompt_completion(tokenizer, str(row["prompt"]), str(row["completion"]))


class SFTDataset:
    """Fixed list of sequences of `seq_length` tokens (packed or one example each); index -> numpy sample."""

    def __init__(
        self, examples: Sequence[TokenizedExample], seq_length: int, pad_id: int, packing: bool, seed: int
    ) -> None:
        self.seq_length = seq_length
        self.pad_id = pad_id
        order = list(range(len(examples)))
        random.Random(seed).shuffle(order)
        ordered = [examples[i] for i in order]
        self.sequences: list[list[TokenizedExample]] = _pack(ordered, seq_length) if packing else [[e] for e in ordered]
        self.num_examples = len(examples)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        s = self.seq_length
        input_ids = np.full(s, self.pad_id, dtype=np.int64)
        labels = np.full(s, self.pad_id, dtype=np.int64)
        loss_mask = np.zeros(s, dtype=np.float32)
        position_ids = np.zeros(s, dtype=np.int64)
        segment_ids = np.full(s, IGNORE_SEGMENT, dtype=np.int64)
        pos = 0
        for seg, ex in enumerate(self.sequences[index], 1):
            n = min(len(ex.input_ids), s - pos)
            input_ids[pos : pos + n] = ex.input_ids[:n]
            labels[pos : pos + n] = ex.labels[:n]
            loss_mask[pos : pos + n] = ex.loss_mask[:n]
            position_ids[pos : pos + n] = np.arange(n)
            segment_ids[pos : pos + n] = seg
            pos += n
        # padding positions continue counting so RoPE sees valid positions; they carry no loss and segment 0
        position_ids[pos:] = np.arange(s - pos)
        return {
            "input_ids": input_ids,
            "labels": labels,
            "loss_mask": loss_mask,
            "position_ids": position_ids,
            "segment_ids": segment_ids,
        }


def _pack(examples: Sequence[TokenizedExample], seq_length: int) -> list[list[TokenizedExample]]:
    """Greedy in order: start a new sequence when the next example does not fit (an over-long one goes alone)."""
    packs: list[list[TokenizedExample]] = []
    current: list[TokenizedExample] = []
    used = 0
    for ex in examples:
        n = len(ex.input_ids)
        if current and used + n > seq_length:
            packs.append(current)
            current, used = [], 0
        current.append(ex)
        used += n
    if current:
        packs.append(current)
    return packs


def build_sft_dataset(
    paths: Sequence[str | Path], tokenizer: Any, seq_length: int, packing: bool, seed: int
) -> SFTDataset:
    rows: list[dict[str, Any]] = []
    for path in paths:
        rows.extend(read_jsonl(path))
    examples = [tokenize_row(tokenizer, row) for row in rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return SFTDataset(examples, seq_length, pad, packing, seed)
