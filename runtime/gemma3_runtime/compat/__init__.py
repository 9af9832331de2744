"""Compatibility shims for running megatron-core without CUDA (see megatron_cpu.py)."""
