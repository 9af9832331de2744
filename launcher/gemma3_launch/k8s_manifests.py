"""The Kubernetes objects of a plan, for either API: what `submit --cluster k8s` creates (in order), what `render
--cluster k8s` prints and what the Helm values are cut from. The pod pieces live in render_k8s.py (with the
PyTorchJob layout), the TrainJob + TrainingRuntime layout in render_trainjob.py; this module only chooses."""

from __future__ import annotations

from typing import Any

import yaml

from .plan import JobPlan
from .render_k8s import ReadableDumper, render_pytorchjob
from .render_trainjob import render_trainjob_objects


def render_objects(plan: JobPlan) -> list[dict[str, Any]]:
    """Every object `submit --cluster k8s` creates, in creation order (the runtime before the TrainJob)."""
    if plan.k8s.api == "pytorchjob":
        return [render_pytorchjob(plan)]
    return render_trainjob_objects(plan)


def render_yaml(plan: JobPlan) -> str:
    """What `render --cluster k8s` prints: exactly the objects `submit --cluster k8s` creates."""
    return yaml.dump_all(
        render_objects(plan), Dumper=ReadableDumper, sort_keys=False, width=120, default_flow_style=False
    )
