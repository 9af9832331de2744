"""Differentiable sequence communication for context parallelism (batch-first tensors, sequence on dim 1).

- `gather_sequence`: all-gather of every rank's local tokens; backward sums the gradient over the group and keeps
  each rank's own slice (reduce-scatter).
- `fetch_positions`: a halo exchange: each rank receives exactly the global positions it asks for, point-to-point
  from their owners; backward sends each gradient slice back to its owner, which adds it into its local gradient.
Both are exact: forward copies values, backward sums every contribution once.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .context_split import chunk_length


class _GatherSequence(torch.autograd.Function):
    """All-gather along the sequence; backward sums every rank's gradient and keeps this rank's slice.

    WHY not torch.distributed.nn's all_gather: on gloo its backward scatters with the GROUP rank as a global rank,
    which fails in any CP group that is not the whole world (CP x TP).
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, local, group=group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        group = ctx.group
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        parts = [p.contiguous() for p in grad.chunk(size, dim=1)]
        if dist.get_backend(group) == dist.Backend.GLOO:  # gloo has no reduce-scatter: sum everything, keep ours
            total = grad.contiguous()
            dist.all_reduce(total, group=group)
            return total.chunk(size, dim=1)[rank].contiguous(), None
        mine = torch.empty_like(parts[rank])
        dist.reduce_scatter(mine, parts, group=group)
        return mine, None


def gather_sequence(local: torch.Tensor, group=None) -> torch.Tensor:
    """[b, s_local, ...] -> [b, cp * s_local, ...]: every rank's tokens in RANK order (see gathered_positions).

    Differentiable: the backward reduce-scatters the gradient (on gloo, the CPU tests: all-reduce, then this rank's
    slice), so each rank gets the sum of every rank's gradient for its own tokens.
    """
    return _GatherSequence.apply(local.contiguous(), group if group is not None else dist.group.WORLD)


def owner_of(position: torch.Tensor, seq_len: int, cp_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(CP rank, local index) holding each global position under the zigzag split."""
    length = chunk_length(seq_len, cp_size)
    chunk = position // length
    first = chunk < cp_size
    rank = torch.where(first, chunk, 2 * cp_size - 1 - chunk)
    local = position % length + torch.where(first, 0, length)
    return rank, local


class HaloRoute:
    """Who sends which local rows to whom, for one request set; identical on every rank (computed, not exchanged)."""

    def __init__(self, requests: list[torch.Tensor], seq_len: int, cp_size: int, rank: int):
        self.rank = rank
        self.local_length = seq_len // cp_size
        self.wanted = requests[rank]  # sorted global positions this rank receives, in output order
        self.send: dict[int, torch.Tensor] = {}  # peer -> my local rows it wants
        self.recv: dict[int, torch.Tensor] = {}  # peer -> output rows its rows fill
        for peer, wanted in enumerate(requests):
            owner, local = owner_of(wanted, seq_len, cp_size)
            if peer == rank:
                for src in owner.unique().tolist():
                    self.recv[src] = (owner == src).nonzero().flatten()
                self.own_out = self.recv.pop(rank, torch.empty(0, dtype=torch.long, device=wanted.device))
                self.own_local = local[self.own_out]
            elif (owner == rank).any():
                self.send[peer] = local[owner == rank]


def _exchange(send: dict[int, torch.Tensor], recv_shapes: dict[int, tuple[int, ...]], like, group) -> dict:
    """Non-blocking point-to-point: send every tensor in `send`, receive one tensor per peer in `recv_shapes`."""
    group = group if group is not None else dist.group.WORLD
    received = {peer: like.new_empty(shape) for peer, shape in recv_shapes.items()}
    ops = [dist.P2POp(dist.isend, t.contiguous(), dist.get_global_rank(group, p), group) for p, t in send.items()]
    ops += [dist.P2POp(dist.irecv, t, dist.get_global_rank(group, p), group) for p, t in received.items()]
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    return received


class _FetchPositions(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor, route: HaloRoute, group) -> torch.Tensor:
        ctx.route, ctx.group, ctx.local_shape = route, group, local.shape
        rest = tuple(local.shape[2:])
        out = local.new_empty((local.shape[0], route.wanted.numel(), *rest))
        out[:, route.own_out] = local[:, route.own_local]
        shapes = {p: (local.shape[0], rows.numel(), *rest) for p, rows in route.recv.items()}
        received = _exchange({p: local[:, rows] for p, rows in route.send.items()}, shapes, local, group)
        for peer, rows in route.recv.items():
            out[:, rows] = received[peer]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        route = ctx.route
        rest = tuple(grad.shape[2:])
        grad_local = grad.new_zeros(ctx.local_shape)
        grad_local.index_add_(1, route.own_local, grad[:, route.own_out])
        shapes = {p: (grad.shape[0], rows.numel(), *rest) for p, rows in route.send.items()}
        received = _exchange({p: grad[:, rows] for p, rows in route.recv.items()}, shapes, grad, ctx.group)
        for peer, rows in route.send.items():
            grad_local.index_add_(1, rows, received[peer])
        return grad_local, None, None


def fetch_positions(local: torch.Tensor, route: HaloRoute, group=None) -> torch.Tensor:
    """[b, s_local, ...] -> [b, len(route.wanted), ...]: the rows at this rank's requested global positions.

    Every rank of the group must call it with the route built from the same request list (see HaloRoute).
    """
    if local.shape[1] != route.local_length:
        raise ValueError(f"local sequence: expected {route.local_length} tokens per rank, got {local.shape[1]}")
    return _FetchPositions.apply(local, route, group)
