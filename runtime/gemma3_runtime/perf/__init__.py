"""The speed layer: GPU training fast paths for Gemma 3 on megatron-core, each chosen by a typed PerfConfig field and
each with a plain twin that computes the same function.

- `config.PerfConfig`: the switches (torch-free); `apply`: the one step that applies them (the Trainer and the
  benchmark call it), filling the model's named hooks;
- `attention`: the plain-mask core attention (cuDNN, FlashAttention-2's window, SDPA) behind the "auto" kernel;
- `linear_ce` + `ce_triton`: chunked linear + cross-entropy over the 262k vocabulary (no full fp32 logits);
- `compile`: torch.compile of the decoder layers in place; `geglu` / `geglu_triton`, `lora_triton`: fused kernels;
- `optim`: torch's fused AdamW and the sync-free step inside megatron's optimizer; `grad_fusion`: gradient
  accumulation into fp32 main_grad; `patches`: every megatron-core function these replace, restorable in one call.
Every switch is measured with bench/train_throughput.py and recorded in docs/PERFORMANCE.md.
"""
