"""Hugging Face `datasets` sources with the real Gemma 3 tokenizer: Parquet / Arrow / directories / hub ids give the
same SFT sequences as the JSONL path; tokenization is cached once per fingerprint; pretraining text and
`prepare-data` from the same sources; bad sources fail with one line."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from data_fixtures import HUB_ID, build_hub_cache, bundled_chat_rows, write_jsonl, write_parquet
from procs import pythonpath

from gemma3_runtime.errors import UserInputError

pytestmark = pytest.mark.unit

ROWS = 48


@pytest.fixture(scope="module")
def tokenizer(real_270m_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(real_270m_dir))


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory):
    import datasets

    root = tmp_path_factory.mktemp("chat")
    rows = bundled_chat_rows(limit=ROWS)
    shards = root / "shards"
    shards.mkdir()
    write_parquet(shards / "part-0.parquet", rows[: ROWS // 2])
    write_parquet(shards / "part-1.parquet", rows[ROWS // 2 :])
    datasets.Dataset.from_list(rows).save_to_disk(str(root / "saved"))
    return SimpleNamespace(
        jsonl=write_jsonl(root / "chat.jsonl", rows),
        parquet=write_parquet(root / "chat.parquet", rows),
        shards=shards,
        saved=root / "saved",
    )


def _data_cfg(paths, **fields):
    from gemma3_runtime.training.config import DataConfig

    return DataConfig(kind="sft", data_paths=[str(p) for p in paths], seq_length=64, **fields)


def _samples(dataset) -> list[dict[str, np.ndarray]]:
    return [dataset[i] for i in range(len(dataset))]


def _assert_same_samples(a, b) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(_samples(a), _samples(b), strict=True):
        assert sorted(x) == sorted(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _build(tokenizer, data_cfg, cache_dir):
    from gemma3_runtime.data.builder import build_datasets

    return build_datasets(data_cfg, 1234, len(tokenizer), tokenizer, 16, 4, str(cache_dir) if cache_dir else None)


@pytest.mark.parametrize("source", ["parquet", "shards", "saved"])
def test_datasets_sources_give_the_jsonl_sequences(tokenizer, chat_files, tmp_path, source):
    reference = _build(tokenizer, _data_cfg([chat_files.jsonl], valid_fraction=0.25), None)
    other = _build(tokenizer, _data_cfg([getattr(chat_files, source)], valid_fraction=0.25), tmp_path / "cache")
    _assert_same_samples(reference.train, other.train)
    _assert_same_samples(reference.valid, other.valid)
    assert sum(int(s["loss_mask"].sum()) for s in _samples(other.train)) > 0


def test_tokenized_once_per_fingerprint(tokenizer, chat_files, tmp_path, caplog):
    import shutil

    cache = tmp_path / "cache"
    parquet = shutil.copy(chat_files.parquet, tmp_path / "chat.parquet")
    caplog.set_level(logging.INFO, logger="gemma3_runtime.data")
    first = _build(tokenizer, _data_cfg([parquet]), cache)
    assert len([r for r in caplog.records if "tokenized" in r.getMessage()]) == 1
    caplog.clear()
    # a restart; a different seq_length / packing reuses the tokens (they are applied after the cache)
    again = _build(tokenizer, _data_cfg([parquet]), cache)
    _build(tokenizer, _data_cfg([parquet], packing=False), cache)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["data cache hit", "data cache hit"]
    _assert_same_samples(first.train, again.train)
    entries = sorted(p.name for p in cache.glob("sft-*"))
    assert len(entries) == 2 and entries[0].endswith(".json") and entries[1].endswith(".npz")
    manifest = json.loads((cache / entries[0]).read_text())
    assert manifest["examples"] == ROWS and manifest["sources"] == [str(parquet)]
    caplog.clear()
    write_parquet(Path(parquet), bundled_chat_rows(limit=ROWS - 1))  # changed content: a new fingerprint
    os.utime(parquet, ns=(1, 1))
    changed = _build(tokenizer, _data_cfg([parquet]), cache)
    assert len([r for r in caplog.records if "tokenized" in r.getMessage()]) == 1
    assert changed.train.num_examples == ROWS - 1


def test_hub_id_loads_offline_from_the_hf_home_cache(tokenizer, chat_files, tmp_path, real_270m_dir):
    hf_home = tmp_path / "hf_home"
    build_hub_cache(hf_home, chat_files.parquet)
    code = (
        "import json, sys\n"
        "from transformers import AutoTokenizer\n"
        "from gemma3_runtime.data.cached import sft_examples\n"
        "from gemma3_runtime.training.config import DataConfig\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "cfg = DataConfig(kind='sft', data_paths=[sys.argv[2]])\n"
        "examples = sft_examples(cfg.data_paths, tok, cfg, sys.argv[3], 'data.data_paths')\n"
        "print(json.dumps([e.input_ids for e in examples]))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": pythonpath(),
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    env.pop("HF_DATASETS_CACHE", None)
    args = [sys.executable, "-c", code, str(real_270m_dir), f"hf:{HUB_ID}", str(tmp_path / "cache")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from gemma3_runtime.data.cached import sft_examples

    expected = sft_examples([str(chat_files.jsonl)], tokenizer, _data_cfg([]), None, "k")
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [e.input_ids for e in expected]
    # an id that is not in the cache: one line naming the key and what to do
    args[4] = "hf:gemma3-launch-tests/absent"
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0 and "data.data_paths: cannot load 'hf:gemma3-launch-tests/absent'" in proc.stderr


def test_pretraining_text_and_prepare_data_from_parquet(tokenizer, tmp_path, real_270m_dir):
    from gemma3_runtime.cli.main import main
    from gemma3_runtime.data.builder import build_datasets

    docs = [{"text": f"Document number {i} says {' and '.join(['words'] * (i % 7 + 1))}."} for i in range(40)]
    jsonl, parquet = write_jsonl(tmp_path / "docs.jsonl", docs), write_parquet(tmp_path / "docs.parquet", docs)
    for source, prefix in ((jsonl, "from_jsonl"), (parquet, "from_parquet")):
        argv = ["prepare-data", "--input", str(source), "--output-prefix", str(tmp_path / prefix)]
        assert main([*argv, "--tokenizer", str(real_270m_dir), "--no-progress"]) == 0
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"from_jsonl{suffix}").read_bytes() == (tmp_path / f"from_parquet{suffix}").read_bytes()

    from gemma3_runtime.training.config import DataConfig

    cfg = DataConfig(kind="text", data_paths=[str(parquet)], seq_length=32, split="100,0,0")
    data = build_datasets(cfg, 1, len(tokenizer), tokenizer, 8, 0, str(tmp_path / "cache"))
    (prefix,) = {p.with_suffix("") for p in (tmp_path / "cache").glob("text-*.idx")}
    assert (tmp_path / "from_parquet.bin").read_bytes() == prefix.with_suffix(".bin").read_bytes()
    sample = data.train[0]
    assert sample["input_ids"].shape == (32,) and len(data.train) >= 8


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "absent.parquet", "does not exist"),
        (lambda d: write_jsonl(d / "rows.txt", [{"a": 1}]), "is not a .jsonl/.json/.parquet/.arrow file"),
        (lambda d: _mixed_dir(d), "mixes formats"),
        (lambda d: write_parquet(d / "other.parquet", [{"text": "x"}]), "expected messages or prompt+completion"),
        (lambda d: "hf:a/b/c", "is not a hub dataset id"),
    ],
)
def test_bad_sources_are_one_line(tokenizer, tmp_path, make, message):
    with pytest.raises(UserInputError) as info:
        _build(tokenizer, _data_cfg([make(tmp_path)]), tmp_path / "cache")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("data.data_paths")


def _mixed_dir(root: Path) -> Path:
    (root / "mixed").mkdir()
    write_parquet(root / "mixed" / "a.parquet", [{"text": "x"}])
    write_jsonl(root / "mixed" / "b.jsonl", [{"text": "x"}])
    return root / "mixed"


def test_validate_checks_the_new_data_and_logging_fields():
    from gemma3_runtime.training.config import apply_overrides
    from gemma3_runtime.training.recipes import gemma3_tiny_pretrain_config
    from gemma3_runtime.training.validate import validate

    for override, message in [
        ("data.kind=text", "data.data_paths is empty (data.kind=text"),
        ("data.text_key=", "data.text_key: expected a non-empty name"),
        ("logging.wandb_init_timeout_s=0", "logging.wandb_init_timeout_s=0"),
        ("logging.wandb_tags=['']", "logging.wandb_tags: expected names of 1 to 64 characters"),
    ]:
        cfg = gemma3_tiny_pretrain_config(name="t")
        apply_overrides(cfg, [override])
        with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(".", r"\.")):
            validate(cfg)
    cfg = gemma3_tiny_pretrain_config(name="t")
    apply_overrides(cfg, ["data.kind=sft", "data.data_paths=['hf:a b/c']"])
    with pytest.raises(UserInputError, match="is not a hub dataset id"):
        validate(cfg)
