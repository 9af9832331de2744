"""`Trainer`: pretraining, full finetuning and (through PEFT) LoRA/DoRA, on CPU or CUDA.

`build()` runs named phases, in this order:
1. `_build_distributed`: device, precision, the checkpoints (resume from checkpoint.load or the save dir; base weights
   from pretrained_checkpoint; the architecture comes from the checkpoint when there is one), the checks that need
   no model, the tokenizer, then the process groups;
2. `_build_model`: the model built from a fixed seed (every run with that seed starts identical), with the fields
   the speed layer sets before building, then the base weights (gemma3_runtime.loader);
3. `_build_peft`: the PEFT transform (freezes the base, adds adapters);
4. `_build_ddp`: megatron DDP;
5. `_build_speed_layer`: gemma3_runtime.perf.apply - the model's hooks, kernels and compile (logged, and kept in
   `speed_layer` for the run's result);
6. `_build_optimizer`: megatron's optimizer and its fast paths;
7. `_resume`: weights (or adapters), optimizer, RNG and the data position, so the continuation is exact;
8. `_build_data` and `_build_metrics`: datasets, the data order, the metrics sink. They come after the resume, as
   they always have, so that random streams are drawn in the same order in every run.
Then `fit()` runs `train_step()` on megatron's forward-backward schedule; metrics every log interval, `evaluate()`
every N steps, `save()` every save_interval, at the end and on preemption (then the CLI exits with
REQUEUE_EXIT_CODE). `close()` releases what the run holds. bench/train_throughput.py times this same `train_step`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.training.config import ConfigContainer
from gemma3_runtime.training.pending import PendingStep
from gemma3_runtime.training.run_setup import (
    TrainResult,
    check_config,
    reseed,
    resolve_checkpoints,
    resolve_precision,
    task_items,
)

log = logging.getLogger("gemma3_runtime.training")


class Trainer:
    def __init__(self, cfg: ConfigContainer) -> None:
        from gemma3_runtime.perf.config import PerfConfig

        self.cfg = cfg
        self.perf: PerfConfig = getattr(cfg, "perf", None) or PerfConfig()
        self.started = time.time()
        self.speed_layer: dict[str, Any] = {}
        self.built = False
        self.watcher = None
        self.record = None
        self.sink = None
        self.saver = None  # checkpoint/async_save.AsyncCheckpointSaver, made at the first asynchronous save

    # ---- build ------------------------------------------------------------------------------------------------
    def build(self) -> Trainer:
        self._build_distributed()
        self._build_model()
        self._build_peft()
        self._build_ddp()
        self._build_speed_layer()
        self._build_optimizer()
        self._resume()
        self._build_data()
        self._build_metrics()
        self.built = True
        return self

    def _build_distributed(self) -> None:
        from megatron.core import parallel_state

        from gemma3_runtime import platform
        from gemma3_runtime.data.builder import load_tokenizer
        from gemma3_runtime.training.validate import num_microbatches

        cfg = self.cfg
        try:
            self.device = platform.select_device(cfg.train.device)
        except platform.DeviceError as exc:
            raise UserInputError(str(exc)) from None
        self.bf16 = resolve_precision(cfg, self.device)
        self.resume_from, self.pretrained = resolve_checkpoints(cfg)
        if cfg.peft is not None and self.pretrained is None:
            raise UserInputError("peft needs checkpoint.pretrained_checkpoint (the frozen base weights)")
        check_config(cfg, int(os.environ.get("WORLD_SIZE", "1")))
        self.tokenizer_dir = cfg.data.tokenizer
        for source in (self.pretrained, self.resume_from):
            if self.tokenizer_dir is None and source is not None and source.tokenizer_dir is not None:
                self.tokenizer_dir = str(source.tokenizer_dir)
        needs_tokenizer = cfg.data.kind != "mock" or cfg.eval.task_accuracy
        self.tokenizer = load_tokenizer(self.tokenizer_dir) if needs_tokenizer else None

        par = cfg.parallelism
        self.tp, self.pp, self.cp = (
            par.tensor_model_parallel_size,
            par.pipeline_model_parallel_size,
            par.context_parallel_size,
        )
        dist_state = platform.init_distributed(self.device, self.tp, self.pp, seed=cfg.train.seed, cp=self.cp)
        self.rank, self.world = dist_state.rank, dist_state.world_size
        self.is_rank0 = self.rank == 0
        self.dp = self.world // (self.tp * self.pp * self.cp)  # the CP ranks of one replica share its samples
        self.dp_rank = parallel_state.get_data_parallel_rank()
        t = cfg.train
        self.num_microbatches = num_microbatches(t.global_batch_size, t.micro_batch_size, self.dp)
        if self.is_rank0:
            layout = f"world {self.world} (tp {self.tp}, pp {self.pp}, cp {self.cp}, dp {self.dp})"
            batch = f"{self.num_microbatches} micro-batches of {t.micro_batch_size} per step"
            precision = "bf16+fp32 main" if self.bf16 else "fp32"
            resuming = f", resuming from {self.resume_from.iter_dir}" if self.resume_from else ""
            log.info("run %s: %s, %s, %s%s", cfg.name, layout, batch, precision, resuming)

    def _build_model(self) -> None:
        from megatron.core import parallel_state

        from gemma3_runtime.loader import load_base_weights
        from gemma3_runtime.model.provider import Gemma3ModelProvider
        from gemma3_runtime.perf.apply import provider_fields

        cfg, seed = self.cfg, self.cfg.train.seed
        reseed(seed, self.device, parallel_state.get_tensor_model_parallel_rank())
        fields = provider_fields(self.perf, self.tp, self.device)
        provider = Gemma3ModelProvider.from_config(
            cfg.model,
            tensor_model_parallel_size=self.tp,
            pipeline_model_parallel_size=self.pp,
            context_parallel_size=self.cp,
            sequence_parallel=cfg.parallelism.sequence_parallel,
            params_dtype=torch.bfloat16 if self.bf16 else torch.float32,
            device=self.device.type,
            seed=seed,
            attention_kernel=fields["attention_kernel"],
            **cfg.train.recompute_fields(),
            transformer_overrides=dict(calculate_per_token_loss=True, **fields["transformer_overrides"]),
        )
        try:
            provider.finalize()
        except ValueError as exc:
            raise UserInputError(f"parallelism: {exc}") from None
        self.models = provider.provide_distributed_model(wrap_with_ddp=False)
        if self.pretrained is not None and (self.resume_from is None or cfg.peft is not None):
            load_base_weights(self.pretrained, self.models)
            if self.is_rank0:
                log.info("base weights from %s", self.pretrained.iter_dir)

    def _build_peft(self) -> None:
        self.adapters_only = self.cfg.peft is not None
        if not self.adapters_only:
            return
        from gemma3_runtime.peft.apply import apply_peft

        names = apply_peft(self.models, self.cfg.peft)
        if self.is_rank0:
            trainable = sum(p.numel() for m in self.models for p in m.parameters() if p.requires_grad)
            log.info("peft %s on %d linears; trainable parameters: %d", self.cfg.peft.kind, len(names), trainable)

    def _build_ddp(self) -> None:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

        from gemma3_runtime.perf.apply import ddp_fields
        from gemma3_runtime.training.step import finalize_grads

        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            use_distributed_optimizer=self.device.type == "cuda" and self.cfg.optimizer.use_distributed_optimizer,
            **ddp_fields(self.perf, self.dp * self.cp),  # gradients are reduced over data x context ranks
        )
        self.models = [DistributedDataParallel(config=m.config, ddp_config=ddp_config, module=m) for m in self.models]
        for m in self.models:
            m.config.finalize_model_grads_func = finalize_grads
            m.config.no_sync_func = m.no_sync

    def _build_speed_layer(self) -> None:
        from gemma3_runtime.perf.apply import apply

        self.speed_layer = apply(self.models, self.perf, self.device, seq_length=self.cfg.data.seq_length)

    def _build_optimizer(self) -> None:
        from gemma3_runtime.perf.apply import apply_to_optimizer
        from gemma3_runtime.perf.patches import MEGATRON_PATCHES
        from gemma3_runtime.training.optimizer import build_optimizer

        self.optimizer = build_optimizer(self.models, self.cfg.optimizer, self.device, self.bf16)
        self.speed_layer.update(apply_to_optimizer(self.optimizer, self.perf, self.device))
        self.speed_layer["megatron_patches"] = MEGATRON_PATCHES.installed()
        if self.is_rank0:
            log.info("speed layer: %s", ", ".join(f"{k}={v}" for k, v in self.speed_layer.items()))

    def _resume(self) -> None:
        from gemma3_runtime.training.checkpointing import load_training_checkpoint
        from gemma3_runtime.training.state import TrainState

        self.train_state = TrainState(world_size=self.world)
        if self.resume_from is not None:
            self.train_state = load_training_checkpoint(
                self.resume_from,
                self.models,
                self.optimizer,
                self.adapters_only,
                load_optim=self.cfg.checkpoint.save_optim,
            )
            self.train_state.world_size = self.world
            if self.is_rank0:
                log.info(
                    "resumed at iteration %d (%d samples consumed)",
                    self.train_state.iteration,
                    self.train_state.consumed_samples,
                )
        self.start_iter = self.train_state.iteration

    def _build_data(self) -> None:
        from gemma3_runtime.data.batches import EpochShuffledIndex
        from gemma3_runtime.data.builder import build_datasets

        cfg = self.cfg
        gbs = cfg.train.global_batch_size
        self.valid_samples = max(cfg.eval.iters, 1) * gbs
        cache_dir = os.path.join(cfg.checkpoint.save, "data_cache") if cfg.checkpoint.save else None
        train_samples = cfg.train.train_iters * gbs
        self.datasets = build_datasets(
            cfg.data, cfg.train.seed, cfg.model.vocab_size, self.tokenizer, train_samples, self.valid_samples, cache_dir
        )
        self.train_index = EpochShuffledIndex(len(self.datasets.train), cfg.train.seed, self.datasets.shuffle)
        self.task_items = task_items(cfg) if cfg.eval.task_accuracy else []

    def _build_metrics(self) -> None:
        from gemma3_runtime.training.flops import flops_per_token_for, peak_tflops
        from gemma3_runtime.training.metrics import MetricsSink

        cfg = self.cfg
        self.save_dir = cfg.checkpoint.save
        tb_dir = cfg.logging.tensorboard_dir or (os.path.join(self.save_dir, "tensorboard") if self.save_dir else None)
        self.run_config = cfg.to_dict()
        self.sink = MetricsSink(
            self.is_rank0,
            tb_dir,
            cfg.logging.wandb_project,
            cfg.name,
            self.run_config,
            cfg.train.train_iters,
            self.start_iter,
            cfg.logging.progress_bar,
        )
        self.flops_per_token = flops_per_token_for(cfg.model, cfg.data.seq_length, peft=self.adapters_only)
        self.peak = peak_tflops(torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None)
        self.evals_enabled = cfg.eval.interval is not None or bool(self.task_items)

    # ---- one step, evaluation, saving -------------------------------------------------------------------------
    def train_step(self) -> PendingStep:
        """One optimizer step on the next global batch; returns its values, which reach the host once the GPU has
        them (`PendingStep.resolve`)."""
        from gemma3_runtime.data.batches import microbatches
        from gemma3_runtime.training.lr_schedule import learning_rate
        from gemma3_runtime.training.step import run_forward_backward

        cfg, state = self.cfg, self.train_state
        gbs, mbs, seq = cfg.train.global_batch_size, cfg.train.micro_batch_size, cfg.data.seq_length
        iteration = state.iteration + 1
        sched = cfg.scheduler
        lr = learning_rate(
            iteration,
            cfg.optimizer.lr,
            cfg.optimizer.min_lr,
            sched.lr_warmup_iters,
            sched.lr_decay_iters or cfg.train.train_iters,
            sched.lr_decay_style,
            sched.lr_warmup_init,
        )
        for m in self.models:
            m.zero_grad_buffer()
        batches = microbatches(
            self.datasets.train, self.train_index, state.consumed_samples, gbs, mbs, self.dp_rank, self.dp, self.device
        )
        totals = run_forward_backward(
            self.models, batches, self.num_microbatches, seq, mbs, self.device, forward_only=False
        )
        step = PendingStep(iteration, lr, totals, self.optimizer.step(lr))
        state.iteration = iteration
        state.consumed_samples += gbs
        state.floating_point_operations += self.flops_per_token * gbs * seq
        return step

    def evaluate(self) -> float | None:
        """Mean loss per token over the held-out samples (None without a validation set)."""
        from gemma3_runtime.data.batches import EpochShuffledIndex, microbatches
        from gemma3_runtime.training.step import run_forward_backward

        valid = self.datasets.valid
        if valid is None or len(valid) == 0:
            return None
        mbs, seq = self.cfg.train.micro_batch_size, self.cfg.data.seq_length
        unit = mbs * self.dp
        n = min(self.valid_samples, len(valid))
        n = max(unit, -(-n // unit) * unit)
        index = EpochShuffledIndex(len(valid), self.cfg.train.seed, shuffle=False)
        for m in self.models:
            m.eval()
        with torch.no_grad():
            batches = microbatches(valid, index, 0, n, mbs, self.dp_rank, self.dp, self.device)
            total, count = run_forward_backward(
                self.models, batches, n // unit, seq, mbs, self.device, forward_only=True
            ).tolist()
        for m in self.models:
            m.train()
        return total / max(count, 1.0)

    def task_accuracy(self) -> float | None:
        if not self.task_items:
            return None
        from gemma3_runtime.training.task_eval import task_accuracy

        items = self.task_items
        acc, outputs = task_accuracy(
            self.models[0], self.tokenizer, items, self.cfg.eval.task_max_new_tokens, self.device
        )
        if self.is_rank0:
            for item, out in list(zip(items, outputs, strict=False))[:3]:
                log.info("task sample: %r -> %r (expected %r)", item.prompt, out.strip(), item.completion.strip())
        return acc

    def run_evals(self, iteration: int, label: str) -> None:
        metrics: dict[str, float] = {}
        loss = self.evaluate()
        if loss is not None:
            self.train_state.eval_losses.append([iteration, loss])
            metrics["eval_loss"] = loss
            metrics["eval_ppl"] = math.exp(min(loss, 50.0))
        acc = self.task_accuracy()
        if acc is not None:
            self.train_state.task_accuracies.append([iteration, acc])
            metrics["task_accuracy"] = acc
        if metrics and self.is_rank0:
            self.sink.log(iteration, metrics, line=False)
            values = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            print(f"[{label}] iteration {iteration}: {values}", flush=True)

    def save(self, blocking: bool = True) -> Path | None:
        """A training checkpoint of the current state (collective); None without a save dir. checkpoint.async_save:
        unless `blocking`, the write goes on in the background and `saver.poll()` / `saver.wait()` commit it."""
        from gemma3_runtime.training.checkpointing import save_trainer

        return save_trainer(self, blocking)

    # ---- the run ----------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Build (if not yet built), train to train.train_iters or a stop, and return the run's result."""
        from gemma3_runtime.training.loop import fit_loop

        if not self.built:
            self.build()
        return fit_loop(self)

    def close(self) -> None:
        """Restore the signal handlers and megatron-core's patched functions; close the step record and the metrics
        sink (idempotent)."""
        from gemma3_runtime.perf.patches import MEGATRON_PATCHES

        MEGATRON_PATCHES.restore()
        if self.watcher is not None:
            self.watcher.restore()
            self.watcher = None
        if self.record is not None:
            self.record.close()
        if self.sink is not None:
            self.sink.close()
            self.sink = None

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def train(cfg: ConfigContainer) -> TrainResult:
    """Run one training job start to end (what `gemma3-runtime run` does)."""
    with Trainer(cfg) as trainer:
        return trainer.fit()
