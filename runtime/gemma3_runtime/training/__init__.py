"""Training: the config container, recipes, the megatron-core loop, checkpoints/resume, preemption, metrics."""
