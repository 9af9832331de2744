"""Print text as tokens arrive, without splitting characters or mangling SentencePiece spaces.

Decoding token by token loses the leading-space marker and splits multi-byte characters across tokens, so we
decode the whole generated sequence each time and emit only the new suffix, holding back while the text ends in
an incomplete character (U+FFFD). Generations are short, so re-decoding is cheap next to a model step.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any


class TextStream:
    def __init__(
        self, tokenizer: Any, write: Callable[[str], Any] | None = None, hidden_ids: Iterable[int] = ()
    ) -> None:
        self.tokenizer = tokenizer
        self.write = write or _stdout_write
        self.hidden = set(int(i) for i in hidden_ids)  # e.g. stop tokens: never shown
        self.ids: list[int] = []
        self.printed = ""

    def push(self, token_id: int) -> None:
        if token_id in self.hidden:
            return
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        self._emit(text)

    def on_token(self, _step: int, tokens: list[int | None]) -> None:
        """The engine's per-step callback for a batch of one."""
        if tokens[0] is not None:
            self.push(tokens[0])

    def close(self) -> None:
        self._emit(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        self.write("\n")

    def _emit(self, text: str) -> None:
        if len(text) > len(self.printed):
            self.write(text[len(self.printed) :])
            self.printed = text


def _stdout_write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
