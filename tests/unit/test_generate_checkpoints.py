"""Generation from Megatron checkpoints on a tiny random Gemma 3: an imported/pretrained-style checkpoint, and a
PEFT run's adapter-only checkpoint whose base is found through its run_config - through the Python loaders and
the real `gemma3-runtime generate` entry point. A small word-level tokenizer (the `tokenizers` library) stands in
for Gemma's, so prompts can go through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_helpers import build_model, tiny_config

pytestmark = pytest.mark.unit

VOCAB = 500


def make_tokenizer(directory: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(base checkpoint dir, PEFT run dir, the adapted model in memory, its config)."""
    from gemma3_runtime.bridge.megatron_io import save_megatron_model
    from gemma3_runtime.checkpoint.io import save_checkpoint
    from gemma3_runtime.peft import PeftConfig
    from gemma3_runtime.peft.apply import apply_peft
    from gemma3_runtime.peft.state import adapter_sharded_state_dict

    root = tmp_path_factory.mktemp("gen-ckpt")
    tokenizer = make_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    cfg = tiny_config(
        num_layers=3, window=4, vocab=VOCAB, layer_types=("sliding_attention", "full_attention", "sliding_attention")
    )
    model = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name:
                p.normal_(0.0, 0.3)
    save_megatron_model([model], root / "base", cfg, tokenizer_dir=tokenizer)
    peft = PeftConfig(kind="lora", rank=4, alpha=8.0)
    apply_peft([model], peft)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapter." in name:
                p.normal_(0.0, 0.2)  # trained-looking adapters: B is no longer zero
    run_config = {
        "model": cfg.to_dict(),
        "peft": peft.to_dict(),
        "checkpoint": {"pretrained_checkpoint": str(root / "base")},
    }
    save_checkpoint(root / "run", 7, adapter_sharded_state_dict(model), run_config, tokenizer_dir=tokenizer)
    return root / "base", root / "run", model.eval(), cfg


def greedy(model, ids, n=8):
    from gemma3_runtime.generate.api import decoder_for
    from gemma3_runtime.generate.engine import Engine

    return Engine(decoder_for(model)).generate(ids, n).tokens


PROMPTS = [[2, 11, 12, 13], [2, 40, 41, 42, 43, 44, 45]]


def test_peft_checkpoint_loads_base_then_adapters(checkpoints):
    from gemma3_runtime.generate.loading import build_model as load
    from gemma3_runtime.generate.loading import resolve_sources

    base_dir, run_dir, adapted, _ = checkpoints
    sources = resolve_sources(None, str(run_dir))
    assert sources.peft_section["kind"] == "lora"
    assert sources.base_checkpoint.iter_dir == base_dir / "iter_0000000"
    assert greedy(load(sources, torch.device("cpu"), "float32"), PROMPTS) == greedy(adapted, PROMPTS)
    base_only = load(resolve_sources(None, str(base_dir)), torch.device("cpu"), "float32")
    assert greedy(base_only, PROMPTS) != greedy(adapted, PROMPTS)  # the adapters do change the text


def test_cli_generates_from_the_peft_checkpoint(checkpoints, tmp_path, capsys):
    from gemma3_runtime.cli.main import main

    _, run_dir, adapted, _ = checkpoints
    out = tmp_path / "out.jsonl"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w11 w12 w13\nw40 w41 w42 w43 w44 w45\n")
    code = main(
        [
            "generate",
            "--megatron_model_path",
            str(run_dir),
            "--prompts-file",
            str(prompts),
            "--max-new-tokens",
            "8",
            "--device",
            "cpu",
            "--output",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["tokens"] for r in records] == greedy(adapted, PROMPTS)
    printed = capsys.readouterr().out
    assert printed.count("--- [") == 2


def test_peft_checkpoint_without_its_base_is_one_line(checkpoints, tmp_path, capsys):
    import yaml

    from gemma3_runtime.cli.main import main

    _, run_dir, _, _ = checkpoints
    broken = tmp_path / "iter_0000007"
    broken.mkdir()
    config = yaml.safe_load((run_dir / "iter_0000007" / "run_config.yaml").read_text())
    config["checkpoint"] = {}
    (broken / "run_config.yaml").write_text(yaml.safe_dump(config))
    code = main(["generate", "--megatron-model-path", str(broken), "--prompt", "w5", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pretrained_checkpoint" in err[0]


def test_tensor_parallel_generation_under_torchrun_equals_tp1(checkpoints, tmp_path):
    """TP=2 with ONE kv head (megatron gathers QKV; each rank caches the shared kv head for its own q heads),
    logits all-gathered over TP, rank 0 writes the results - the same tokens as TP=1."""
    import os
    import subprocess
    import sys

    from procs import free_port as _free_port
    from procs import pythonpath as _pythonpath

    base_dir, _, _, _ = checkpoints
    from gemma3_runtime.generate.loading import build_model as load
    from gemma3_runtime.generate.loading import resolve_sources

    expected = greedy(load(resolve_sources(None, str(base_dir)), torch.device("cpu"), "float32"), PROMPTS)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "w11 w12 w13"}\n{"prompt": "w40 w41 w42 w43 w44 w45"}\n')
    out = tmp_path / "out.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--nnodes=1",
        f"--master-port={_free_port()}",
        "--master-addr=127.0.0.1",
        "-m",
        "gemma3_runtime.cli.main",
        "generate",
        "--megatron-model-path",
        str(base_dir),
        "--tp",
        "2",
        "--prompts-file",
        str(prompts),
        "--max-new-tokens",
        "8",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--output",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": _pythonpath(), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [json.loads(line)["tokens"] for line in out.read_text().splitlines()] == expected
    assert proc.stdout.count("--- [") == 2  # rank 0 prints, rank 1 does not


def test_python_api_streams_and_samples(checkpoints, tmp_path):
    """`generate(model, tokenizer, prompts, ...)`: the text of the tokens, streamed for one prompt; sampling is
    reproducible with a seed, and top_k=1 sampling is greedy."""
    from transformers import AutoTokenizer

    from gemma3_runtime.generate import generate

    base_dir, _, adapted, _ = checkpoints
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir / "iter_0000000" / "tokenizer"))
    pieces: list[str] = []
    result = generate(adapted, tokenizer, "w11 w12 w13", 8, stream=pieces.append)
    assert result.output.tokens == greedy(adapted, PROMPTS[:1])
    assert (
        result.texts == [tokenizer.decode(result.output.tokens[0], skip_special_tokens=True)]
        and "".join(pieces) == result.texts[0] + "\n"
    )
    batch = generate(adapted, tokenizer, ["w11 w12 w13", "w40 w41 w42 w43 w44 w45"], 8)
    assert batch.output.tokens == greedy(adapted, PROMPTS)

    def sample(seed, **kw):
        return generate(adapted, tokenizer, ["w11 w12 w13"], 12, temperature=1.5, seed=seed, **kw).output.tokens

    assert sample(5) == sample(5) and sample(5) != sample(6)
    assert sample(5, top_k=1) == greedy(adapted, PROMPTS[:1], 12)
