"""The generation loop: one prefill forward over the prompts, then one token per step from the static KV cache.

The decode step reads only static buffers (last tokens, the column counter t, row starts) and the cache, and
advances t itself, so on CUDA it is captured once as a graph. Sessions (cache + graph) are kept for the last
(batch, columns) shape, so repeated calls of the same shape pay capture once.

A graph removes launch overhead but not kernel count: eager, a decode step is ~85 small kernels per layer
(norms in fp32, RoPE, casts), which alone caps decode speed (docs/PERFORMANCE.md). So on CUDA the step is first
compiled with torch.compile (inductor fuses the elementwise chains; matmuls stay cuBLAS) and the COMPILED step is
what the graph captures. If compilation fails the engine logs why and captures the eager step instead.

Keeping the GPU busy between tokens (CUDA): at a few ms per token, the host work between two replays (selection
launches, a blocking device->host read, Python bookkeeping, copying the tokens back in) is a large share of the time,
with the GPU idle. So (1) the greedy choice is part of the captured step, which writes the chosen token straight into
its own input buffer `tokens`: the next replay needs nothing from the host; sampling (temperature / top-k / top-p with a
private generator) runs as a few device ops after the replay and writes the same buffer; (2) the host reads tokens one
step behind: each step's tokens are copied into pinned memory with non_blocking=True and an event is recorded, and the
NEXT step is enqueued before the host waits on that event. The host therefore learns that a row hit its stop token one
step late; the one extra step then computed is discarded (never emitted, never returned), so outputs and streaming are
exactly those of the synchronous loop. On CPU everything is synchronous anyway and an extra step costs a whole forward,
so the CPU reads each token right away (same loop, no read-ahead).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.generate.decoder import Decoder
from gemma3_runtime.generate.prompts import left_pad
from gemma3_runtime.generate.sampling import SamplingParams, select_next_tokens
from gemma3_runtime.generate.session import Session

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
        self.tune_kernels = tune_kernels  # see Session._compile
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
        self._session: Session | None = None

    def _session_for(self, batch: int, columns: int, decoding: bool = True) -> Session:
        """The cached session of this shape; a prefill-only call (1 new token) never captures or compiles."""
        s = self._session
        if s is None or s.spec.batch != batch or s.spec.columns != columns or (decoding and not s.for_decoding):
            self._session = None  # free the old cache first
            if self.compile_step and decoding:
                _raise_recompile_limit()
            s = Session(
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
        sampling: SamplingParams | None = None,
        pad_id: int = 0,
        on_token: TokenCallback | None = None,
    ) -> GenerationOutput:
        sampling = sampling if sampling is not None else SamplingParams()
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
