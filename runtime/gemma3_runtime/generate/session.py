"""One generation session: the static KV cache and the decode step of one (batch, columns) shape, compiled and
captured as a CUDA graph where that applies (see generate/engine.py for why the step is shaped this way).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import torch

from gemma3_runtime.generate.attention import prompt_attention, step_attention, step_attention_matmul
from gemma3_runtime.generate.decoder import Decoder
from gemma3_runtime.generate.kv_cache import CacheSpec, StaticKVCache, prompt_masks, step_masks, step_slots
from gemma3_runtime.generate.prompts import PromptBatch
from gemma3_runtime.generate.sampling import SamplingParams, chunked_argmax, select_next_tokens

log = logging.getLogger("gemma3_runtime.generate")

#: > 0: the greedy choice inside the step as two reductions over vocabulary slices this wide (the same index as
#: torch.argmax; see sampling.chunked_argmax); 0: one argmax. 0 until measured on the GPU
#: (bench/gpu_session/decode_variants.py, variant `chunked_argmax`, sets 1024).
ARGMAX_SLICE_IN_STEP = 0


class Session:
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
        """tune_kernels: inductor's coordinate-descent tuning of every generated kernel (block sizes, warps): more
        start-up for a faster decode (docs/PERFORMANCE.md)."""
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
        slice_width = ARGMAX_SLICE_IN_STEP
        greedy = chunked_argmax(logits, slice_width) if slice_width else torch.argmax(logits, dim=-1)
        self.tokens.copy_(greedy.view(-1, 1))
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
        except Exception as exc:  # any capture/compile failure: fall back to the logits-only step
            if not self.select_in_step:
                raise
            log.warning(
                "capturing the decode step with token selection failed (%s: %s); capturing the "
                "logits-only step (selection outside the graph)",
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
            )
        # a failed capture may leave an error to report here; the retry decides
        with contextlib.suppress(Exception):
            torch.cuda.synchronize()
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
            except Exception as exc:  # any compiler failure: fall back to the eager step
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
