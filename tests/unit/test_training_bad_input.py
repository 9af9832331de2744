"""`gemma3-runtime run` with bad input: exit code 2 and ONE line naming the field or file, before any training."""

import json

import pytest
from train_helpers import run_subprocess

pytestmark = pytest.mark.unit

BASE = ["run", "--recipe", "gemma3_tiny_pretrain", "--device", "cpu", "train.train_iters=1"]


def _run(argv, capsys):
    from gemma3_runtime.cli.main import main

    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_unknown_override_key_exits_2_with_one_line_as_a_real_process(tmp_path):
    import sys

    proc = run_subprocess(
        [
            sys.executable,
            "-m",
            "gemma3_runtime.cli.main",
            *BASE,
            f"checkpoint.save={tmp_path}",
            "train.global_bach_size=8",
        ],
        timeout=300,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "unknown config key 'train.global_bach_size'; did you mean train.global_batch_size" in lines[0]
    assert not (tmp_path / "steps.jsonl").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["train.micro_batch_size=two"], "config key 'train.micro_batch_size': expected int, got 'two'"),
        (
            ["train.global_batch_size=5", "train.micro_batch_size=2"],
            "train.global_batch_size=5 is not divisible by train.micro_batch_size x data-parallel size = 2 x 1 = 2",
        ),
        (
            ["data.kind=sft", "data.data_paths=[/nonexistent/train.jsonl]"],
            "data.data_paths: '/nonexistent/train.jsonl' does not exist (expected a JSONL file)",
        ),
        (
            ["data.kind=indexed", "data.data_paths=[/nonexistent/corpus]"],
            "data.data_paths: '/nonexistent/corpus.bin' does not exist",
        ),
        (["train.precision=bf16-mixed"], "train.precision=bf16-mixed needs CUDA"),
        (["--peft", "lora"], "LoRA/DoRA needs a finetune recipe, gemma3_tiny_pretrain_config is a pretrain recipe"),
    ],
)
def test_bad_run_input(extra, message, capsys, tmp_path):
    code, err = _run([*BASE, f"checkpoint.save={tmp_path / 'save'}", *extra], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err


def test_pretrained_checkpoint_that_is_an_hf_directory(tmp_path, capsys):
    hf = tmp_path / "llama"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    code, err = _run(
        [
            "run",
            "--recipe",
            "gemma3_tiny_finetune",
            "--pretrained-checkpoint",
            str(hf),
            "--device",
            "cpu",
            f"checkpoint.save={tmp_path / 'save'}",
        ],
        capsys,
    )
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{hf}: no checkpoint iteration" in err


def test_pretrained_checkpoint_of_another_format(tmp_path, capsys):
    ckpt = tmp_path / "other"
    (ckpt / "iter_0000010").mkdir(parents=True)
    (ckpt / "latest_checkpointed_iteration.txt").write_text("10\n")
    (ckpt / "iter_0000010" / "run_config.yaml").write_text("model:\n  num_layers: 2\n")
    code, err = _run(
        [
            "run",
            "--recipe",
            "gemma3_tiny_finetune",
            "--pretrained-checkpoint",
            str(ckpt),
            "--device",
            "cpu",
            f"checkpoint.save={tmp_path / 'save'}",
        ],
        capsys,
    )
    assert code == 2 and len(err.splitlines()) == 1
    assert "not a gemma3-launch checkpoint" in err


def test_pretrained_checkpoint_with_a_broken_model_section(tmp_path, capsys):
    ckpt = tmp_path / "broken"
    (ckpt / "iter_0000000").mkdir(parents=True)
    (ckpt / "latest_checkpointed_iteration.txt").write_text("0\n")
    (ckpt / "iter_0000000" / "run_config.yaml").write_text(
        "format: gemma3-launch/megatron/v1\nmodel:\n  num_layers: 2\n  hidden_size: 64\n"
    )
    code, err = _run(
        [
            "run",
            "--recipe",
            "gemma3_tiny_finetune",
            "--pretrained-checkpoint",
            str(ckpt),
            "--device",
            "cpu",
            f"checkpoint.save={tmp_path / 'save'}",
        ],
        capsys,
    )
    assert code == 2 and len(err.splitlines()) == 1
    assert "checkpoint.pretrained_checkpoint" in err and "missing keys" in err
