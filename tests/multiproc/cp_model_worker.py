"""Runs on every rank under torchrun (gloo, CPU, fp32): the tiny Gemma 3 (sliding AND global layers) at some CP x TP,
on the cases of test_context_parallel_model.py.

Per case, on a fresh model with the reference run's initial weights (the CP=1 run at the same TP writes them):
- logits of a no-label forward of this rank's share, gathered back to natural order over the CP group;
- every parameter gradient of the loss (sum over loss tokens / loss tokens of the batch), summed over the CP group
  (what megatron DDP's reduction over data x context ranks does);
- the losses of 5 training steps through the product's own path: megatron DDP, `run_forward_backward` (whose
  `forward_step` splits each full-sequence batch for its CP rank), `finalize_grads` and the CPU AdamW; then the
  loss of a forward-only evaluation, as `Trainer.evaluate` runs it.
The CP rank 0 of every TP rank writes `result_tp{rank}.pt`; the test compares the files.
With `memory_savers`, the model runs megatron's full activation recompute (one layer per unit) and the chunked
linear + cross-entropy loss (perf/linear_ce.py, small chunks so that every row spans several); the result then also
counts the decoder layers' forward calls and the chunked loss's calls of one forward + backward, to show both ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from model_helpers import tiny_config

BATCH, SEQ_LEN, STEPS, LR = 2, 32, 5, 1e-3


def _batch(seed: int, vocab: int, packed: bool) -> dict[str, torch.Tensor]:
    """A full-sequence training batch; packed rows hold 3-4 documents (positions restart at each, as data/sft.py's)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (BATCH, SEQ_LEN + 1), generator=gen)
    loss_mask = (torch.rand(BATCH, SEQ_LEN, generator=gen) > 0.2).float()
    segments = torch.ones(BATCH, SEQ_LEN, dtype=torch.long)
    positions = torch.arange(SEQ_LEN).expand(BATCH, SEQ_LEN).clone()
    if packed:
        for row in range(BATCH):
            cuts = sorted(torch.randperm(SEQ_LEN - 1, generator=gen)[:3].add(1).tolist())
            for cut in cuts:
                segments[row, cut:] += 1
                positions[row, cut:] = torch.arange(SEQ_LEN - cut)
    batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": loss_mask, "position_ids": positions}
    if packed:
        batch["segment_ids"] = segments
    return batch


#: what `memory_savers` turns on: train.recompute_granularity=full's provider fields and a small loss chunk
RECOMPUTE = {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
LOSS_CHUNK_BYTES = 4096


def _build(window: int, cp: int, tp: int, memory_savers: bool = False):
    from gemma3_runtime.model.provider import Gemma3ModelProvider

    provider = Gemma3ModelProvider.from_config(
        tiny_config(num_layers=3, window=window),  # layers 0, 1 sliding, layer 2 global
        device="cpu",
        tensor_model_parallel_size=tp,
        context_parallel_size=cp,
        attention_kernel="sdpa",
        transformer_overrides={"calculate_per_token_loss": True},
        **(RECOMPUTE if memory_savers else {}),
    )
    model = provider.provide_distributed_model(wrap_with_ddp=False)[0]
    if memory_savers:
        import functools

        from gemma3_runtime.perf.linear_ce import linear_cross_entropy

        model.fused_loss = functools.partial(linear_cross_entropy, chunk_bytes=LOSS_CHUNK_BYTES)
    return model


def _count_calls(model) -> dict[str, int]:
    """Counters of the decoder layers' forward calls and the fused loss's calls (hooks left in place)."""
    counts = {"layer_forwards": 0, "fused_loss_calls": 0}

    def count_layer(*_):
        counts["layer_forwards"] += 1

    for layer in model.decoder.layers:
        layer.register_forward_pre_hook(count_layer)
    if model.fused_loss is not None:
        loss = model.fused_loss

        def counted_loss(*args, **kwargs):
            counts["fused_loss_calls"] += 1
            return loss(*args, **kwargs)

        model.fused_loss = counted_loss
    return counts


def _gather_natural(local: torch.Tensor) -> torch.Tensor:
    from megatron.core import parallel_state

    from gemma3_runtime.parallel.context_split import merge_ranks

    group = parallel_state.get_context_parallel_group()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local.contiguous(), group=group)
    return merge_ranks(parts, seq_dim=1)


def _share(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from megatron.core import parallel_state

    from gemma3_runtime.parallel.context_split import split_batch

    cp = parallel_state.get_context_parallel_world_size()
    return split_batch(batch, cp, parallel_state.get_context_parallel_rank()) if cp > 1 else batch


def _logits_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from megatron.core import parallel_state

    local = _share(batch)
    inputs = {"input_ids": local["input_ids"], "position_ids": local["position_ids"]}
    inputs["segment_ids"] = local.get("segment_ids")
    with torch.no_grad():
        logits = _gather_natural(model(**inputs))
    counts = _count_calls(model)
    per_token = model(**inputs, labels=local["labels"])
    loss = (per_token * local["loss_mask"]).sum() / batch["loss_mask"].sum()
    loss.backward()
    calls = dict(counts)
    grads = {}
    for name, p in model.named_parameters():
        grad = p.grad.clone()
        dist.all_reduce(grad, group=parallel_state.get_context_parallel_group())
        grads[name] = grad
        p.grad = None
    return logits, grads, calls


def _train(model, batch, steps: int) -> list[float]:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from gemma3_runtime.training.config import OptimizerConfig
    from gemma3_runtime.training.optimizer import build_optimizer
    from gemma3_runtime.training.step import finalize_grads, run_forward_backward

    ddp = DistributedDataParallel(
        config=model.config, ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True), module=model
    )
    model.config.finalize_model_grads_func = finalize_grads
    model.config.no_sync_func = ddp.no_sync
    optimizer = build_optimizer([ddp], OptimizerConfig(lr=LR, weight_decay=0.0), torch.device("cpu"), False)
    losses = []
    for _ in range(steps):
        ddp.zero_grad_buffer()
        totals = run_forward_backward([ddp], iter([batch]), 1, SEQ_LEN, BATCH, torch.device("cpu"), False)
        optimizer.step(LR)
        losses.append(float(totals[0] / totals[1]))
    ddp.eval()  # then an evaluation (forward only, as Trainer.evaluate) of the trained model
    with torch.no_grad():
        totals = run_forward_backward([ddp], iter([batch]), 1, SEQ_LEN, BATCH, torch.device("cpu"), True)
    return losses + [float(totals[0] / totals[1])]


def run(cp: int, tp: int, cases: list[dict], out_dir: str, init_dir: str, memory_savers: bool = False) -> None:
    """Each case: {"name", "window", "packed", "seed"}. `init_dir`: where the CP=1 run at this TP wrote (or, being
    that run, writes) its initial weights."""
    from megatron.core import parallel_state

    torch.set_num_threads(1)
    results = {}
    for case in cases:
        model = _build(case["window"], cp, tp, memory_savers)
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        init = Path(init_dir) / f"init_tp{tp_rank}.pt"
        if cp == 1 and not init.exists():
            torch.save(model.state_dict(), init)
        else:
            model.load_state_dict(torch.load(init))
        batch = _batch(case["seed"], tiny_config().vocab_size, case["packed"])
        logits, grads, calls = _logits_and_grads(model, batch)
        *losses, eval_loss = _train(model, batch, STEPS)
        results[case["name"]] = {"logits": logits, "grads": grads, "losses": losses, "eval_loss": eval_loss, **calls}
    if parallel_state.get_context_parallel_rank() == 0:
        torch.save(results, Path(out_dir) / f"result_tp{parallel_state.get_tensor_model_parallel_rank()}.pt")
    dist.barrier()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"cp={cp} tp={tp}: {len(cases)} cases done", flush=True)
