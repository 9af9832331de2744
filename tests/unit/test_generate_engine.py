"""The KV-cached engine on tiny random Gemma 3 models: every cached step must give the logits of a full forward
of the whole sequence without a cache - per row of a left-padded batch, with a window of 4 so the sliding layers'
ring buffer wraps in the prefill and while decoding, global layers in between."""

from __future__ import annotations

import pytest
import torch
from model_helpers import build_model, hf_model, tiny_config

pytestmark = pytest.mark.unit

WINDOW = 4


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = tiny_config(num_layers=6, window=WINDOW)
    model = build_model(cfg)
    with torch.no_grad():  # make norms non-trivial so a wrong norm or residual order shows
        for name, p in model.named_parameters():
            if "layernorm" in name:
                p.normal_(0.0, 0.3)
    return cfg, model


def _full_forward_logits(model, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids])
    with torch.no_grad():
        return model(input_ids=x, position_ids=torch.arange(len(ids)).view(1, -1))[0]  # [s, V]


def test_cached_steps_equal_full_forward_per_row_of_a_left_padded_batch(tiny):
    from gemma3_runtime.generate.api import decoder_for
    from gemma3_runtime.generate.prompts import left_pad
    from gemma3_runtime.generate.session import Session as _Session

    cfg, model = tiny
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, cfg.vocab_size, (n,), generator=gen).tolist() for n in (3, 9, 6)]
    steps = 7
    feed = [torch.randint(3, cfg.vocab_size, (steps,), generator=gen).tolist() for _ in prompts]
    batch = left_pad(prompts, pad_id=0)
    session = _Session(decoder_for(model), batch=3, columns=batch.width + steps, cuda_graph=False)
    with torch.no_grad():
        logits = [session.prefill(batch)]
        for i in range(steps):
            logits.append(session.step(torch.tensor([f[i] for f in feed])).clone())
    for row, prompt in enumerate(prompts):
        full = _full_forward_logits(model, prompt + feed[row])
        for i, got in enumerate(logits):
            torch.testing.assert_close(
                got[row],
                full[len(prompt) - 1 + i],
                atol=2e-5,
                rtol=1e-5,
                msg=lambda m, row=row, i=i: f"row {row} step {i}: {m}",
            )


def test_greedy_tokens_equal_argmax_of_full_forwards(tiny):
    from gemma3_runtime.generate.api import engine_for

    cfg, model = tiny
    prompt = [2, 17, 99, 5, 230, 41]
    out = engine_for(model).generate([prompt], 12, stop_ids=())
    seq = list(prompt)
    for _ in range(12):
        seq.append(int(_full_forward_logits(model, seq)[-1].argmax()))
    assert out.tokens[0] == seq[len(prompt) :]
    assert out.finish_reasons == ["length"] and out.decode_steps == 11


def test_rows_stop_independently_on_their_stop_token(tiny):
    from gemma3_runtime.generate.api import engine_for

    cfg, model = tiny
    engine = engine_for(model)
    prompts = [[2, 17, 99, 5], [2, 8, 300]]
    free = engine.generate(prompts, 10, stop_ids=())
    stop = free.tokens[0][3]  # row 0's 4th token becomes a stop token
    out = engine.generate(prompts, 10, stop_ids=[stop])
    first = free.tokens[0].index(stop)
    assert out.tokens[0] == free.tokens[0][: first + 1] and out.finish_reasons[0] == "stop"
    if stop not in free.tokens[1]:
        assert out.tokens[1] == free.tokens[1] and out.finish_reasons[1] == "length"


def test_engine_drives_transformers_model_like_its_generate():
    from gemma3_runtime.generate.api import engine_for

    cfg = tiny_config(num_layers=6, window=WINDOW)
    hf = hf_model(cfg, seed=3)
    prompt = [2, 45, 11, 300, 7, 7, 123, 9]
    out = engine_for(hf).generate([prompt], 10, stop_ids=())
    ref = hf.generate(
        torch.tensor([prompt]),
        max_new_tokens=10,
        do_sample=False,
        top_k=None,
        top_p=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert out.tokens[0] == ref[0, len(prompt) :].tolist()


def test_plain_linear_path_equals_the_megatron_modules(tiny):
    """The decoder's F.linear path for plain TP=1 layers (on CPU with the fused QKV / gate|up weights multiplied as
    row slices) computes what megatron's modules compute, to float rounding: same tokens for a left-padded batch,
    same step logits; a PEFT-adapted layer is never taken for plain."""
    from gemma3_runtime.generate.engine import Engine
    from gemma3_runtime.generate.megatron_decoder import MegatronGemma3Decoder
    from gemma3_runtime.peft.apply import apply_peft
    from gemma3_runtime.peft.config import PeftConfig

    _, model = tiny
    plain, modules = MegatronGemma3Decoder(model), MegatronGemma3Decoder(model)
    assert all(plain.plain)
    modules.plain = [False] * len(modules.plain)
    prompts = [[2, 17, 99], [2, 8, 300, 41, 5, 6, 7]]
    runs = [Engine(d, compile_step=False).generate(prompts, 6, stop_ids=()) for d in (plain, modules)]
    assert runs[0].tokens == runs[1].tokens
    session_logits = []
    for d in (plain, modules):
        engine = Engine(d, compile_step=False)
        engine.generate(prompts, 3, stop_ids=())
        session_logits.append(engine._session.step(torch.tensor([5, 9])))
    torch.testing.assert_close(session_logits[0], session_logits[1], rtol=1e-5, atol=1e-5)

    adapted = build_model(tiny_config(num_layers=2, window=WINDOW))
    apply_peft(adapted, PeftConfig(kind="lora", rank=4, alpha=8, targets=["linear_proj"]))
    assert MegatronGemma3Decoder(adapted).plain == [False, False]


def test_context_overflow_is_user_error(tiny):
    from gemma3_runtime.errors import UserInputError
    from gemma3_runtime.generate.api import engine_for

    cfg, model = tiny
    with pytest.raises(UserInputError, match="exceeds the model's context of 1024 tokens"):
        engine_for(model).generate([[2] * 1000], 25)
    with pytest.raises(UserInputError, match="max-new-tokens"):
        engine_for(model).generate([[2, 3]], 0)


@pytest.mark.slow
def test_compiled_step_equals_eager_step():
    """The decode step as torch.compile traces it (what CUDA graphs capture on GPU) computes what the eager one
    does: same tokens for a left-padded batch, the ring wrapping while decoding."""
    from gemma3_runtime.generate.api import decoder_for
    from gemma3_runtime.generate.engine import Engine

    torch.manual_seed(0)
    model = build_model(
        tiny_config(
            num_layers=3, window=WINDOW, layer_types=("sliding_attention", "full_attention", "sliding_attention")
        )
    )
    prompts = [[2, 17, 99], [2, 8, 300, 41, 5, 6]]
    eager = Engine(decoder_for(model), compile_step=False).generate(prompts, 8)
    compiled_engine = Engine(decoder_for(model), compile_step=True)
    compiled = compiled_engine.generate(prompts, 8)
    assert compiled_engine._session.compiled
    assert compiled.tokens == eager.tokens


def test_read_ahead_stopping_discards_the_extra_step(tiny):
    """Reading tokens one step behind (the CUDA loop) learns of a stop one step late: the step already enqueued
    must be discarded - tokens, finish reasons, streamed callbacks and decode_steps exactly as the synchronous loop
    gives them. Row 0 stops before row 1; then both rows stop (the loop must still end early)."""
    from gemma3_runtime.generate.api import decoder_for
    from gemma3_runtime.generate.engine import Engine

    cfg, model = tiny
    prompts = [[2, 17, 99, 5], [2, 8, 300]]
    sync = Engine(decoder_for(model))
    assert not sync.read_ahead  # CPU default
    free = sync.generate(prompts, 10, stop_ids=())
    stop0 = free.tokens[0][2]
    stop1 = free.tokens[1][6]
    cases = [[stop0], [stop0, stop1]]
    for stops in cases:
        results = []
        for ahead in (False, True):
            engine = Engine(decoder_for(model))
            engine.read_ahead = ahead
            streamed: list[tuple[int, list]] = []
            out = engine.generate(
                prompts,
                10,
                stop_ids=stops,
                on_token=lambda step, toks, streamed=streamed: streamed.append((step, list(toks))),
            )
            assert out.decode_path["read_ahead"] is ahead
            results.append((out.tokens, out.finish_reasons, out.decode_steps, streamed))
        assert results[1] == results[0], f"stops {stops}"
        tokens, reasons, steps, streamed = results[0]
        first0 = free.tokens[0].index(stop0)
        assert tokens[0] == free.tokens[0][: first0 + 1] and reasons[0] == "stop"
        assert all(toks[0] is None for step, toks in streamed if step > first0)
        assert len(streamed) == max(len(t) for t in tokens) == steps + 1


@pytest.mark.parametrize("argmax_slice", [0, 20])
def test_selection_inside_the_step_equals_selection_outside(tiny, monkeypatch, argmax_slice):
    """Greedy argmax inside the step (written into the next step's input) gives the tokens of the previous
    logits-only step + separate argmax, batched and with read-ahead; also with the two-stage (sliced) argmax."""
    from gemma3_runtime.generate import session as session_mod
    from gemma3_runtime.generate.api import decoder_for
    from gemma3_runtime.generate.engine import Engine

    cfg, model = tiny
    assert argmax_slice == 0 or (cfg.vocab_size % argmax_slice == 0 and cfg.vocab_size > argmax_slice)
    monkeypatch.setattr(session_mod, "ARGMAX_SLICE_IN_STEP", argmax_slice)
    sliced_calls = []
    real_chunked = session_mod.chunked_argmax
    monkeypatch.setattr(session_mod, "chunked_argmax", lambda *a: sliced_calls.append(1) or real_chunked(*a))
    prompts = [[2, 17, 99], [2, 8, 300, 41, 5, 6]]
    outs = []
    for inside in (False, True):
        engine = Engine(decoder_for(model))
        engine.select_in_step, engine.read_ahead = inside, inside
        out = engine.generate(prompts, 9)
        assert out.decode_path["selection_in_step"] is inside
        outs.append(out.tokens)
    assert outs[0] == outs[1]
    assert bool(sliced_calls) is bool(argmax_slice)  # the sliced path ran exactly when switched on


def test_read_ahead_through_the_double_buffered_reader(tiny, monkeypatch):
    """The CUDA reader's bookkeeping (two pinned slots, one event each, at most two reads outstanding) driven on
    CPU with stand-in events: same tokens and stops as the synchronous loop."""
    from gemma3_runtime.generate import engine as engine_mod
    from gemma3_runtime.generate.api import decoder_for

    class _Event:
        def record(self):
            pass

        def synchronize(self):
            pass

    class _CpuAsPinned(engine_mod._TokenReader):
        def __init__(self, batch, device):
            super().__init__(batch, device)
            self.cuda, self.pushed = True, 0
            self.buffers = [torch.full((batch,), -1, dtype=torch.long) for _ in range(2)]
            self.events = [_Event(), _Event()]

    cfg, model = tiny
    prompts = [[2, 17, 99, 5], [2, 8, 300]]
    free = engine_mod.Engine(decoder_for(model)).generate(prompts, 10, stop_ids=())
    stops = [free.tokens[0][1], free.tokens[1][5]]
    expected = engine_mod.Engine(decoder_for(model)).generate(prompts, 10, stop_ids=stops)
    monkeypatch.setattr(engine_mod, "_TokenReader", _CpuAsPinned)
    engine = engine_mod.Engine(decoder_for(model))
    engine.read_ahead = True
    for new_tokens in (10, 2, 1):
        got = engine.generate(prompts, new_tokens, stop_ids=stops)
        want = (
            expected
            if new_tokens == 10
            else engine_mod.Engine(decoder_for(model)).generate(prompts, new_tokens, stop_ids=stops)
        )
        assert (got.tokens, got.finish_reasons, got.decode_steps) == (
            want.tokens,
            want.finish_reasons,
            want.decode_steps,
        )
