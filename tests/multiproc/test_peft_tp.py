"""TP=2 LoRA / DoRA on CPU (two gloo processes under torchrun) against TP=1: same per-step losses over 5 Adam steps,
and the HF PEFT adapter exported from TP=2 equals the one exported from TP=1.

The tiny model has ONE kv head, so TP=2 also exercises megatron's "fewer kv heads than TP ranks" QKV layout, and
fc1's per-shard cat(gate_i, up_i) layout in the adapter export. This file is also the worker (run as a script).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
STEPS = 5


def _worker(hf_dir: str, out_dir: str) -> None:
    """One rank: for LoRA then DoRA, load the base, add adapters, 5 Adam steps on a fixed batch, export the adapter."""
    results = {kind: _train_and_export(kind, hf_dir, Path(out_dir) / kind) for kind in ("lora", "dora")}
    if int(os.environ.get("RANK", "0")) == 0:
        (Path(out_dir) / "losses.json").write_text(json.dumps(results))


def _train_and_export(kind: str, hf_dir: str, out_dir: Path) -> dict:
    import torch

    sys.path.insert(0, str(TESTS))
    from model_helpers import tiny_config

    from gemma3_runtime.bridge.engine import Parallelism, WeightEngine
    from gemma3_runtime.bridge.peft_adapter import save_hf_adapter
    from gemma3_runtime.bridge.safetensors_io import HFTensorReader
    from gemma3_runtime.model.provider import Gemma3ModelProvider
    from gemma3_runtime.peft import PeftConfig, apply_peft, trainable_parameters

    cfg = tiny_config()
    tp = int(os.environ.get("WORLD_SIZE", "1"))
    models = Gemma3ModelProvider.from_config(
        cfg, device="cpu", tensor_model_parallel_size=tp
    ).provide_distributed_model()
    with HFTensorReader(Path(hf_dir)) as reader:
        WeightEngine(cfg, Parallelism.current()).load(models, reader, "model.")
    pcfg = PeftConfig(kind=kind, rank=4, alpha=8)
    apply_peft(models, pcfg)
    opt = torch.optim.Adam([p for _, p in trainable_parameters(models[0])], lr=2e-2)
    gen = torch.Generator().manual_seed(11)
    ids = torch.randint(0, cfg.vocab_size, (2, 25), generator=gen)
    inputs, labels = ids[:, :-1], ids[:, 1:]
    pos = torch.arange(inputs.shape[1])[None].expand_as(inputs)
    losses = []
    for _ in range(STEPS):
        loss = models[0](input_ids=inputs, position_ids=pos, labels=labels).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save_hf_adapter(models, pcfg, cfg, out_dir / "adapter")
    with torch.no_grad():
        logits = models[0](input_ids=inputs, position_ids=pos)
    peft_diff = None
    if int(os.environ.get("RANK", "0")) == 0:  # the exported adapter computes what the TP-sharded model computes
        import peft
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
        hf = peft.PeftModel.from_pretrained(base, out_dir / "adapter").eval()
        with torch.no_grad():
            peft_diff = (hf(input_ids=inputs).logits - logits).abs().max().item()
    return {"losses": losses, "peft_vs_megatron": peft_diff}


def _run(nproc: int, hf_dir: Path, out_dir: Path) -> dict[str, dict]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-port",
        str(29500 + (os.getpid() + nproc) % 1000),
        __file__,
        str(hf_dir),
        str(out_dir),
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out_dir / "losses.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Losses of TP=1 and TP=2 runs (LoRA and DoRA each) and their output directories."""
    sys.path.insert(0, str(TESTS))
    from model_helpers import hf_model, tiny_config

    root = tmp_path_factory.mktemp("peft_tp")
    hf_model(tiny_config()).save_pretrained(root / "hf")
    return {tp: (_run(tp, root / "hf", root / f"tp{tp}"), root / f"tp{tp}") for tp in (1, 2)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_tp2_matches_tp1(runs, kind):
    from safetensors.torch import load_file

    (losses1, dir1), (losses2, dir2) = runs[1], runs[2]
    tp1, tp2 = losses1[kind]["losses"], losses2[kind]["losses"]
    print(f"{kind} TP=1 losses {tp1}\n{kind} TP=2 losses {tp2}")
    assert tp1[-1] < tp1[0] - 0.1, "the adapters did not train; the comparison would be vacuous"
    worst = max(abs(a - b) / abs(a) for a, b in zip(tp1, tp2, strict=False))
    print(f"{kind}: worst relative per-step loss difference TP=2 vs TP=1: {worst:.2e}")
    assert worst <= 1e-5, (tp1, tp2)
    # The adapter exported from TP=2 (q/k/v rows of one kv head spread over both ranks, fc1 as cat(gate_i, up_i)
    # per rank) computes in HF PEFT what the sharded model computes, and equals TP=1's up to Adam's noise on
    # near-zero gradients (~1e-3 relative here; a layout mistake would be O(1)).
    print(
        f"{kind}: HF PEFT adapter vs megatron logits: TP=1 {losses1[kind]['peft_vs_megatron']:.2e}, "
        f"TP=2 {losses2[kind]['peft_vs_megatron']:.2e}"
    )
    assert losses1[kind]["peft_vs_megatron"] < 1e-4 and losses2[kind]["peft_vs_megatron"] < 1e-4
    one = load_file(dir1 / kind / "adapter" / "adapter_model.safetensors")
    two = load_file(dir2 / kind / "adapter" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        assert (one[key] - two[key]).abs().max() <= 1e-2 * one[key].abs().max() + 1e-4, key


def _cli_run(nproc: int, save: Path, flags: list[str], overrides: list[str]) -> subprocess.CompletedProcess:
    """`gemma3-runtime run` on the tiny model, under torchrun when nproc > 1."""
    sys.path.insert(0, str(TESTS))
    from train_helpers import runtime_env

    launcher = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc),
            "--master-port",
            str(29700 + (os.getpid() + nproc) % 1000),
            "-m",
        ]
        if nproc > 1
        else [sys.executable, "-m"]
    )
    cmd = [
        *launcher,
        "gemma3_runtime.cli.main",
        "run",
        "--device",
        "cpu",
        *flags,
        f"checkpoint.save={save}",
        "train.global_batch_size=4",
        "data.seq_length=16",
        "logging.log_interval=1",
        "logging.loss_curve_png=false",
        "eval.interval=null",
        *overrides,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=runtime_env())
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_tp2_lora_through_the_training_loop_matches_tp1(tmp_path):
    """The real loop (DDP wrapper, grad clipping over sharded + replicated adapters, LR schedule), via the CLI."""
    sys.path.insert(0, str(TESTS))
    from train_helpers import step_losses

    base = tmp_path / "base"
    _cli_run(1, base, ["--recipe", "gemma3_tiny_pretrain"], ["train.train_iters=1", "optimizer.lr=0.01"])
    losses = {}
    for tp in (1, 2):
        save = tmp_path / f"lora_tp{tp}"
        _cli_run(
            tp,
            save,
            ["--recipe", "gemma3_tiny_finetune", "--peft", "lora"],
            [
                f"checkpoint.pretrained_checkpoint={base}",
                "train.train_iters=5",
                "optimizer.lr=0.001",
                "scheduler.lr_warmup_iters=1",
                "data.kind=mock",
                f"parallelism.tensor_model_parallel_size={tp}",
            ],
        )
        losses[tp] = step_losses(save)
    print(f"loop LoRA TP=1 {losses[1]}\nloop LoRA TP=2 {losses[2]}")
    assert len(losses[1]) == len(losses[2]) == 5 and len(set(losses[1])) > 1
    worst = max(abs(a - b) / abs(a) for a, b in zip(losses[1], losses[2], strict=False))
    print(f"loop LoRA: worst relative per-step loss difference TP=2 vs TP=1: {worst:.2e}")
    assert worst <= 1e-5


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
