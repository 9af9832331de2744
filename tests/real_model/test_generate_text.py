"""Text handling with the real Gemma 3 tokenizer (no model weights): chat turns, stop tokens, streaming."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def tokenizer(real_270m_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(real_270m_dir))


def test_chat_turn_without_a_template_uses_gemma_turn_tokens(tokenizer):
    from gemma3_runtime.generate.prompts import encode_prompts

    assert not tokenizer.chat_template  # the GGUF-built base tokenizer ships none
    ids = encode_prompts(tokenizer, ["Hi there"], apply_chat_template=True)[0]
    sot, eot = tokenizer.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"])
    assert ids[:2] == [tokenizer.bos_token_id, sot] and ids.count(sot) == 2 and ids.count(eot) == 1
    assert tokenizer.decode(ids) == "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"


def test_chat_template_of_the_tokenizer_wins(tokenizer):
    from gemma3_runtime.generate.prompts import encode_prompts

    tokenizer.chat_template = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
    try:
        ids = encode_prompts(tokenizer, ["Hi"], apply_chat_template=True)[0]
    finally:
        tokenizer.chat_template = None
    assert tokenizer.decode(ids) == "<bos>[user] Hi"


def test_stops_on_eos_and_end_of_turn(tokenizer):
    from gemma3_runtime.generate.prompts import stop_token_ids

    assert stop_token_ids(tokenizer, 1, [1, 106]) == (1, 106)
    assert tokenizer.convert_ids_to_tokens(106) == "<end_of_turn>"


def test_streamed_pieces_add_up_to_the_text_and_never_split_a_character(tokenizer):
    from gemma3_runtime.generate.streaming import TextStream

    text = " naïve café — ꙮ and 🂡 (byte-fallback tokens), 漢字 and emoji 🎉 done."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [106]  # a stop token at the end is hidden
    pieces: list[str] = []
    stream = TextStream(tokenizer, write=pieces.append, hidden_ids=[1, 106])
    for token in ids:
        stream.push(token)
    stream.close()
    assert "".join(pieces) == text + "\n"
    assert not any("\ufffd" in p for p in pieces)
    assert len(pieces) > 5  # it did stream
    assert "<0xF0>" in tokenizer.convert_ids_to_tokens(ids)  # a character really was split across tokens
