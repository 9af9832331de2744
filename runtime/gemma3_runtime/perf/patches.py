"""Every megatron-core attribute the speed layer replaces goes through `MEGATRON_PATCHES`, so that one call
(`MEGATRON_PATCHES.restore()`, which `Trainer.close` makes) puts all of them back. The replacements compute the same
values as what they replace; they exist for speed or to keep torch.compile's graphs whole:
- `tensor_parallel.layers.get_tensor_model_parallel_group_if_none`: the same group without the per-call deprecation
  warning that splits compiled graphs (perf/compile.py);
- `tensor_parallel.layers.fused_weight_gradient_mlp_cuda`, `._grad_accum_fusion_available` and
  `.linear_with_grad_accumulation_and_async_allreduce`: gradient-accumulation fusion with a torch shim for apex's
  kernel (perf/grad_fusion.py);
- `optimizer.clip_grads.l2_norm_impl` / `.multi_tensor_scale_impl`: foreach grad norm and clipping instead of the
  per-tensor fallbacks (perf/optim.py).
The CPU shims that let megatron run without CUDA are contexts of their own (compat/megatron_cpu.py).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

_MISSING = object()


class PatchRegistry:
    """Replaced module attributes with their originals, restored newest first."""

    def __init__(self) -> None:
        self._originals: list[tuple[ModuleType, str, Any]] = []

    def replace(self, module: ModuleType, name: str, value: Any) -> None:
        if not any(m is module and n == name for m, n, _ in self._originals):
            self._originals.append((module, name, getattr(module, name, _MISSING)))
        setattr(module, name, value)

    def installed(self) -> list[str]:
        return [f"{module.__name__}.{name}" for module, name, _ in self._originals]

    def restore(self) -> None:
        while self._originals:
            module, name, original = self._originals.pop()
            if original is _MISSING:
                delattr(module, name)
            else:
                setattr(module, name, original)


MEGATRON_PATCHES = PatchRegistry()
