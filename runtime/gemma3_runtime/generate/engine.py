"""The generation loop: one prefill forward over the prompts, then one token per step from the static KV cache.

The decode step reads only static buffers (last tokens, the column counter t, row starts) and the cache, and
advances t itself, so on CUDA it is captured once as a graph and each token costs one replay, one argmax/sampling
and one device->host read of the new tokens (needed anyway for streaming and per-row stopping). Sessions (cache +
graph) are kept for the last (batch, columns) shape, so repeated calls of the same shape pay capture once.

A graph removes launch overhead but not kernel count: eager, a decode step is ~85 small kernels per layer
(norms in fp32, RoPE, casts), which alone would cap the 1B near 250 tokens/s. So on CUDA the step is first
compiled with torch.compile (inductor fuses the elementwise chains; matmuls stay cuBLAS) and the COMPILED step is
what the graph captures. If compilation fails the engine logs why and captures the eager step instead.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.generate.attention import prompt_attention, step_attention
from gemma3_runtime.generate.decoder import Decoder
from gemma3_runtime.generate.kv_cache import CacheSpec, StaticKVCache, prompt_masks, step_masks, step_slots
from gemma3_runtime.generate.prompts import PromptBatch, left_pad
from gemma3_runtime.generate.sampling import SamplingParams, select_next_tokens

log = logging.getLogger("gemma3_runtime.generate")

#: called after every step with (step index, the new token of every row; None for rows already finished)
TokenCallback = Callable[[int, list[int | None]], None]


@dataclass
class GenerationOutput:
    """tokens: generated ids per prompt, including the stop token when one ended the row (as HF returns them)."""

    tokens: list[list[int]]
    finish_reasons: list[str]                   # "stop" (a stop token) or "length" (max_new_tokens)
    prompt_lengths: list[int]
    time_to_first_token_s: float
    decode_s: float                             # after the first token
    decode_steps: int
    timings: dict[str, float] = field(default_factory=dict)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def check_lengths(prompt_lengths: Sequence[int], max_new_tokens: int, max_positions: int) -> None:
    """Every prompt plus max_new_tokens must fit the model's context (RoPE positions past it were never trained)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UserInputError(f"--max-new-tokens: got {max_new_tokens!r}, expected an integer >= 1")
    longest = max(prompt_lengths)
    if longest + max_new_tokens > max_positions:
        raise UserInputError(
            f"--max-new-tokens: prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) = "
            f"{longest + max_new_tokens} exceeds the model's context of {max_positions} tokens "
            "(max_position_embeddings)")


class _Session:
    """Cache and static decode buffers for one (batch, columns) shape; optionally a captured decode graph."""

    def __init__(self, decoder: Decoder, batch: int, columns: int, cuda_graph: bool, compile_step: bool = False) -> None:
        info = decoder.info
        self.decoder = decoder
        self.spec = CacheSpec(batch=batch, columns=columns, window=info.window, sliding=info.sliding,
                              kv_heads=info.num_kv_heads, head_dim=info.head_dim, dtype=info.dtype,
                              device=info.device)
        self.cache = StaticKVCache(self.spec)
        device = info.device
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.column = torch.zeros((), dtype=torch.long, device=device)
        self.starts = torch.zeros(batch, dtype=torch.long, device=device)
        self.for_decoding = True
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_logits: torch.Tensor | None = None
        self.compiled = compile_step
        self._run_step = torch.compile(self._step, dynamic=False) if compile_step else self._step
        if cuda_graph:
            self._capture()

    # ---- the two forwards --------------------------------------------------------------------------------------
    def prefill(self, batch: PromptBatch) -> torch.Tensor:
        """Run the prompts (columns 0..P-1) in one forward, fill the cache -> last-position logits [b, V]."""
        dec, info = self.decoder, self.decoder.info
        ids = batch.input_ids.to(info.device)
        starts = batch.starts.to(info.device)
        width = ids.size(1)
        positions = (torch.arange(width, device=info.device).view(1, -1) - starts.view(-1, 1)).clamp_min(0)
        global_mask, sliding_mask = prompt_masks(starts, width, info.window)
        hidden = dec.embed(ids)
        rotary = dec.rotary(positions)
        for layer, sliding in enumerate(info.sliding):
            q, k, v = dec.qkv(layer, hidden, rotary)
            self.cache.write_prompt(layer, k, v)
            mask = sliding_mask if sliding else global_mask
            hidden = dec.finish_layer(layer, hidden, prompt_attention(q, k, v, mask, info.softmax_scale))
        self.starts.copy_(starts)
        self.column.fill_(width)
        return dec.logits(hidden)

    def _step(self) -> torch.Tensor:
        """Decode the tokens in `self.tokens` at column `self.column`; advances the column. Static shapes only."""
        dec, info, t = self.decoder, self.decoder.info, self.column
        positions = (t - self.starts).clamp_min(0).view(-1, 1)
        global_mask, sliding_mask = step_masks(t, self.starts, self.spec)
        global_slot, sliding_slot = step_slots(t, self.spec)
        hidden = dec.embed(self.tokens)
        rotary = dec.rotary(positions)
        for layer, sliding in enumerate(info.sliding):
            q, k, v = dec.qkv(layer, hidden, rotary)
            self.cache.write_step(layer, k, v, sliding_slot if sliding else global_slot)
            attn = step_attention(q, self.cache.keys[layer], self.cache.values[layer],
                                  sliding_mask if sliding else global_mask, info.softmax_scale)
            hidden = dec.finish_layer(layer, hidden, attn)
        logits = dec.logits(hidden)
        t.add_(1)
        return logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens.view(-1, 1))
        if self.graph is None:
            return self._run_step()
        self.graph.replay()
        return self.graph_logits

    def _capture(self) -> None:
        """Warm up on a side stream (allocator, lazy inits), then capture one decode step. Runs before any prefill,
        so the garbage it writes into the cache is overwritten or masked."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            try:
                for _ in range(3):
                    self._run_step()
            except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back to the eager step
                if not self.compiled:
                    raise
                log.warning("torch.compile of the decode step failed (%s: %s); capturing the eager step",
                            type(exc).__name__, str(exc).splitlines()[0][:200])
                self.compiled, self._run_step = False, self._step
                for _ in range(2):
                    self._step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.graph_logits = self._run_step()
        self.graph = graph


def _raise_recompile_limit(limit: int = 64) -> None:
    """Each session (cache shape) is one more compiled variant of the same step code; torch's default limit (8)
    would silently drop later shapes to eager."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name) and getattr(torch._dynamo.config, name) < limit:
            setattr(torch._dynamo.config, name, limit)


class Engine:
    """Generates from token ids with a `Decoder`. Not thread-safe; one engine per model."""

    def __init__(self, decoder: Decoder, cuda_graphs: bool | None = None, compile_step: bool | None = None,
                 column_multiple: int = 128) -> None:
        self.decoder = decoder
        on_cuda = decoder.info.device.type == "cuda"
        if cuda_graphs and not on_cuda:
            raise UserInputError("--cuda-graphs: needs --device cuda")
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        # on CPU compiling costs minutes of start-up for a few percent; on CUDA it is what makes decode fast
        self.compile_step = on_cuda if compile_step is None else compile_step
        self.column_multiple = column_multiple
        self._session: _Session | None = None

    def _session_for(self, batch: int, columns: int, decoding: bool = True) -> _Session:
        """The cached session of this shape; a prefill-only call (1 new token) never captures or compiles."""
        s = self._session
        if s is None or s.spec.batch != batch or s.spec.columns != columns or (decoding and not s.for_decoding):
            self._session = None  # free the old cache first
            if self.compile_step and decoding:
                _raise_recompile_limit()
            s = _Session(self.decoder, batch, columns, self.cuda_graphs and decoding, self.compile_step and decoding)
            s.for_decoding = decoding
            self._session = s
        return s

    def check_lengths(self, prompt_lengths: Sequence[int], max_new_tokens: int) -> None:
        check_lengths(prompt_lengths, max_new_tokens, self.decoder.info.max_positions)

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int] = (),
                 sampling: SamplingParams = SamplingParams(), pad_id: int = 0,
                 on_token: TokenCallback | None = None) -> GenerationOutput:
        batch = left_pad(prompt_ids, pad_id)
        self.check_lengths(batch.lengths, max_new_tokens)
        info = self.decoder.info
        columns = round_up(batch.width + max_new_tokens, self.column_multiple)
        began = time.perf_counter()
        session = self._session_for(len(batch.lengths), columns, decoding=max_new_tokens > 1)
        setup_s = time.perf_counter() - began
        generator = sampling.make_generator(info.device)
        stops = set(int(s) for s in stop_ids)
        rows = len(batch.lengths)
        out: list[list[int]] = [[] for _ in range(rows)]
        reasons = ["length"] * rows
        done = [False] * rows

        start = time.perf_counter()
        logits = session.prefill(batch)
        first_token_at = start
        steps = 0
        for step in range(max_new_tokens):
            next_tokens = select_next_tokens(logits, sampling, generator)
            host = next_tokens.tolist()  # the one host sync per token
            if step == 0:
                first_token_at = time.perf_counter()
            emitted: list[int | None] = []
            for row, token in enumerate(host):
                if done[row]:
                    emitted.append(None)
                    continue
                out[row].append(token)
                emitted.append(token)
                if token in stops:
                    done[row], reasons[row] = True, "stop"
            if on_token is not None:
                on_token(step, emitted)
            if all(done) or step == max_new_tokens - 1:
                break
            logits = session.step(next_tokens)
            steps += 1
        end = time.perf_counter()
        return GenerationOutput(tokens=out, finish_reasons=reasons, prompt_lengths=list(batch.lengths),
                                time_to_first_token_s=first_token_at - start, decode_s=end - first_token_at,
                                decode_steps=steps, timings={"session_setup_s": setup_s})
