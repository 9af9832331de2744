"""LoRA / DoRA through the training loop and the CLIs, on the tiny random Gemma 3 (CPU, mock data):

- resume of a PEFT run is exact (per-step losses identical), its checkpoints hold adapters only;
- `gemma3-runtime convert export` of a PEFT run yields a plain HF model computing the adapted function, and
  `--hf-adapter` an HF PEFT adapter that does the same on the exported base;
- bad input (peft on a pretrain recipe, unknown target module, rank <= 0): exit 2 and one line naming it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import checkpoint_tensors, runtime_env, tiny_pretrain_cfg

pytestmark = pytest.mark.unit

N = 2


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory) -> Path:
    """A 'pretrained' tiny checkpoint (one pretraining step) to finetune from."""
    from gemma3_runtime.training.trainer import train

    path = tmp_path_factory.mktemp("peft_base") / "base"
    assert train(tiny_pretrain_cfg(path, train_iters=1, **{"train.seed": 7})).status == "completed"
    return path


def _finetune_cfg(base: Path, save: Path, kind: str):
    from gemma3_runtime.training.recipes import gemma3_tiny_finetune_config

    cfg = gemma3_tiny_finetune_config(
        name="peft",
        pretrained_checkpoint=str(base),
        peft=kind,
        train_iters=2 * N,
        global_batch_size=4,
        seq_length=16,
        finetune_lr=5e-2,
        lr_warmup_iters=1,
        dir=str(save),
    )
    cfg.data.kind = "mock"  # the tiny vocabulary cannot hold real tokenizer ids
    cfg.train.device = "cpu"
    cfg.eval.interval = None
    cfg.checkpoint.save_interval = None
    cfg.logging.log_interval = 1
    cfg.logging.loss_curve_png = False
    return cfg


@pytest.mark.parametrize("kind", ["dora"])  # DoRA's state is LoRA's plus the magnitude; LoRA runs in the TP tests
def test_peft_resume_is_exact_and_checkpoints_hold_adapters_only(base_ckpt, tmp_path, kind):
    from gemma3_runtime.training.trainer import train

    straight = train(_finetune_cfg(base_ckpt, tmp_path / "straight", kind))
    first = _finetune_cfg(base_ckpt, tmp_path / "resumed", kind)
    first.train.exit_interval = N
    assert train(first).status == "stopped"
    rest = train(_finetune_cfg(base_ckpt, tmp_path / "resumed", kind))
    assert rest.status == "completed" and rest.iteration == 2 * N
    losses = [row[1] for row in straight.train_losses]
    assert [row[1] for row in rest.train_losses] == losses
    assert losses[-1] < losses[0]

    tensors = checkpoint_tensors(tmp_path / "straight")
    model_keys = {k for k in tensors if not k.startswith("optimizer.")}
    assert model_keys and all(".adapter." in k for k in model_keys)
    expected = {"linear_in.weight", "linear_out.weight"} | ({"weight_magnitude"} if kind == "dora" else set())
    assert {k.split(".adapter.")[1] for k in model_keys} == expected
    resumed = checkpoint_tensors(tmp_path / "resumed")
    for key, value in tensors.items():
        assert torch.equal(value, resumed[key]), key


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gemma3_runtime.cli.main", *args],
        capture_output=True,
        text=True,
        env=runtime_env(),
        timeout=600,
    )


def _hf_logits(hf_dir: Path, ids: torch.Tensor, adapter: Path | None = None) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    if adapter is not None:
        import peft

        model = peft.PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_convert_export_of_a_peft_run_merged_and_as_hf_adapter(base_ckpt, tmp_path):
    """DoRA (the harder case: the magnitude must survive both exports)."""
    from gemma3_runtime.loader import load_model
    from gemma3_runtime.training.trainer import train

    run = tmp_path / "run"
    assert train(_finetune_cfg(base_ckpt, run, "dora")).status == "completed"
    base_hf, merged_hf, adapter_dir = tmp_path / "base_hf", tmp_path / "merged_hf", tmp_path / "adapter"
    # --hf-model is only a config/tokenizer reference; the tiny model has no tokenizer, so a config.json will do
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "config.json").write_text(json.dumps(load_model(run, device="cpu", merge=False)[1].to_hf()))
    result = _cli(
        "convert",
        "export",
        "--hf-model",
        str(reference),
        "--megatron-path",
        str(base_ckpt),
        "--hf-path",
        str(base_hf),
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for extra, out in (([], merged_hf), (["--hf-adapter"], adapter_dir)):
        result = _cli(
            "convert",
            "export",
            "--hf-model",
            str(base_hf),
            "--megatron-path",
            str(run),
            "--hf-path",
            str(out),
            "--device",
            "cpu",
            *extra,
        )
        assert result.returncode == 0, result.stderr[-3000:]

    models, config, _, _ = load_model(run, device="cpu", merge=False)
    ids = torch.randint(0, config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(20)[None].expand(2, 20)
    with torch.no_grad():
        adapted = models[0](input_ids=ids, position_ids=pos)
        # what `generate` and other readers of Megatron checkpoints get for a PEFT run: the merged model
        merged_megatron = load_model(run, device="cpu")[0][0](input_ids=ids, position_ids=pos)
    assert (merged_megatron - adapted).abs().max() < 1e-5
    merged = _hf_logits(merged_hf, ids)
    via_adapter = _hf_logits(base_hf, ids, adapter_dir)
    base = _hf_logits(base_hf, ids)
    print(
        f"dora tiny: adapters move logits by {(adapted - base).abs().max():.3g}; merged export "
        f"{(merged - adapted).abs().max():.2e}, HF PEFT adapter {(via_adapter - adapted).abs().max():.2e}"
    )
    assert (adapted - base).abs().max() > 1e-2
    assert (merged - adapted).abs().max() < 1e-4
    assert (via_adapter - adapted).abs().max() < 1e-4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--recipe", "gemma3_tiny_pretrain", "--peft", "lora"], "LoRA/DoRA needs a finetune recipe"),
        (
            ["--recipe", "gemma3_tiny_finetune", "--peft", "lora", "peft.targets=[linear_qkv,linear_q]"],
            "peft.targets: unknown target module 'linear_q'",
        ),
        (
            ["--recipe", "gemma3_tiny_finetune", "--peft", "dora", "peft.rank=0"],
            "peft.rank: expected a positive integer",
        ),
    ],
)
def test_bad_peft_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gemma3_runtime.cli.main",
            "run",
            "--device",
            "cpu",
            *args,
            f"checkpoint.save={tmp_path / 'run'}",
            f"checkpoint.pretrained_checkpoint={tmp_path / 'missing'}",
        ],
        capture_output=True,
        text=True,
        env=runtime_env(),
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
