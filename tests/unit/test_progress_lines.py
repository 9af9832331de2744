"""Progress of conversion and batched generation the way training shows it (gemma3_runtime/progress.py): with
stdout/stderr not a terminal (a batch log) one plain line per interval with done/total, elapsed, ETA and rate, and
no carriage returns. The real `gemma3-runtime convert import/export` and `generate --prompts-file` run on a tiny
random Gemma 3 in a subprocess whose output is a pipe, as under sbatch or in a pod."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemma3_runtime.progress import ItemProgress, format_duration, track

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"
CLOCK = r"\d+:\d\d:\d\d"


def line_pattern(desc: str, unit: str) -> re.Pattern[str]:
    return re.compile(
        rf"^{TIMESTAMP} \| {desc} +(\d+)/(\d+) {unit}s \| elapsed {CLOCK} \| eta ({CLOCK}|\?) \| "
        rf"([0-9.]+|\?) {unit}/s$"
    )


def progress_lines(text: str, desc: str, unit: str) -> list[tuple[int, int]]:
    """(done, total) of each progress line in `text`; fails on a line that names `desc` but is malformed."""
    pattern = line_pattern(desc, unit)
    found = []
    for line in text.splitlines():
        if f"| {desc} " not in line:
            continue
        match = pattern.match(line)
        assert match, f"malformed progress line: {line!r}"
        found.append((int(match.group(1)), int(match.group(2))))
    return found


def assert_batch_log(found: list[tuple[int, int]], total: int) -> None:
    """Lines at intervals (more than one, at most a tenth of the total apart plus the last), counts rising, the
    last one complete."""
    assert len(found) >= 2, found
    assert all(t == total for _, t in found), found
    dones = [d for d, _ in found]
    assert dones == sorted(set(dones)), dones
    assert dones[-1] == total
    assert len(found) <= 11, found


@settings(max_examples=60, deadline=None)
@given(total=st.integers(min_value=1, max_value=400), chunk=st.integers(min_value=1, max_value=40))
def test_plain_lines_every_tenth_and_at_the_end(total, chunk):
    stream = io.StringIO()
    with ItemProgress(total, "work", "item", bar=False, stream=stream) as progress:
        done = 0
        while done < total:
            step = min(chunk, total - done)
            progress.update(step)
            done += step
    text = stream.getvalue()
    assert "\r" not in text
    found = progress_lines(text, "work", "item")
    assert found[-1] == (total, total)
    assert len(found) <= min(total, 10) + 1
    assert text.count("eta 0:00:00") >= 1  # nothing left at the end


def test_an_early_stop_says_where_it_stopped_and_disabled_prints_nothing():
    stream = io.StringIO()
    for index in track(range(100), 100, "work", "item", bar=False, stream=stream):
        if index == 4:
            break
    assert progress_lines(stream.getvalue(), "work", "item")[-1] == (4, 100)
    quiet = io.StringIO()
    list(track(range(10), 10, "work", "item", enabled=False, bar=False, stream=quiet))
    assert quiet.getvalue() == ""


def test_training_and_conversion_format_durations_alike():
    from gemma3_runtime.training import metrics

    assert metrics.format_duration is format_duration
    assert format_duration(3725) == "1:02:05" and format_duration(90061) == "1-01:01:01"


def runtime_cli(*args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), str(REPO / "launcher")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "gemma3_runtime.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def word_tokenizer(directory: Path, vocab_size: int) -> Path:
    """A word-level tokenizer (w4 ... wN) standing in for Gemma's, so prompts go through the real CLI."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory) -> Path:
    from model_helpers import hf_model, tiny_config

    path = tmp_path_factory.mktemp("tiny") / "hf"
    cfg = tiny_config(num_layers=2, vocab=200)
    hf_model(cfg).save_pretrained(str(path))
    word_tokenizer(path, cfg.vocab_size)
    return path


def test_conversion_prints_progress_lines_in_a_batch_log(tiny_hf_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    imported = runtime_cli("convert", "import", "--hf-model", str(tiny_hf_dir), "--megatron-path", str(ckpt))
    assert "\r" not in imported.stdout + imported.stderr
    found = progress_lines(imported.stdout, "import", "tensor")
    assert_batch_log(found, found[-1][1])
    exported = runtime_cli(
        "convert",
        "export",
        "--hf-model",
        str(tiny_hf_dir),
        "--megatron-path",
        str(ckpt),
        "--hf-path",
        str(tmp_path / "hf-out"),
    )
    assert "\r" not in exported.stdout + exported.stderr
    found = progress_lines(exported.stdout, "export", "tensor")
    assert_batch_log(found, found[-1][1])


def test_batched_generation_prints_progress_lines_in_a_batch_log(tiny_hf_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"w{5 + i} w{20 + i} w{40 + i}\n" for i in range(12)))
    proc = runtime_cli(
        "generate",
        "--hf-model-path",
        str(tiny_hf_dir),
        "--prompts-file",
        str(prompts),
        "--batch-size",
        "2",
        "--max-new-tokens",
        "3",
        "--device",
        "cpu",
        "--no-compile",
    )
    assert "\r" not in proc.stdout + proc.stderr
    assert proc.stdout.count("--- [") == 12
    assert progress_lines(proc.stdout, "generate", "prompt") == []  # stdout carries the text only
    found = progress_lines(proc.stderr, "generate", "prompt")
    assert [done for done, _ in found] == [2, 4, 6, 8, 10, 12]  # one line per batch: each is over a tenth
    assert_batch_log(found, 12)


def test_on_a_terminal_a_bar_instead_of_lines(capsys):
    stream = io.StringIO()
    for _ in track(range(30), 30, "import", "tensor", bar=True, stream=stream):
        pass
    assert stream.getvalue() == ""  # no plain lines
    err = capsys.readouterr().err
    assert "import" in err and "30/30" in err and "\r" in err  # tqdm's bar, redrawn in place
