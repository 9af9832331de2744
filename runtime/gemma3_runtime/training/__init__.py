"""Training: the config container, recipes, the Trainer and its loop, checkpoints/resume, preemption, metrics."""
