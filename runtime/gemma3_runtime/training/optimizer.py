"""Optimizers behind one small interface: step(lr) -> grad norm, sharded_state_dict(), load_state_dict().

- CUDA: megatron-core's optimizer (bf16 params with fp32 main weights, the distributed optimizer when asked).
- CPU: torch.optim.AdamW. megatron's optimizer hard-codes CUDA tensors (compat/megatron_cpu.py), so here
  gradients are taken from megatron DDP's `main_grad` buffers, the norm is computed over TP/PP like megatron's
  (each TP-sharded tensor once, replicated ones once), and the state is saved as sharded tensors mirroring each
  parameter's sharding, so it reshards across TP/PP like the weights.
Weight decay skips 1-D parameters (norm weights), as megatron does by default.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from gemma3_runtime.perf.optim import megatron_parts


class TrainOptimizer(Protocol):
    def step(self, lr: float) -> float | torch.Tensor: ...
    def sharded_state_dict(self, model_sharded_state_dict: dict, is_loading: bool = False) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def trainable_params(model_chunks: list) -> list[torch.nn.Parameter]:
    return [p for m in model_chunks for p in m.parameters() if p.requires_grad]


def grad_norm(params: list[torch.nn.Parameter]) -> float:
    """L2 norm of all gradients of the model (over TP and PP ranks), counting every element once."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
    from megatron.core.transformer.module import param_is_not_shared

    total = torch.zeros((), dtype=torch.float64)
    for p in params:
        if p.grad is not None and param_is_not_shared(p) and param_is_not_tensor_parallel_duplicate(p):
            total += p.grad.detach().double().pow(2).sum().cpu()
    if torch.distributed.is_initialized() and parallel_state.get_model_parallel_group().size() > 1:
        torch.distributed.all_reduce(total, group=parallel_state.get_model_parallel_group())
    return float(total.sqrt())


class TorchAdamW:
    """CPU path: AdamW on fp32 parameters, gradients from megatron DDP's main_grad buffers."""

    def __init__(self, model_chunks: list, cfg: Any) -> None:
        params = trainable_params(model_chunks)
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [
            g
            for g in ({"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0})
            if g["params"]
        ]
        self.optimizer = torch.optim.AdamW(
            groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, foreach=False
        )
        self.clip_grad = cfg.clip_grad
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]  # optimizer (state id) order

    def step(self, lr: float) -> float:
        for p in self.params:
            main = getattr(p, "main_grad", None)
            if main is not None:
                p.grad = main if main.dtype == p.dtype else main.to(p.dtype)
        norm = grad_norm(self.params)
        if self.clip_grad > 0:
            coeff = self.clip_grad / (norm + 1.0e-6)
            if coeff < 1.0:
                for p in self.params:
                    if p.grad is not None:
                        p.grad.mul_(coeff)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        for p in self.params:
            p.grad = None
        return norm

    def _init_state(self) -> None:
        """Create Adam's state tensors (as a first step would) so a checkpoint can be loaded into them."""
        for p in self.params:
            state = self.optimizer.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def sharded_state_dict(self, model_sharded_state_dict: dict, is_loading: bool = False) -> dict:
        from megatron.core.dist_checkpointing.optimizer import (
            get_param_id_to_sharded_param_map,
            optim_state_to_sharding_state,
        )

        if is_loading:
            self._init_state()
        state = self.optimizer.state_dict()
        steps = {float(s["step"]) for s in state["state"].values() if "step" in s}
        if len(steps) > 1:
            raise RuntimeError(f"optimizer steps differ between parameters: {sorted(steps)[:3]}")
        id_map = get_param_id_to_sharded_param_map(model_sharded_state_dict, self.params)
        optim_state_to_sharding_state(state, id_map, exclude_keys=("step",))
        if steps:
            state["state"]["common_step"] = steps.pop()
        return state

    def load_state_dict(self, state: dict) -> None:
        step = state["state"].pop("common_step", None)
        if step is not None:
            for param_state in state["state"].values():
                param_state["step"] = torch.tensor(float(step))
        self.optimizer.load_state_dict(state)


class MegatronAdam:
    """CUDA path: megatron-core's Adam (fp32 main params for bf16 models; distributed optimizer when asked)."""

    def __init__(self, model_chunks: list, cfg: Any, bf16: bool, distributed: bool) -> None:
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        mcfg = OptimizerConfig(
            optimizer="adam",
            lr=cfg.lr,
            min_lr=cfg.min_lr,
            weight_decay=cfg.weight_decay,
            adam_beta1=cfg.adam_beta1,
            adam_beta2=cfg.adam_beta2,
            adam_eps=cfg.adam_eps,
            clip_grad=cfg.clip_grad,
            bf16=bf16,
            params_dtype=torch.bfloat16 if bf16 else torch.float32,
            use_distributed_optimizer=distributed,
        )
        self.optimizer = get_megatron_optimizer(mcfg, model_chunks)
        #: set by gemma3_runtime.perf.apply.apply_to_optimizer when the step can run without a host sync
        self.sync_free = False

    def step(self, lr: float) -> float | torch.Tensor:
        """One update; returns the grad norm - a device tensor on the sync-free path (read it when needed)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.sync_free:
            from gemma3_runtime.perf.optim import sync_free_step

            return sync_free_step(self.optimizer)
        _ok, norm, _zeros = self.optimizer.step()
        return float(norm) if norm is not None else float("nan")

    def _ensure_step_state(self) -> None:
        """Give every Adam parameter state a 'step' before a load.

        WHY: without TransformerEngine/apex, megatron-core 0.16.1's DistributedOptimizer.state_dict() reads 'step'
        from every torch-AdamW parameter state, but torch creates that state only on the first step, so resuming
        (which builds the load request before any step) fails its assertion `len(steps) == 1`. The values written
        here are what torch's first step would start from and are overwritten by the checkpoint.
        """
        for chained in megatron_parts(self.optimizer):
            inner = getattr(chained, "optimizer", None)
            if not isinstance(inner, torch.optim.Adam):  # AdamW subclasses Adam
                continue
            for group in inner.param_groups:
                on_device = bool(group.get("fused") or group.get("capturable"))
                for param in group["params"]:
                    state = inner.state[param]
                    if "exp_avg" not in state:
                        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    if "step" not in state:
                        state["step"] = torch.zeros(
                            (), dtype=torch.float32, device=param.device if on_device else "cpu"
                        )

    def sharded_state_dict(self, model_sharded_state_dict: dict, is_loading: bool = False) -> dict:
        if is_loading:
            self._ensure_step_state()
        # "fully_reshardable": canonical per-parameter state, so a checkpoint loads at another TP/PP/DP. megatron-core
        # 0.16.1's default "fully_sharded_model_space" builds flattened ShardedTensors that its own validation rejects
        # ("ShardedTensor.flattened_range is not supported").
        return self.optimizer.sharded_state_dict(
            model_sharded_state_dict,
            is_loading=is_loading,
            metadata={"distrib_optim_sharding_type": "fully_reshardable"},
        )

    def load_state_dict(self, state: dict) -> None:
        for chained in megatron_parts(self.optimizer):
            _skip_step_in_state_copy(chained)
        self.optimizer.load_state_dict(state)


def _skip_step_in_state_copy(optimizer: Any) -> None:
    """Let a DistributedOptimizer copy loaded per-parameter states that carry no 'step'.

    WHY: without TransformerEngine/apex, megatron-core 0.16.1 restores Adam's 'step' from the param groups into
    every torch-AdamW state, then `load_parameter_state_from_fully_reshardable` hands `_set_main_param_and_optimizer_
    states` the per-parameter tensors without 'step' (it skips it on purpose) and that copies every key of the
    destination state: KeyError 'step'. Copy what was loaded; 'step' is already in place.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    if not isinstance(optimizer, DistributedOptimizer) or getattr(optimizer, "_gemma3_step_fix", False):
        return
    original = optimizer._set_main_param_and_optimizer_states

    def set_states(model_param: Any, tensors: dict) -> None:
        if optimizer.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8 or "step" in tensors:
            return original(model_param, tensors)
        group_index, group_order = optimizer.model_param_group_index_map[model_param]
        main_param = optimizer.optimizer.param_groups[group_index]["params"][group_order]
        state = optimizer.optimizer.state[main_param]
        for key, value in tensors.items():
            (main_param if key == "param" else state[key]).copy_(value)

    optimizer._set_main_param_and_optimizer_states = set_states
    optimizer._gemma3_step_fix = True


def build_optimizer(model_chunks: list, cfg: Any, device: torch.device, bf16: bool) -> TrainOptimizer:
    if device.type == "cuda":
        return MegatronAdam(model_chunks, cfg, bf16=bf16, distributed=cfg.use_distributed_optimizer)
    return TorchAdamW(model_chunks, cfg)
