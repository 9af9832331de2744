"""Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling with a seed.

Sampling draws with the exponential race (argmax of p / E, E ~ Exp(1)), which picks index i with probability p_i
exactly like `torch.multinomial`, but is one elementwise op + argmax: no host sync, no data-dependent shapes, so
it behaves the same on CPU and CUDA and under tensor parallelism every rank that seeds the same generator draws
the same token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gemma3_runtime.errors import UserInputError


@dataclass(frozen=True)
class SamplingParams:
    """temperature == 0 means greedy; top_k == 0 and top_p == 1.0 mean "no truncation"."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0):
            raise UserInputError(f"--temperature: got {self.temperature}, expected a number >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise UserInputError(f"--top-k: got {self.top_k}, expected an integer >= 0 (0 = off)")
        if not (0.0 < self.top_p <= 1.0):
            raise UserInputError(f"--top-p: got {self.top_p}, expected a number in (0, 1] (1 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def make_generator(self, device: torch.device) -> torch.Generator | None:
        """A private generator so sampling is reproducible regardless of what else draws random numbers."""
        if self.greedy:
            return None
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed if self.seed is not None else shared_random_seed(device))
        return gen


def shared_random_seed(device: torch.device) -> int:
    """A fresh seed, the SAME on every rank: tensor-parallel ranks must draw the same token or they diverge."""
    import torch.distributed as dist

    seed = torch.tensor([torch.seed() % (2**62)], dtype=torch.long, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(seed, src=0)
    return int(seed.item())


def truncate_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k and outside the smallest top-p nucleus to -inf. logits: [b, V] fp32."""
    vocab = logits.size(-1)
    if 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens strictly more likely than it already cover top_p (the top one always stays)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def chunked_argmax(logits: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """`torch.argmax(logits, dim=-1)` for [b, V] logits as two reductions: the first maximum of each `chunk`-wide
    slice, then the first slice holding the overall maximum -> the same index (the FIRST maximal one, NaN counting
    as maximal, as argmax does). Why: a one-stage argmax over the 262k vocabulary compiles to one reduction per row,
    a single thread block at batch 1; the slices spread the first stage over the whole GPU. Falls back to argmax
    when V is not a multiple of `chunk`."""
    rows, vocab = logits.shape
    if vocab % chunk or vocab == chunk:
        return torch.argmax(logits, dim=-1)
    slices = logits.view(rows, vocab // chunk, chunk)
    inside = torch.argmax(slices, dim=-1)  # [b, slices]: first maximal index within each slice
    peaks = torch.gather(slices, -1, inside.unsqueeze(-1)).squeeze(-1)  # [b, slices]: each slice's maximum
    best = torch.argmax(peaks, dim=-1)  # first slice holding the overall maximum
    return best * chunk + torch.gather(inside, -1, best.unsqueeze(-1)).squeeze(-1)


def select_next_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    """logits [b, V] (any float dtype) -> token ids [b] (int64) on the same device."""
    if params.greedy:
        return torch.argmax(logits, dim=-1)
    scaled = truncate_logits(logits.float() / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(scaled, dim=-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return torch.argmax(probs / race, dim=-1)
