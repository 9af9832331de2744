"""Context parallelism (issue #21): the zigzag sequence split and exact CP attention for Gemma 3's layer kinds.

Standalone for now: nothing in the model or the training step calls it yet (docs/CONTEXT_PARALLEL.md, "Integration").
"""
