"""What the plan needs to know about each kind of cluster (its limits), built at the CLI edge, not in the plan."""

from __future__ import annotations

import os
import sys

from .plan import Cluster

#: GPUs per node a SLURM / Kubernetes cluster allows, unless the site says otherwise through this variable.
MAX_GPUS_ENV = "GEMMA3_LAUNCH_MAX_GPUS_PER_NODE"
#: the image a job uses when neither the spec nor --image names one (the same name the job's env records it under).
IMAGE_ENV = "GEMMA3_LAUNCH_IMAGE"


def cluster_for(backend: str, *, require_pinned_image: bool = False, image: str | None = None) -> Cluster:
    """The target's limits, plus the image choices from this edge (`--image`, GEMMA3_LAUNCH_IMAGE) the plan ranks."""
    images = {"image_flag": image, "image_env": os.environ.get(IMAGE_ENV) or None}
    if backend == "local":
        from .backends.local import detect_gpus

        return Cluster(
            "local",
            max_gpus_per_node=detect_gpus(),
            max_nodes=1,
            require_pinned_image=require_pinned_image,
            workdir=os.getcwd(),
            python=sys.executable,  # the launcher's own environment runs local jobs
            **images,
        )
    max_gpus = int(os.environ.get(MAX_GPUS_ENV, "8"))
    workdir = os.getcwd() if backend == "slurm" else ""  # the SLURM job's working dir; k8s run dirs are in-pod
    return Cluster(
        backend,  # type: ignore[arg-type]
        max_gpus_per_node=max_gpus,
        require_pinned_image=require_pinned_image,
        workdir=workdir,
        **images,
    )
