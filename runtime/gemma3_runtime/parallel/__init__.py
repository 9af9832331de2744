"""Context parallelism (issue #21): the zigzag sequence split and exact CP attention for Gemma 3's layer kinds.

Used by the model (Gemma3Model builds one ContextParallelState per forward, Gemma3CoreAttention calls
context_parallel_attention) and the training step (forward_step splits each batch); docs/CONTEXT_PARALLEL.md.
"""
