"""`gemma3-runtime generate` bad input: exit code 2 and ONE line on stderr naming the flag or file - before any
model is built. Runs the real CLI entry point in-process (argv in, exit code and stderr out)."""

from __future__ import annotations

import json

import pytest

from gemma3_runtime.cli.main import main

pytestmark = pytest.mark.unit


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(["generate", *argv])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_model_path(capsys, tmp_path):
    missing = tmp_path / "no-such-model"
    assert_one_line_error(
        *run(capsys, "--hf_model_path", str(missing), "--prompt", "hi"), str(missing), "does not exist"
    )


def test_no_model_at_all(capsys):
    assert_one_line_error(*run(capsys, "--prompt", "hi"), "--hf-model-path")


def test_missing_megatron_path(capsys, tmp_path):
    assert_one_line_error(
        *run(capsys, "--megatron-model-path", str(tmp_path / "ckpt"), "--prompt", "hi"),
        "--megatron-model-path",
        "does not exist",
    )


def test_hf_directory_of_another_architecture(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    assert_one_line_error(
        *run(capsys, "--hf-model-path", str(tmp_path), "--prompt", "hi"), "config.json", "'llama'", "not Gemma 3"
    )


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--max_new_tokens", "0"], "--max-new-tokens"),
        (["--temperature", "-0.5"], "--temperature"),
        (["--top-p", "2"], "--top-p"),
        (["--pp", "2"], "--pp"),
        (["--prompts-file", "/nonexistent/prompts.txt"], "--prompts-file"),
        (["--tune-kernels", "--no-compile"], "--tune-kernels"),
    ],
)
def test_bad_flags(capsys, tmp_path, argv, needle):
    (tmp_path / "config.json").write_text("{}")
    assert_one_line_error(*run(capsys, "--hf-model-path", str(tmp_path), *argv), needle)


def test_prompts_file_formats(tmp_path):
    import argparse

    from gemma3_runtime.cli.generate import add_parser, read_prompts

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    text = tmp_path / "p.txt"
    text.write_text("first\n\nsecond line\\nwith a newline\n")
    args = parser.parse_args(["generate", "--prompts_file", str(text)])
    assert read_prompts(args) == ["first", "second line\nwith a newline"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps("b") + "\n")
    args = parser.parse_args(["generate", "--prompts-file", str(jsonl)])
    assert read_prompts(args) == ["a", "b"]
