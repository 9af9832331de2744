"""Rank-side code for tests/gpu/test_tp_logits_gpu.py: load a TP=1 fp32 checkpoint into a TP=`tp` model on CUDA,
cast to bf16, and save the full logits (rank 0) for the test to compare."""

from __future__ import annotations

import torch
import torch.distributed as dist


def bf16_logits(
    tp: int, ckpt: str, ids: str, out: str, layers: int, hidden: int, vocab: int, window: int, device: str = "cuda"
) -> None:
    from megatron.core import dist_checkpointing
    from model_helpers import tiny_config

    from gemma3_runtime.model import Gemma3ModelProvider

    provider = Gemma3ModelProvider.from_config(
        tiny_config(num_layers=layers, hidden=hidden, vocab=vocab, window=window),
        device=device,
        attention_kernel="sdpa",
    )
    provider.tensor_model_parallel_size = tp
    model = provider.finalize().provide_distributed_model(wrap_with_ddp=False)[0]
    model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), ckpt))
    model = model.to(torch.bfloat16).eval()
    input_ids = torch.load(ids).to(device)
    with torch.no_grad():
        logits = model(input_ids=input_ids)  # full vocabulary on every TP rank (gathered by the output layer)
    if dist.get_rank() == 0:
        torch.save(logits.float().cpu(), out)
    dist.barrier()


def write_reference(root: str, layers: int, hidden: int, vocab: int, window: int) -> None:
    """On the CPU (one gloo rank): a random model with random norms, its TP=1 fp32 checkpoint, an input and the fp32
    logits. A subprocess, so the test process never initialises megatron's parallel state next to CUDA."""
    from pathlib import Path

    from megatron.core import dist_checkpointing
    from model_helpers import build_model_with_random_norms, tiny_config

    from gemma3_runtime.compat.megatron_cpu import cpu_checkpoint_io

    cfg = tiny_config(num_layers=layers, hidden=hidden, vocab=vocab, window=window)
    model = build_model_with_random_norms(cfg, seed=5)
    ids = torch.randint(0, cfg.vocab_size, (2, 200), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(input_ids=ids).float()
    out = Path(root)
    (out / "ckpt").mkdir(parents=True)
    with cpu_checkpoint_io():
        dist_checkpointing.save(model.sharded_state_dict(), str(out / "ckpt"))
    torch.save(ids, out / "ids.pt")
    torch.save(logits, out / "ref.pt")
    dist.barrier()
