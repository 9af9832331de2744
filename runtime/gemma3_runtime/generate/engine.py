"""The generation loop: one prefill forward over the prompts, then one token per step from the static KV cache.

The decode step reads only static buffers (last tokens, the column counter t, row starts) and the cache, and
advances t itself, so on CUDA it is captured once as a graph. Sessions (cache + graph) are kept for the last
(batch, columns) shape, so repeated calls of the same shape pay capture once.

A graph removes launch overhead but not kernel count: eager, a decode step is ~85 small kernels per layer
(norms in fp32, RoPE, casts), which alone would cap the 1B near 250 tokens/s. So on CUDA the step is first
compiled with torch.compile (inductor fuses the elementwise chains; matmuls stay cuBLAS) and the COMPILED step is
what the graph captures. If compilation fails the engine logs why and captures the eager step instead.

Keeping the GPU busy between tokens (CUDA): at ~2 ms per token, the host work between two replays (selection
launches, a blocking device->host read, Python bookkeeping, copying the tokens back in) was ~15% of the time, with
the GPU idle. So (1) the greedy choice is part of the captured step, which writes the chosen token straight into
its own input buffer `tokens`: the next replay needs nothing from the host; sampling (temperature / top-k / top-p
with a private generator) runs as a few device ops after the replay and writes the same buffer; (2) the host reads
tokens one step behind: each step's tokens are copied into pinned memory with non_blocking=True and an event is
recorded, and the NEXT step is enqueued before the host waits on that event. The host therefore learns that a row
hit its stop token one step late; the one extra step then computed is discarded (never emitted, never returned),
so outputs and streaming are exactly those of the synchronous loop. On CPU everything is synchronous anyway and an
extra step costs a whole forward, so the CPU reads each token right away (same loop, no read-ahead).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.generate.attention import prompt_attention, step_attention, step_attention_matmul
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
    finish_reasons: list[str]  # "stop" (a stop token) or "length" (max_new_tokens)
    prompt_lengths: list[int]
    time_to_first_token_s: float
    decode_s: float  # after the first token
    decode_steps: int
    timings: dict[str, float] = field(default_factory=dict)
    # how the decode steps ran: cuda_graph, compiled, selection_in_step (greedy argmax inside the step), read_ahead
    decode_path: dict[str, bool] = field(default_factory=dict)


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
            "(max_position_embeddings)"
        )


class _Session:
    """Cache and static decode buffers for one (batch, columns) shape; optionally a captured decode graph."""

    def __init__(
        self,
        decoder: Decoder,
        batch: int,
        columns: int,
        cuda_graph: bool,
        compile_step: bool = False,
        select_in_step: bool = True,
        tune_kernels: bool = False,
    ) -> None:
        info = decoder.info
        self.decoder = decoder
        self.tune_kernels = tune_kernels
        self.spec = CacheSpec(
            batch=batch,
            columns=columns,
            window=info.window,
            sliding=info.sliding,
            kv_heads=info.num_kv_heads,
            head_dim=info.head_dim,
            dtype=info.dtype,
            device=info.device,
        )
        self.cache = StaticKVCache(self.spec)
        device = info.device
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.column = torch.zeros((), dtype=torch.long, device=device)
        self.starts = torch.zeros(batch, dtype=torch.long, device=device)
        self.for_decoding = True
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_logits: torch.Tensor | None = None
        self.compiled = self._compile_requested = compile_step
        # True: the step itself writes argmax(logits) into `tokens` (greedy needs no work between steps)
        self.select_in_step = select_in_step
        # CPU, eager: shapes may change from step to step, so attention reads only the columns written so far and
        # needs no mask when no row is padded (see _step); a host copy of the column counter gives the widths
        self.trim = info.device.type == "cpu" and not compile_step and not cuda_graph
        self._host_column = 0
        self._unpadded = False
        self._run_step = self._compile(self._entry()) if compile_step else self._entry()
        if cuda_graph:
            self._capture()

    def _entry(self) -> Callable[[], torch.Tensor]:
        return self._step_and_select if self.select_in_step else self._step

    def _compile(self, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """tune_kernels: inductor's coordinate-descent tuning of every generated kernel (block sizes, warps) -
        ~1 minute more start-up, ~10% faster decode for the 1B on an H200 (docs/PERFORMANCE.md)."""
        options = {"coordinate_descent_tuning": True} if self.tune_kernels else None
        return torch.compile(fn, dynamic=False, options=options)

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
        self._host_column = width
        self._unpadded = not bool(batch.starts.any())
        return dec.logits(hidden)

    def _step(self) -> torch.Tensor:
        """Decode the tokens in `self.tokens` at column `self.column`; advances the column. Static shapes only
        (what compile and graph capture need); on CPU eager, trimmed to the written columns instead."""
        if self.trim:
            return self._trimmed_step()
        dec, info, t = self.decoder, self.decoder.info, self.column
        positions = (t - self.starts).clamp_min(0).view(-1, 1)
        global_mask, sliding_mask = step_masks(t, self.starts, self.spec)
        global_slot, sliding_slot = step_slots(t, self.spec)
        hidden = dec.embed(self.tokens)
        rotary = dec.rotary(positions)
        attend = step_attention_matmul if self.compiled else step_attention  # see generate/attention.py
        for layer, sliding in enumerate(info.sliding):
            q, k, v = dec.qkv(layer, hidden, rotary)
            self.cache.write_step(layer, k, v, sliding_slot if sliding else global_slot)
            attn = attend(
                q,
                self.cache.keys[layer],
                self.cache.values[layer],
                sliding_mask if sliding else global_mask,
                info.softmax_scale,
            )
            hidden = dec.finish_layer(layer, hidden, attn)
        logits = dec.logits(hidden)
        t.add_(1)
        return logits

    def _trimmed_step(self) -> torch.Tensor:
        """`_step` for CPU eager, where nothing needs static shapes: a global layer attends over columns 0..t only
        (not all S preallocated ones), a sliding layer over the ring slots written so far (slot = column while
        t < ring), and with no padded row every such key is visible, so SDPA runs without a mask (its fast path)
        and the per-step masks are not even built. Same keys, same result; fewer columns, less work per layer."""
        dec, info, t = self.decoder, self.decoder.info, self.column
        written = self._host_column + 1  # including this step's column
        widths = {False: written, True: min(written, self.spec.ring)}
        positions = (t - self.starts).clamp_min(0).view(-1, 1)
        if self._unpadded:
            masks = {False: None, True: None}
        else:
            global_mask, sliding_mask = step_masks(t, self.starts, self.spec)
            masks = {False: global_mask[..., : widths[False]], True: sliding_mask[..., : widths[True]]}
        slots = dict(zip((False, True), step_slots(t, self.spec), strict=False))
        hidden = dec.embed(self.tokens)
        rotary = dec.rotary(positions)
        for layer, sliding in enumerate(info.sliding):
            q, k, v = dec.qkv(layer, hidden, rotary)
            self.cache.write_step(layer, k, v, slots[sliding])
            width = widths[sliding]
            attn = step_attention(
                q,
                self.cache.keys[layer][:, :, :width],
                self.cache.values[layer][:, :, :width],
                masks[sliding],
                info.softmax_scale,
            )
            hidden = dec.finish_layer(layer, hidden, attn)
        logits = dec.logits(hidden)
        t.add_(1)
        self._host_column += 1
        return logits

    def _step_and_select(self) -> torch.Tensor:
        """`_step`, then the greedy token written into `self.tokens` (the next step's input) -> logits.
        Same argmax as `select_next_tokens` (first maximal index); sampling overwrites `tokens` afterwards."""
        logits = self._step()
        self.tokens.copy_(torch.argmax(logits, dim=-1).view(-1, 1))
        return logits

    def _forward(self) -> torch.Tensor:
        if self.graph is None:
            return self._run_step()
        self.graph.replay()
        return self.graph_logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode the given tokens [b] -> logits [b, V] (tests and callers that choose tokens themselves)."""
        self.tokens.copy_(tokens.view(-1, 1))
        return self._forward()

    def advance(self, sampling: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
        """Decode `self.tokens` and leave the NEXT tokens in it, all on the device (no host sync) -> `tokens` [b].

        Greedy with the selection in the step: nothing but the replay. Otherwise the choice is made here from the
        step's logits and copied into `tokens` (still device work only)."""
        logits = self._forward()
        if not (sampling.greedy and self.select_in_step):
            self.tokens.copy_(select_next_tokens(logits, sampling, generator).view(-1, 1))
        return self.tokens.view(-1)

    def _capture(self) -> None:
        """Capture the step (selection included); if that fails for any reason, log why and capture the previous
        step (logits only, selection outside the graph) so generation never breaks on a capture problem."""
        try:
            self._capture_entry()
            return
        except Exception as exc:  # noqa: BLE001 - any capture/compile failure: fall back to the logits-only step
            if not self.select_in_step:
                raise
            log.warning(
                "capturing the decode step with token selection failed (%s: %s); capturing the "
                "logits-only step (selection outside the graph)",
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
            )
        try:
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001 - a failed capture may leave an error to report here; the retry decides
            pass
        self.graph, self.graph_logits, self.select_in_step = None, None, False
        self.compiled = self._compile_requested
        self._run_step = self._compile(self._entry()) if self.compiled else self._entry()
        self._capture_entry()

    def _capture_entry(self) -> None:
        """Warm up on a side stream (allocator, lazy inits), then capture one decode step. Runs before any prefill,
        so the garbage it writes into the cache (and `tokens`) is overwritten or masked."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            try:
                for _ in range(3):
                    self._run_step()
            except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back to the eager step
                if not self.compiled:
                    raise
                log.warning(
                    "torch.compile of the decode step failed (%s: %s); capturing the eager step",
                    type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "",
                )
                self.compiled, self._run_step = False, self._entry()
                for _ in range(2):
                    self._run_step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.graph_logits = self._run_step()
        self.graph = graph


class _TokenReader:
    """Device tokens -> host lists, in order. CUDA: each `push` enqueues a non-blocking copy into one of two pinned
    buffers and records an event, `pop` waits only for the oldest push, so the host can enqueue the next step
    before waiting for this one (at most two pushes are outstanding). Elsewhere: read at once (synchronous)."""

    def __init__(self, batch: int, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pending: deque = deque()
        if self.cuda:
            self.buffers = [torch.empty(batch, dtype=torch.long, pin_memory=True) for _ in range(2)]
            self.events = [torch.cuda.Event() for _ in range(2)]
            self.pushed = 0

    def push(self, tokens: torch.Tensor) -> None:
        if not self.cuda:
            self.pending.append(tokens.tolist())
            return
        if len(self.pending) >= 2:
            raise RuntimeError("token reader: more than two reads outstanding")
        slot = self.pushed % 2
        self.buffers[slot].copy_(tokens, non_blocking=True)
        self.events[slot].record()
        self.pending.append(slot)
        self.pushed += 1

    def pop(self) -> list[int]:
        item = self.pending.popleft()
        if not self.cuda:
            return item
        self.events[item].synchronize()
        return self.buffers[item].tolist()


def _raise_recompile_limit(limit: int = 64) -> None:
    """Each session (cache shape) is one more compiled variant of the same step code; torch's default limit (8)
    would silently drop later shapes to eager."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name) and getattr(torch._dynamo.config, name) < limit:
            setattr(torch._dynamo.config, name, limit)


class Engine:
    """Generates from token ids with a `Decoder`. Not thread-safe; one engine per model."""

    def __init__(
        self,
        decoder: Decoder,
        cuda_graphs: bool | None = None,
        compile_step: bool | None = None,
        column_multiple: int = 128,
        tune_kernels: bool = False,
    ) -> None:
        self.decoder = decoder
        self.tune_kernels = tune_kernels  # see _Session._compile
        on_cuda = decoder.info.device.type == "cuda"
        if cuda_graphs and not on_cuda:
            raise UserInputError("--cuda-graphs: needs --device cuda")
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        # on CPU compiling costs minutes of start-up for a few percent; on CUDA it is what makes decode fast
        self.compile_step = on_cuda if compile_step is None else compile_step
        self.column_multiple = column_multiple
        # read tokens one step behind (CUDA: the next step is enqueued before waiting for this one's tokens);
        # on CPU it would only compute a discarded step at every stop. Tests switch it on to check the CPU logic.
        self.read_ahead = on_cuda
        self.select_in_step = True  # greedy argmax inside the (captured) step; False: the previous, separate choice
        self._session: _Session | None = None

    def _session_for(self, batch: int, columns: int, decoding: bool = True) -> _Session:
        """The cached session of this shape; a prefill-only call (1 new token) never captures or compiles."""
        s = self._session
        if s is None or s.spec.batch != batch or s.spec.columns != columns or (decoding and not s.for_decoding):
            self._session = None  # free the old cache first
            if self.compile_step and decoding:
                _raise_recompile_limit()
            s = _Session(
                self.decoder,
                batch,
                columns,
                self.cuda_graphs and decoding,
                self.compile_step and decoding,
                select_in_step=self.select_in_step,
                tune_kernels=self.tune_kernels,
            )
            s.for_decoding = decoding
            self._session = s
        return s

    def check_lengths(self, prompt_lengths: Sequence[int], max_new_tokens: int) -> None:
        check_lengths(prompt_lengths, max_new_tokens, self.decoder.info.max_positions)

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop_ids: Sequence[int] = (),
        sampling: SamplingParams = SamplingParams(),
        pad_id: int = 0,
        on_token: TokenCallback | None = None,
    ) -> GenerationOutput:
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

        reader = _TokenReader(rows, info.device)
        ahead = self.read_ahead
        start = time.perf_counter()
        logits = session.prefill(batch)
        first = select_next_tokens(logits, sampling, generator)
        reader.push(first)
        if max_new_tokens > 1:
            session.tokens.copy_(first.view(-1, 1))
        launched = 1  # tokens whose computation is enqueued (the prefill gave the first)
        first_token_at = start
        steps = 0
        for step in range(max_new_tokens):
            if ahead and step >= 1 and launched < max_new_tokens:
                # enqueue the step after this one before waiting for this one's tokens; if this read shows every
                # row stopped, that step's tokens are never read
                reader.push(session.advance(sampling, generator))
                launched += 1
            host = reader.pop()  # tokens of `step`
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
            if launched == step + 1:  # no read-ahead (or the first step: TTFT waits for no extra launch)
                reader.push(session.advance(sampling, generator))
                launched += 1
            steps += 1
        end = time.perf_counter()
        return GenerationOutput(
            tokens=out,
            finish_reasons=reasons,
            prompt_lengths=list(batch.lengths),
            time_to_first_token_s=first_token_at - start,
            decode_s=end - first_token_at,
            decode_steps=steps,
            timings={"session_setup_s": setup_s},
            decode_path={
                "cuda_graph": session.graph is not None,
                "compiled": session.compiled,
                "selection_in_step": session.select_in_step and sampling.greedy,
                "read_ahead": ahead,
            },
        )
