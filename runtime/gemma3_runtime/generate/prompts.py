"""Prompts -> token ids: the chat template for instruction-tuned models, and left-padded batches.

Left padding puts every prompt's LAST token in the same column, so one prefill ends all rows at once and every
decode step writes one shared cache column. What padding must NOT change is each row's RoPE positions (they start
at 0 on the row's first real token) and which keys a query may see (never padding, and the sliding window counted
in real tokens): `PromptBatch.starts` carries the first real column of each row for exactly that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gemma3_runtime.errors import UserInputError

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"

# Gemma's documented turn format; used when a tokenizer (e.g. one rebuilt from a GGUF file) has no chat template.
_GEMMA_TURN_FORMAT = "{bos}<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n"


@dataclass(frozen=True)
class PromptBatch:
    """input_ids [b, P] left-padded with pad_id; starts [b] = first real column of each row."""

    input_ids: torch.Tensor
    starts: torch.Tensor
    lengths: tuple[int, ...]

    @property
    def width(self) -> int:
        return int(self.input_ids.size(1))


def chat_prompt_text(tokenizer: Any, user_message: str) -> str:
    """One user turn followed by the start of the model's turn, as text (special tokens spelled out)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message}], add_generation_prompt=True, tokenize=False
        )
    vocab = tokenizer.get_vocab()
    if START_OF_TURN not in vocab or END_OF_TURN not in vocab:
        raise UserInputError(
            f"--apply-chat-template: the tokenizer has no chat template and no {START_OF_TURN}/{END_OF_TURN} tokens; "
            "expected an instruction-tuned Gemma 3 tokenizer"
        )
    return _GEMMA_TURN_FORMAT.format(bos=tokenizer.bos_token or "", content=user_message)


def encode_prompts(tokenizer: Any, prompts: Sequence[str], apply_chat_template: bool = False) -> list[list[int]]:
    """Token ids per prompt. Plain prompts get the tokenizer's special tokens (Gemma: <bos>), like HF generate."""
    if not prompts:
        raise UserInputError("prompts: got none, expected at least one prompt")
    encoded: list[list[int]] = []
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise UserInputError(f"prompt {index}: expected a string, got {type(prompt).__name__}")
        if apply_chat_template:
            ids = tokenizer(chat_prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if not ids:
            raise UserInputError(f"prompt {index}: encodes to no tokens, expected a non-empty prompt")
        encoded.append(list(ids))
    return encoded


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> PromptBatch:
    """Right-align the sequences in one [b, P] tensor."""
    lengths = tuple(len(s) for s in sequences)
    width = max(lengths)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
    starts = torch.tensor([width - n for n in lengths], dtype=torch.long)
    return PromptBatch(input_ids=ids, starts=starts, lengths=lengths)


def stop_token_ids(
    tokenizer: Any, config_eos: int | Sequence[int] | None = None, generation_eos: int | Sequence[int] | None = None
) -> tuple[int, ...]:
    """eos (tokenizer, config.json, generation_config.json) plus <end_of_turn> when the vocabulary has it.

    Stopping on <end_of_turn> always (not only with the chat template) is what the -it models need and is harmless
    for base models, which do not emit it mid-text.
    """
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, config_eos, generation_eos):
        if source is None:
            continue
        ids.update([source] if isinstance(source, int) else [int(x) for x in source])
    end_of_turn = tokenizer.get_vocab().get(END_OF_TURN)
    if end_of_turn is not None:
        ids.add(int(end_of_turn))
    return tuple(sorted(ids))
