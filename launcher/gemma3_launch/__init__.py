"""gemma3-launch: run Gemma 3 jobs on SLURM, Kubernetes or locally from one YAML spec. Never imports torch."""

__version__ = "0.1.0"
