"""`generate(model, tokenizer, prompts, max_new_tokens, ...)`: the Python API the CLI uses.

`model` is our megatron `Gemma3Model` (any TP size, one pipeline stage) or a transformers `Gemma3ForCausalLM`.
One engine (static cache + CUDA graph) is kept per model object, so repeated calls with the same shapes reuse
the captured decode step.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gemma3_runtime.generate.engine import Engine, GenerationOutput
from gemma3_runtime.generate.prompts import encode_prompts, stop_token_ids
from gemma3_runtime.generate.sampling import SamplingParams
from gemma3_runtime.generate.streaming import TextStream

_ENGINES: weakref.WeakKeyDictionary[torch.nn.Module, Engine] = weakref.WeakKeyDictionary()


@dataclass
class Generation:
    texts: list[str]  # completions (stop tokens and other special tokens removed)
    output: GenerationOutput  # token ids, finish reasons, timings


def decoder_for(model: torch.nn.Module):
    """The engine-facing `Decoder` for a megatron Gemma3Model or an HF Gemma3ForCausalLM."""
    if hasattr(model, "lm_head") and hasattr(model, "model") and hasattr(model.model, "layers"):
        from gemma3_runtime.generate.hf_decoder import HFGemma3Decoder

        return HFGemma3Decoder(model)
    from gemma3_runtime.generate.megatron_decoder import MegatronGemma3Decoder

    return MegatronGemma3Decoder(model)


def engine_for(
    model: torch.nn.Module,
    cuda_graphs: bool | None = None,
    compile_step: bool | None = None,
    tune_kernels: bool = False,
) -> Engine:
    """The model's engine (created once; a different cuda_graphs / compile / tuning choice creates a new one)."""
    engine = _ENGINES.get(model)
    if (
        engine is None
        or (cuda_graphs is not None and engine.cuda_graphs != cuda_graphs)
        or (compile_step is not None and engine.compile_step != compile_step)
        or engine.tune_kernels != tune_kernels
    ):
        engine = _ENGINES[model] = Engine(
            decoder_for(model), cuda_graphs=cuda_graphs, compile_step=compile_step, tune_kernels=tune_kernels
        )
    return engine


def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: str | Sequence[str],
    max_new_tokens: int = 64,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    apply_chat_template: bool = False,
    stop_ids: Sequence[int] | None = None,
    pad_id: int | None = None,
    stream: bool | Callable[[str], Any] = False,
    cuda_graphs: bool | None = None,
    compile_step: bool | None = None,
    tune_kernels: bool = False,
) -> Generation:
    """Greedy by default (temperature 0). `stream=True` prints a single prompt's text to stdout as it comes;
    a callable receives the text pieces instead. Stops per row on eos / <end_of_turn> (or `stop_ids`)."""
    single = isinstance(prompts, str)
    prompt_list = [prompts] if single else list(prompts)
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    ids = encode_prompts(tokenizer, prompt_list, apply_chat_template)
    stops = tuple(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer)
    if pad_id is None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    streamer = None
    if stream and len(prompt_list) == 1:
        streamer = TextStream(tokenizer, write=None if stream is True else stream, hidden_ids=stops)
    engine = engine_for(model, cuda_graphs, compile_step, tune_kernels)
    output = engine.generate(
        ids,
        max_new_tokens,
        stop_ids=stops,
        sampling=sampling,
        pad_id=pad_id,
        on_token=streamer.on_token if streamer else None,
    )
    if streamer is not None:
        streamer.close()
    texts = [tokenizer.decode([t for t in row if t not in stops], skip_special_tokens=True) for row in output.tokens]
    return Generation(texts=texts, output=output)
