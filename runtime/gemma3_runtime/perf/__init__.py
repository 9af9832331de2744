"""GPU training fast paths for Gemma 3 on megatron-core, each selected by a flag and each with a plain twin.

- `linear_ce`: chunked linear + cross-entropy over the 262k vocabulary (no full fp32 logits);
- `attention`: flash (SDPA is_causal) for global layers, flex with a cached sliding-window block mask for local ones;
- `compile`: torch.compile of decoder layers (or norms / MLPs) in place;
- `optim`: torch's fused AdamW inside megatron's optimizer;
- `config.PerfConfig` + `apply`: the one switchboard the training loop and the benchmark use.
Every lever is measured in bench/train_throughput.py and recorded in docs/PERFORMANCE.md.
"""
