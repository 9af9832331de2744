"""SFT data with the real Gemma 3 tokenizer: loss only on completions, chat turns, packing; mock data; batching;
the bundled synthetic dataset and its scorer."""

import json

import numpy as np
import pytest

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tokenizer(real_270m_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(real_270m_dir))


def test_prompt_completion_loss_only_on_the_completion(tokenizer):
    from gemma3_runtime.data.sft import tokenize_prompt_completion

    ex = tokenize_prompt_completion(tokenizer, "Wordcode: milk bottle ->", " bottle-ka milk-ka")
    prompt = [tokenizer.bos_token_id] + tokenizer("Wordcode: milk bottle ->", add_special_tokens=False)["input_ids"]
    completion = tokenizer(" bottle-ka milk-ka", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    full = prompt + completion
    assert ex.input_ids == full[:-1] and ex.labels == full[1:]
    trained = [label for label, m in zip(ex.labels, ex.loss_mask, strict=False) if m]
    assert trained == completion  # every completion token and the eos, nothing of the prompt


def test_chat_messages_in_gemma_turn_format_train_only_model_turns(tokenizer):
    from gemma3_runtime.data.sft import tokenize_messages

    assert not tokenizer.chat_template  # the base 270M has none: the Gemma turn format is used
    ex = tokenize_messages(
        tokenizer,
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Ciao"},
        ],
    )
    text = tokenizer.decode([ex.input_ids[0]] + ex.labels)
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\nCiao<end_of_turn>\n"
    )
    trained = tokenizer.decode([lab for lab, m in zip(ex.labels, ex.loss_mask, strict=False) if m])
    assert trained == "Hello<end_of_turn>\nCiao<end_of_turn>\n"


def test_packing_keeps_examples_separate(tokenizer, tmp_path):
    from gemma3_runtime.data.sft import build_sft_dataset

    rows = [{"prompt": f"Wordcode: w{i} ->", "completion": f" x{i}"} for i in range(12)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    packed = build_sft_dataset([path], tokenizer, seq_length=64, packing=True, seed=1)
    single = build_sft_dataset([path], tokenizer, seq_length=64, packing=False, seed=1)
    assert len(single) == 12 and len(packed) < 12
    assert sum(len(seqs) for seqs in packed.sequences) == 12
    for i in range(len(packed)):
        s = packed[i]
        for seg in range(1, s["segment_ids"].max() + 1):
            where = np.flatnonzero(s["segment_ids"] == seg)
            assert (s["position_ids"][where] == np.arange(len(where))).all()  # positions restart per example
            assert s["labels"][where[-1]] == tokenizer.eos_token_id  # each example ends in its own eos
            assert s["loss_mask"][where[-1]] == 1
        pad = s["segment_ids"] == 0
        assert (s["loss_mask"][pad] == 0).all()
    assert sum(packed[i]["loss_mask"].sum() for i in range(len(packed))) == sum(
        single[i]["loss_mask"].sum() for i in range(len(single))
    )


def test_bad_sft_rows_name_file_and_line(tmp_path):
    from gemma3_runtime.data.sft import read_jsonl
    from gemma3_runtime.errors import UserInputError

    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"text": "no prompt"}\n')
    with pytest.raises(UserInputError, match=r"bad.jsonl:2: expected an object with 'prompt' and 'completion'"):
        read_jsonl(path)


def test_mock_samples_and_batches_do_not_depend_on_the_dp_layout():
    import torch

    from gemma3_runtime.data.batches import EpochShuffledIndex, microbatches
    from gemma3_runtime.data.mock import MockDataset

    ds = MockDataset(vocab_size=100, seq_length=8, seed=3)
    assert np.array_equal(ds[5]["input_ids"], MockDataset(100, 8, 3)[5]["input_ids"])
    index = EpochShuffledIndex(1000, seed=1, shuffle=True)
    one = torch.cat([b["input_ids"] for b in microbatches(ds, index, 8, 8, 2, 0, 1, torch.device("cpu"))])
    two = torch.cat(
        [b["input_ids"] for r in range(2) for b in microbatches(ds, index, 8, 8, 2, r, 2, torch.device("cpu"))]
    )
    assert torch.equal(one, two)


def test_bundled_dataset_is_reproducible_and_held_out_is_unseen():
    from gemma3_runtime.data import synthetic

    train, heldout = synthetic.generate()
    assert synthetic.load_items(synthetic.bundled_path("train")) == train
    assert synthetic.load_items(synthetic.bundled_path("heldout")) == heldout
    assert len(heldout) >= 50

    def words(item):
        return frozenset(item.prompt[len(synthetic.PROMPT_PREFIX) : -len(synthetic.PROMPT_SUFFIX)].split())

    assert not {words(i) for i in heldout} & {words(i) for i in train}
    assert synthetic.apply_rule(["river", "apple", "stone"]) == " stone-ka apple-ka river-ka"
    assert synthetic.is_correct(" stone-ka apple-ka\nmore text", "stone-ka  apple-ka")
    assert not synthetic.is_correct("stone-ka", "stone-ka apple-ka")
    assert synthetic.task_accuracy(lambda prompts: [""] * len(prompts), heldout) == 0.0


def test_prepare_data_writes_an_indexed_dataset_megatron_reads(tokenizer, real_270m_dir, tmp_path, capsys):
    from gemma3_runtime.cli.main import main
    from gemma3_runtime.data.builder import build_datasets
    from gemma3_runtime.training.config import DataConfig

    docs = [f"Document number {i} talks about rivers and stones." for i in range(40)]
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    assert (
        main(
            [
                "prepare-data",
                "--input",
                str(src),
                "--output-prefix",
                str(tmp_path / "corpus"),
                "--tokenizer",
                str(real_270m_dir),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (tmp_path / "corpus.bin").exists() and (tmp_path / "corpus.idx").exists()
    assert not list(tmp_path.glob("*.tmp-*"))
    cfg = DataConfig(kind="indexed", data_paths=[str(tmp_path / "corpus")], seq_length=16, split="90,10,0")
    ds = build_datasets(
        cfg,
        seed=1,
        vocab_size=len(tokenizer),
        tokenizer=tokenizer,
        train_samples=8,
        valid_samples=2,
        cache_dir=str(tmp_path / "cache"),
    )
    sample = ds.train[0]
    assert sample["input_ids"].shape == (16,) and (sample["labels"][:-1] == sample["input_ids"][1:]).all()
    text = tokenizer.decode(sample["input_ids"])
    assert "rivers and stones" in text

    assert (
        main(
            [
                "prepare-data",
                "--input",
                str(tmp_path / "missing.jsonl"),
                "--output-prefix",
                str(tmp_path / "x"),
                "--tokenizer",
                str(real_270m_dir),
            ]
        )
        == 2
    )
    assert "--input" in capsys.readouterr().err


def test_collate_drops_trivial_segment_ids_on_the_host() -> None:
    """All-1 segment_ids (one document per row, no padding) never reach the device: the model then runs plain
    causal attention without a per-micro-batch device test; genuinely packed rows keep theirs."""
    import torch

    from gemma3_runtime.data.batches import collate

    row = {"input_ids": np.arange(6), "segment_ids": np.ones(6, dtype=np.int64)}
    plain = collate([row, dict(row)], torch.device("cpu"))
    assert "segment_ids" not in plain and plain["input_ids"].shape == (2, 6)
    packed = dict(row, segment_ids=np.array([1, 1, 2, 2, 2, 0]))
    kept = collate([row, packed], torch.device("cpu"))
    assert kept["segment_ids"].tolist() == [[1] * 6, [1, 1, 2, 2, 2, 0]]
