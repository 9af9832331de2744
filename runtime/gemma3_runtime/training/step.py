"""One training / evaluation step on megatron-core's forward-backward schedules.

Loss: per-token cross-entropy summed over loss tokens and divided by the number of loss tokens in the WHOLE global
batch (megatron's `calculate_per_token_loss`: the loss function returns (sum, count), `finalize_model_grads`
all-reduces the count over DP and scales the gradients). So the step is the same for any DP size and any split
into micro-batches, which is what makes DP=2 equal DP=1.
Packed SFT batches pass `segment_ids` so attention never crosses packed examples (data/sft.py).
Context parallelism (CP > 1): each CP rank of a data-parallel replica gets the same batch and keeps its zigzag
share of every sequence (`forward_step`, the one place); its loss sum and token count cover that share, so summing
them over the CP ranks (run_forward_backward's all-reduce, `finalize_grads`' data x context group) gives CP=1's
values, and megatron DDP reduces the gradients over the same data x context group.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch


def loss_func(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    mask = loss_mask.float()
    loss_sum = (per_token_loss.float() * mask).sum()
    count = mask.sum()
    return loss_sum, count.to(torch.int), {"lm loss": torch.stack([loss_sum.detach(), count.detach()])}


def _masked_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Labels with loss-masked tokens set to -100 (the model gives them loss 0, as loss_func's mask does anyway).

    WHY: the chunked linear+CE (gemma3_runtime.perf.linear_ce) computes its weight gradient in the forward pass and
    stays exact and fast when the upstream gradient is the same on every non-ignored token; marking masked tokens
    as ignored keeps SFT (prompt-masked) batches on that fast path instead of its slower recompute path.
    """
    return batch["labels"].masked_fill(batch["loss_mask"] == 0, -100)


def forward_step(data_iterator: Iterator[dict[str, torch.Tensor]], model: torch.nn.Module):
    from megatron.core import parallel_state

    from gemma3_runtime.perf.linear_ce import uniform_upstream_grad

    batch = next(data_iterator)
    cp_size = parallel_state.get_context_parallel_world_size()
    if cp_size > 1:
        from gemma3_runtime.parallel.context_split import split_batch

        batch = split_batch(batch, cp_size, parallel_state.get_context_parallel_rank())
    segment_ids = batch.get("segment_ids")  # absent when every row is one document (data/batches.py collate)
    with uniform_upstream_grad():  # loss_func sums the per-token losses: one upstream value on every loss token
        output = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=None,
            labels=_masked_labels(batch),
            segment_ids=segment_ids,
        )
    return output, partial(loss_func, batch["loss_mask"])


def finalize_grads(
    model: list, num_tokens: torch.Tensor | None = None, pg_collection: Any = None, force_all_reduce: bool = False
) -> None:
    """megatron's `finalize_model_grads` (the schedules' `config.finalize_model_grads_func`), with the per-token
    gradient scaling done on the device.

    WHY: megatron 0.16.1 scales by 1/num_tokens only `if num_tokens > 0`, a host read of a device value: one sync
    per step, after which the GPU waits while the host runs the optimizer's Python and launches the next step.
    Scaling by 1/max(num_tokens, 1) is the same: with no loss token every gradient is zero already.
    """
    from megatron.core import parallel_state
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads, get_pp_last_rank

    finalize_model_grads(model, num_tokens=None, pg_collection=pg_collection, force_all_reduce=force_all_reduce)
    if num_tokens is None:
        return
    if pg_collection is not None:
        pp_group, dp_cp_group = pg_collection.pp, pg_collection.dp_cp
    else:
        pp_group = parallel_state.get_pipeline_model_parallel_group()
        dp_cp_group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    if torch.distributed.get_world_size(pp_group) > 1:  # the count lives on the last stage
        torch.distributed.broadcast(num_tokens, src=get_pp_last_rank(pp_group), group=pp_group)
    if torch.distributed.get_world_size(dp_cp_group) > 1:
        torch.distributed.all_reduce(num_tokens, group=dp_cp_group)
    scaling = 1.0 / num_tokens.clamp(min=1)
    for model_chunk in model:
        model_chunk.scale_gradients(scaling)


def schedule_context(device: torch.device):
    """The CPU shims megatron's schedules need (compat module); nothing on CUDA."""
    stack = contextlib.ExitStack()
    if device.type == "cpu":
        from gemma3_runtime.compat.megatron_cpu import cpu_pipeline_schedules, cuda_synchronize_is_noop

        stack.enter_context(cpu_pipeline_schedules())
        stack.enter_context(cuda_synchronize_is_noop())  # p2p (PP > 1) waits on the device after send/recv
    return stack


def run_forward_backward(
    models: list,
    microbatches: Iterator,
    num_microbatches: int,
    seq_length: int,
    micro_batch_size: int,
    device: torch.device,
    forward_only: bool,
) -> torch.Tensor:
    """Returns [loss sum, loss-token count] over the global batch (float64, on `device`), identical on every rank.

    A device tensor, not floats: reading it makes the host wait for the GPU, and the training loop reads it only
    when it needs the value (training/pending.py), so the host can queue the next step meanwhile.
    """
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    with schedule_context(device):
        reports = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=microbatches,
            model=models,
            num_microbatches=num_microbatches,
            seq_length=seq_length,
            micro_batch_size=micro_batch_size,
            forward_only=forward_only,
        )
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    # last pipeline stage holds the losses; count each DP replica once (TP rank 0 only)
    if parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0:
        for report in reports:
            totals += report["lm loss"].to(device=device, dtype=torch.float64)
    if torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(totals)
    return totals
