"""The training loop: pretraining, full finetuning and (through the PEFT hook) LoRA/DoRA, on CPU or CUDA.

Order of things, each step explained where it happens:
1. resolve checkpoints (resume from checkpoint.load or the save dir; base weights from pretrained_checkpoint) -
   the model architecture comes from the checkpoint when there is one;
2. distributed state, then the model built from a fixed seed (so every run with that seed starts identical);
3. base weights, then the PEFT transform (freezes the base, adds adapters), then megatron DDP and the optimizer;
4. resume: weights (or adapters), optimizer, RNG and the data position - so the continuation is exact;
5. steps on megatron's forward-backward schedule; metrics every log interval; eval every N steps; checkpoints
   every save_interval, at the end and on preemption (then exit with REQUEUE_EXIT_CODE).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gemma3_runtime.errors import UserInputError
from gemma3_runtime.training.config import ConfigContainer, model_config_from_dict

log = logging.getLogger("gemma3_runtime.training")


@dataclass
class TrainResult:
    status: str  # "completed" | "preempted" | "stopped" (train.exit_interval)
    iteration: int
    train_losses: list = field(default_factory=list)
    eval_losses: list = field(default_factory=list)
    task_accuracies: list = field(default_factory=list)
    seconds: float = 0.0
    save_dir: str | None = None
    checkpoint: str | None = None


# ---- input checks (before any process group or model exists) ------------------------------------------------------
def resolve_precision(cfg: ConfigContainer, device: torch.device) -> bool:
    """True for bf16 params + fp32 main weights."""
    precision = cfg.train.precision
    if precision == "auto":
        return device.type == "cuda"
    if precision == "bf16-mixed" and device.type != "cuda":
        raise UserInputError(
            "train.precision=bf16-mixed needs CUDA (fp32 main weights live in megatron's "
            "optimizer); use train.precision=fp32 on CPU"
        )
    return precision == "bf16-mixed"


def check_config(cfg: ConfigContainer, world_size: int) -> int:
    """The config checks (training/validate.py), then those that read files; returns the data-parallel size."""
    from gemma3_runtime.training.validate import validate

    dp = validate(cfg, world_size=world_size)
    if cfg.data.kind == "sft":
        from gemma3_runtime.data.builder import resolve_sft_paths

        resolve_sft_paths(cfg.data.data_paths)
    elif cfg.data.kind == "indexed":
        from gemma3_runtime.data.indexed import check_prefixes, parse_blend

        check_prefixes(parse_blend(cfg.data.data_paths)[0], "data.data_paths")
    return dp


def _checkpoints(cfg: ConfigContainer):
    """(resume checkpoint or None, pretrained checkpoint or None); validates both."""
    from gemma3_runtime.checkpoint.layout import resolve_checkpoint
    from gemma3_runtime.training.checkpointing import find_resume_checkpoint

    pretrained = None
    if cfg.checkpoint.pretrained_checkpoint:
        pretrained = resolve_checkpoint(cfg.checkpoint.pretrained_checkpoint)
    load = cfg.checkpoint.load or cfg.checkpoint.save
    if cfg.checkpoint.load and cfg.checkpoint.load != cfg.checkpoint.save and not Path(cfg.checkpoint.load).exists():
        raise UserInputError(f"checkpoint.load: {cfg.checkpoint.load!r} does not exist")
    resume = find_resume_checkpoint(load)
    return resume, pretrained


def _model_from_checkpoint(resolved, where: str) -> Any:
    try:
        return model_config_from_dict(resolved.run_config["model"], f"{resolved.iter_dir}/run_config.yaml model")
    except UserInputError as exc:
        raise UserInputError(f"{where}: {exc}") from None


# ---- the loop ------------------------------------------------------------------------------------------------------
def train(cfg: ConfigContainer) -> TrainResult:
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from gemma3_runtime import platform
    from gemma3_runtime.data.batches import EpochShuffledIndex, microbatches
    from gemma3_runtime.data.builder import build_datasets, load_tokenizer
    from gemma3_runtime.model.provider import Gemma3ModelProvider
    from gemma3_runtime.training import checkpointing as ckpt
    from gemma3_runtime.training.flops import flops_per_token_for, peak_tflops
    from gemma3_runtime.training.lr_schedule import learning_rate
    from gemma3_runtime.training.metrics import MetricsSink, memory_gib, step_record, write_loss_curve
    from gemma3_runtime.training.optimizer import build_optimizer
    from gemma3_runtime.training.pending import PendingStep, StepValues
    from gemma3_runtime.training.preemption import PreemptionWatcher
    from gemma3_runtime.training.state import TrainState
    from gemma3_runtime.training.step import finalize_grads, run_forward_backward
    from gemma3_runtime.training.validate import num_microbatches

    started = time.time()
    try:
        device = platform.select_device(cfg.train.device)
    except platform.DeviceError as exc:
        raise UserInputError(str(exc)) from None
    bf16 = resolve_precision(cfg, device)
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    resume, pretrained = _checkpoints(cfg)
    if resume is not None:
        cfg.model = _model_from_checkpoint(resume, "checkpoint.load")
    elif pretrained is not None:
        cfg.model = _model_from_checkpoint(pretrained, "checkpoint.pretrained_checkpoint")
    if cfg.model is None:
        raise UserInputError("model: no architecture (set a recipe or checkpoint.pretrained_checkpoint)")
    dp = check_config(cfg, world_env)
    tokenizer_dir = cfg.data.tokenizer
    if tokenizer_dir is None:
        for source in (pretrained, resume):
            if source is not None and source.tokenizer_dir is not None:
                tokenizer_dir = str(source.tokenizer_dir)
                break
    tokenizer = None
    if cfg.data.kind != "mock" or cfg.eval.task_accuracy:
        tokenizer = load_tokenizer(tokenizer_dir)

    tp, pp = cfg.parallelism.tensor_model_parallel_size, cfg.parallelism.pipeline_model_parallel_size
    seed = cfg.train.seed
    dist_state = platform.init_distributed(device, tp, pp, seed=seed)
    rank, world = dist_state.rank, dist_state.world_size
    dp = world // (tp * pp)
    dp_rank = parallel_state.get_data_parallel_rank()
    nmb = num_microbatches(cfg.train.global_batch_size, cfg.train.micro_batch_size, dp)
    is_rank0 = rank == 0
    if is_rank0:
        log.info(
            "run %s: world %d (tp %d, pp %d, dp %d), %d micro-batches of %d per step, %s%s",
            cfg.name,
            world,
            tp,
            pp,
            dp,
            nmb,
            cfg.train.micro_batch_size,
            "bf16+fp32 main" if bf16 else "fp32",
            f", resuming from {resume.iter_dir}" if resume else "",
        )

    # -- model: same seed -> same initial weights on every run and every TP layout ------------------------------
    _reseed(seed, device, parallel_state.get_tensor_model_parallel_rank())
    # speed switches (gemma3_runtime.perf; same functions as bench/train_throughput.py): fast attention kernel,
    # chunked linear+CE, then layer compile and fused AdamW below. `cfg.perf` when the container has it.
    from gemma3_runtime.perf import apply as perf_apply
    from gemma3_runtime.perf.config import PerfConfig

    perf = getattr(cfg, "perf", None) or PerfConfig()
    perf_fields = perf_apply.provider_fields(perf, tp, device)
    provider = Gemma3ModelProvider.from_config(
        cfg.model,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        sequence_parallel=cfg.parallelism.sequence_parallel,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        device=device.type,
        seed=seed,
        attention_kernel=perf_fields["attention_kernel"],
        transformer_overrides=dict(calculate_per_token_loss=True, **perf_fields["transformer_overrides"]),
    )
    try:
        provider.finalize()
    except ValueError as exc:
        raise UserInputError(f"parallelism: {exc}") from None
    models = provider.provide_distributed_model(wrap_with_ddp=False)
    if pretrained is not None and (resume is None or cfg.peft is not None):
        ckpt.load_pretrained_weights(pretrained, models)
        if is_rank0:
            log.info("base weights from %s", pretrained.iter_dir)
    adapters_only = cfg.peft is not None
    if adapters_only:
        from gemma3_runtime.peft.apply import apply_peft

        names = apply_peft(models, cfg.peft)
        if is_rank0:
            log.info(
                "peft %s on %d linears; trainable parameters: %d",
                cfg.peft.kind,
                len(names),
                sum(p.numel() for m in models for p in m.parameters() if p.requires_grad),
            )
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        use_distributed_optimizer=device.type == "cuda" and cfg.optimizer.use_distributed_optimizer,
        **perf_apply.ddp_fields(perf, dp),
    )
    models = [DistributedDataParallel(config=m.config, ddp_config=ddp_config, module=m) for m in models]
    for m in models:
        m.config.finalize_model_grads_func = finalize_grads
        m.config.no_sync_func = m.no_sync
    perf_apply.prepare_models(models, perf, device, seq_length=cfg.data.seq_length)
    optimizer = build_optimizer(models, cfg.optimizer, device, bf16)
    perf_apply.prepare_optimizer(optimizer, perf, device)

    train_state = TrainState(world_size=world)
    if resume is not None:
        train_state = ckpt.load_training_checkpoint(
            resume, models, optimizer, adapters_only, load_optim=cfg.checkpoint.save_optim
        )
        train_state.world_size = world
        if is_rank0:
            log.info(
                "resumed at iteration %d (%d samples consumed)", train_state.iteration, train_state.consumed_samples
            )
    start_iter = train_state.iteration

    # -- data --------------------------------------------------------------------------------------------------
    seq = cfg.data.seq_length
    gbs, mbs = cfg.train.global_batch_size, cfg.train.micro_batch_size
    valid_samples = max(cfg.eval.iters, 1) * gbs
    cache_dir = os.path.join(cfg.checkpoint.save, "data_cache") if cfg.checkpoint.save else None
    datasets = build_datasets(
        cfg.data, seed, cfg.model.vocab_size, tokenizer, cfg.train.train_iters * gbs, valid_samples, cache_dir
    )
    train_index = EpochShuffledIndex(len(datasets.train), seed, datasets.shuffle)
    task_items = _task_items(cfg) if cfg.eval.task_accuracy else []

    # -- metrics -------------------------------------------------------------------------------------------------
    save_dir = cfg.checkpoint.save
    tb_dir = cfg.logging.tensorboard_dir or (os.path.join(save_dir, "tensorboard") if save_dir else None)
    sink = MetricsSink(
        is_rank0,
        tb_dir,
        cfg.logging.wandb_project,
        cfg.name,
        cfg.to_dict(),
        cfg.train.train_iters,
        start_iter,
        cfg.logging.progress_bar,
    )
    flops_per_token = flops_per_token_for(cfg.model, seq, peft=adapters_only)
    peak = peak_tflops(torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    run_config = cfg.to_dict()

    def evaluate() -> float | None:
        if datasets.valid is None or len(datasets.valid) == 0:
            return None
        unit = mbs * dp
        n = min(valid_samples, len(datasets.valid))
        n = max(unit, -(-n // unit) * unit)
        index = EpochShuffledIndex(len(datasets.valid), seed, shuffle=False)
        for m in models:
            m.eval()
        with torch.no_grad():
            total, count = run_forward_backward(
                models,
                microbatches(datasets.valid, index, 0, n, mbs, dp_rank, dp, device),
                n // unit,
                seq,
                mbs,
                device,
                forward_only=True,
            ).tolist()
        for m in models:
            m.train()
        return total / max(count, 1.0)

    def measure_task() -> float | None:
        if not task_items:
            return None
        from gemma3_runtime.training.task_eval import task_accuracy

        acc, outputs = task_accuracy(models[0], tokenizer, task_items, cfg.eval.task_max_new_tokens, device)
        if is_rank0:
            for item, out in list(zip(task_items, outputs, strict=False))[:3]:
                log.info("task sample: %r -> %r (expected %r)", item.prompt, out.strip(), item.completion.strip())
        return acc

    def run_evals(iteration: int, label: str) -> None:
        metrics: dict[str, float] = {}
        loss = evaluate()
        if loss is not None:
            train_state.eval_losses.append([iteration, loss])
            metrics["eval_loss"] = loss
            metrics["eval_ppl"] = math.exp(min(loss, 50.0))
        acc = measure_task()
        if acc is not None:
            train_state.task_accuracies.append([iteration, acc])
            metrics["task_accuracy"] = acc
        if metrics and is_rank0:
            sink.log(iteration, metrics, line=False)
            print(
                f"[{label}] iteration {iteration}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True
            )

    def save() -> Path | None:
        if not save_dir:
            return None
        t = time.time()
        path = ckpt.save_training_checkpoint(
            save_dir,
            models,
            optimizer,
            train_state,
            run_config,
            adapters_only,
            cfg.checkpoint.save_optim,
            cfg.checkpoint.save_rng,
            tokenizer_dir,
        )
        if is_rank0:
            log.info("saved %s in %.1f s", path, time.time() - t)
        return path

    evals_enabled = cfg.eval.interval is not None or bool(task_items)
    if start_iter == 0 and cfg.eval.at_start and evals_enabled:
        run_evals(0, "start")

    # -- steps ---------------------------------------------------------------------------------------------------
    watcher = PreemptionWatcher()
    # per-step record (rank 0): the loss of every step at full precision, appended across resumes
    steps_file = _open_steps_file(Path(save_dir), start_iter) if (is_rank0 and save_dir) else None
    status = "completed"
    last_saved: Path | None = None
    window_start, window_tokens, window_steps = time.time(), 0, 0
    # each step's loss / grad norm reaches the host while the next step runs (training/pending.py); `settle` books
    # the steps whose values are in, and all of them before anything that reads them (logs, evals, saves, exits)
    pending: list[PendingStep] = []
    latest: StepValues | None = None

    def settle(keep_newest: bool) -> None:
        nonlocal latest
        while pending and (len(pending) > 1 or not keep_newest):
            v = pending.pop(0).resolve()
            train_state.train_losses.append([v.iteration, v.loss, v.lr])
            sink.advance(v.loss)
            if steps_file is not None:
                steps_file.write(json.dumps(step_record(v.iteration, v.loss, v.lr, v.grad_norm)) + "\n")
                steps_file.flush()
            latest = v

    try:
        for it in range(start_iter, cfg.train.train_iters):
            iteration = it + 1
            lr = learning_rate(
                iteration,
                cfg.optimizer.lr,
                cfg.optimizer.min_lr,
                cfg.scheduler.lr_warmup_iters,
                cfg.scheduler.lr_decay_iters or cfg.train.train_iters,
                cfg.scheduler.lr_decay_style,
                cfg.scheduler.lr_warmup_init,
            )
            for m in models:
                m.zero_grad_buffer()
            batches = microbatches(
                datasets.train, train_index, train_state.consumed_samples, gbs, mbs, dp_rank, dp, device
            )
            totals = run_forward_backward(models, batches, nmb, seq, mbs, device, forward_only=False)
            pending.append(PendingStep(iteration, lr, totals, optimizer.step(lr)))
            train_state.iteration = iteration
            train_state.consumed_samples += gbs
            train_state.floating_point_operations += flops_per_token * gbs * seq
            window_tokens += gbs * seq
            window_steps += 1
            last = iteration == cfg.train.train_iters
            log_now = iteration % cfg.logging.log_interval == 0 or it == start_iter or last
            eval_now = bool(cfg.eval.interval) and iteration % cfg.eval.interval == 0 and not last
            stop = watcher.agreed_stop()
            planned_exit = bool(cfg.train.exit_interval) and iteration % cfg.train.exit_interval == 0 and not last
            save_now = (
                stop
                or planned_exit
                or bool(cfg.checkpoint.save_interval and iteration % cfg.checkpoint.save_interval == 0)
            )
            settle(keep_newest=not (log_now or eval_now or save_now))
            if log_now:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = time.time() - window_start
                tokens_per_s = window_tokens / max(elapsed, 1e-9)
                tflops = flops_per_token * tokens_per_s / world / 1e12
                metrics = {
                    "loss": latest.loss,
                    "lr": lr,
                    "grad_norm": latest.grad_norm,
                    "tokens_per_s": tokens_per_s,
                    "step_s": elapsed / window_steps,
                    "tflops_per_gpu": tflops,
                    "mfu": tflops / peak if peak else None,
                    "loss_tokens": latest.count,
                    **memory_gib(device),
                }
                sink.log(iteration, metrics)
                window_start, window_tokens, window_steps = time.time(), 0, 0
            paused = time.time()
            if eval_now:
                run_evals(iteration, "eval")
            if save_now:
                last_saved = save()
            if planned_exit and not stop:
                status = "stopped"
                if is_rank0:
                    print(
                        f"stopping at iteration {iteration} (train.exit_interval={cfg.train.exit_interval})", flush=True
                    )
                break
            window_start += time.time() - paused  # evals and saves do not count as training time
            if stop:
                status = "preempted"
                if is_rank0:
                    print(
                        f"preempted ({watcher.received or 'another rank'}) at iteration {iteration}: "
                        f"{'checkpoint committed, ' if last_saved else 'no save dir, '}exiting for requeue",
                        flush=True,
                    )
                break
        settle(keep_newest=False)
    finally:
        watcher.restore()
        if steps_file is not None:
            steps_file.close()

    if status == "completed":
        if evals_enabled and train_state.iteration > start_iter:
            run_evals(train_state.iteration, "end")
        from gemma3_runtime.checkpoint.layout import iter_dir_name

        saved_now = last_saved is not None and last_saved.name == iter_dir_name(train_state.iteration)
        if cfg.checkpoint.save_at_end and train_state.iteration > start_iter and not saved_now:
            last_saved = save()
    sink.close({"status": status})
    if is_rank0 and save_dir and cfg.logging.loss_curve_png and train_state.train_losses:
        try:
            write_loss_curve(
                Path(save_dir) / "loss_curve.png", train_state.train_losses, train_state.eval_losses, cfg.name
            )
        except Exception as exc:  # a plot must never fail a finished run
            log.warning("loss curve not written: %s", exc)
    return TrainResult(
        status=status,
        iteration=train_state.iteration,
        train_losses=train_state.train_losses,
        eval_losses=train_state.eval_losses,
        task_accuracies=train_state.task_accuracies,
        seconds=time.time() - started,
        save_dir=save_dir,
        checkpoint=str(last_saved) if last_saved else None,
    )


def _reseed(seed: int, device: torch.device, tp_rank: int) -> None:
    """Weights are drawn from the CPU generator (use_cpu_initialization) and the model-parallel tracker."""
    torch.manual_seed(seed)
    if device.type == "cuda":
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)
    else:
        from gemma3_runtime.compat.megatron_cpu import cpu_rng_tracker

        cpu_rng_tracker(seed, tp_rank=tp_rank)


def _task_items(cfg: ConfigContainer) -> list:
    """Held-out prompt/completion items scored for task accuracy (the bundled held-out split by default)."""
    from gemma3_runtime.data import synthetic

    paths = list(cfg.data.valid_paths or [])
    if not paths and cfg.data.data_paths and any(p.startswith("bundled:") for p in cfg.data.data_paths):
        paths = [str(synthetic.bundled_path("heldout"))]
    if not paths:
        raise UserInputError(
            "eval.task_accuracy=true needs data.valid_paths with prompt/completion rows (or the bundled dataset)"
        )
    items = [it for p in paths for it in synthetic.load_items(p)]
    return items[: cfg.eval.task_items]


def _open_steps_file(save_dir: Path, start_iter: int):
    """steps.jsonl keeps the steps up to the resume point (a killed run may have logged steps it never saved)."""
    save_dir.mkdir(parents=True, exist_ok=True)
    path = save_dir / "steps.jsonl"
    kept = []
    if path.exists() and start_iter > 0:
        kept = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("iteration", 0) <= start_iter
        ]
    path.write_text("".join(line + "\n" for line in kept))
    return open(path, "a")
