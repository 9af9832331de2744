"""The front table's harness: bench/front_table.py picks each anchor at its best micro-batch (an OOM never wins) and
pairs it with ours from the same call; bench/train_throughput.py's sweep skips what cannot fit, its size switch
builds the exact configs on one card with the anchor's LoRA, and its CPU smoke runs LoRA on a random base."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import front_table  # noqa: E402

pytestmark = pytest.mark.unit
FIXTURE = Path(__file__).parent / "bench_fixtures" / "front_table_call.json"


def _rows() -> dict[str, dict]:
    return {row["kind"]: row for row in front_table.rows_of_call(json.loads(FIXTURE.read_text()))}


def test_the_anchor_is_its_best_micro_batch_and_ours_the_shipped_defaults() -> None:
    rows = _rows()
    full, lora = rows["full"], rows["lora"]
    assert (full["anchor"]["variant"], full["anchor"]["mbs"], full["anchor"]["tok_s"]) == ("compile", 8, 52350)
    assert full["ours"]["variant"] == "defaults"  # a faster ablation (minus-compile) is not what users get
    assert full["ratio"] == round(78535 / 52350, 2) == 1.5
    assert (lora["anchor"]["mbs"], lora["ratio"]) == (4, round(93300 / 31100, 2))
    assert lora["anchor_sweep"] == "2: 27.6k, 4: 31.1k, 8: oom"


def test_markdown_row_names_the_anchor_its_sweep_ours_ratio_card_and_date() -> None:
    line = front_table.markdown_row(_rows()["full"])
    assert line.startswith("| 1B full-parameter, seq 4096: >= 1.65x HF + compile, >= 55% MFU |")
    for part in ("HF + compile, mbs 8: 52,350 tok/s", "16: oom", "78,535 tok/s, 49.5% MFU, 32.4 GiB, mbs 8 x 2"):
        assert part in line
    assert line.endswith("| 1.50x | NVIDIA H200 | 2026-12-05 05:20 UTC |")


def test_best_of_sweep_ignores_ooms_errors_and_skips() -> None:
    rows = [{"mbs": 8, "status": "oom"}, {"mbs": 4, "tok_s": 10, "error": "x"}, {"mbs": 2, "tok_s": 5}, {"mbs": 1}]
    assert front_table.best_of_sweep(rows)["mbs"] == 2
    assert front_table.best_of_sweep(rows[:1]) is None


def test_rows_never_pair_across_calls(tmp_path: Path) -> None:
    records = json.loads(FIXTURE.read_text())
    anchors = [r for r in records if r["impl"] in ("env", "hf")]
    ours = [r for r in records if r["impl"] in ("env", "ours")]
    (tmp_path / "a.json").write_text(json.dumps(anchors))
    (tmp_path / "b.json").write_text(json.dumps(ours))
    assert all(row["ratio"] is None for row in front_table.rows_of_call(anchors) + front_table.rows_of_call(ours))
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "front_table.py"), str(tmp_path / "a.json"), str(tmp_path / "b.json")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.count("\n| 1B") == 4 and "x |" not in out  # four half rows, no ratio


def test_an_unreadable_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "front_table.py"), str(tmp_path / "bad.json")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


# ---- bench/train_throughput.py: sweep, size switch, random base ---------------------------------------------------
@pytest.fixture(scope="module")
def throughput():
    import train_throughput

    return train_throughput


def test_sweep_skips_larger_micro_batches_after_an_oom(throughput) -> None:
    records, measured = throughput.Records(None), []

    def one(mbs: int) -> dict:
        measured.append(mbs)
        return {"mbs": mbs, "status": "oom"} if mbs >= 4 else {"mbs": mbs, "tok_s": 100 * mbs}

    throughput.sweep([1, 4, 8, 2], one, records, "hf/compile", budget_s=1e9)
    assert measured == [1, 4, 2]
    assert [r["reason"] for r in records.rows if r.get("impl") == "skipped"] == ["micro-batch 4 ran out of memory"]
    measured.clear()
    throughput.sweep([8, 4, 2, 1], one, throughput.Records(None), "ours", budget_s=1e9, first_fit=True)
    assert measured == [8, 4, 2]  # descending with first_fit: the largest that runs, then stop


@pytest.mark.parametrize("size", ["4b", "12b"])
def test_size_switch_builds_the_exact_config_on_one_card_with_the_anchors_lora(throughput, size, tmp_path) -> None:
    from gemma3_runtime.model.config import Gemma3Config
    from gemma3_runtime.perf.config import PerfConfig

    args = throughput.parse_args(["--size", size, "--mbs", "8,4", "--nmb", "1", "--hf", "none"])
    assert (args.mbs, args.hf_mbs, args.hf_init_device) == ([8, 4], [8, 4], "cuda")
    base = throughput.random_base(args, tmp_path)
    assert not list(Path(base).rglob("*.distcp"))  # architecture only, no tensors
    cfg = throughput.run_config(args, PerfConfig(), "lora", 4, base)
    assert cfg.model.to_dict() == Gemma3Config.preset(size).to_dict()
    assert cfg.parallelism.tensor_model_parallel_size == cfg.parallelism.pipeline_model_parallel_size == 1
    assert (cfg.peft.rank, cfg.peft.alpha, len(cfg.peft.targets)) == (32, 32.0, 4)
    assert (cfg.train.micro_batch_size, cfg.train.global_batch_size) == (4, 4)


def test_cpu_smoke_lora_on_a_random_base_and_a_micro_batch_sweep(tmp_path: Path) -> None:
    """The CPU smoke of the script: LoRA starts from the seeded random base (no training step, nothing saved) and
    the sweep measures each micro-batch given; full recompute runs."""
    out = tmp_path / "smoke.json"
    cmd = [sys.executable, str(REPO / "bench" / "train_throughput.py"), "--device", "cpu", "--tiny", "--hf", "none"]
    cmd += ["--variants", "defaults,lora-defaults", "--mbs", "2,1", "--nmb", "1", "--steps", "2", "--warmup", "1"]
    cmd += ["--recompute", "full", "--json", str(out)]
    env = {"PYTHONPATH": f"{REPO / 'runtime'}:{REPO / 'launcher'}", "PATH": "/usr/bin:/bin"}
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300, env=env)
    ours = [r for r in json.loads(out.read_text()) if r["impl"] == "ours"]
    assert [(r["variant"], r["mbs"]) for r in ours] == [
        ("defaults", 2),
        ("defaults", 1),
        ("lora-defaults", 2),
        ("lora-defaults", 1),
    ]
    for r in ours:
        assert "error" not in r and r["tok_s"] > 0 and r["recompute"] == "full", r
        assert 4.0 < r["first_loss"] < 8.0  # ln(512) = 6.24: a random model on random tokens
    assert {r["lora"]["rank"] for r in ours if r["peft"]} == {32}


def test_bench_trainer_lora_on_the_random_base_with_full_recompute(throughput, tmp_path: Path) -> None:
    from gemma3_runtime.model.provider import Gemma3ModelProvider
    from gemma3_runtime.model.wrapping import unwrap
    from gemma3_runtime.perf.config import PerfConfig

    before = Gemma3ModelProvider.__dict__["from_config"]
    args = throughput.parse_args(["--device", "cpu", "--tiny", "--hf", "none", "--recompute", "full", "--mbs", "1"])
    cfg = throughput.run_config(args, PerfConfig(), "lora", 1, throughput.random_base(args, tmp_path))
    with throughput.bench_trainer(cfg, args.recompute) as trainer:
        trainer.build()
        model = unwrap(trainer.models[0])
        assert model.config.recompute_granularity == "full"
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(".adapter." in name for name in trainable)  # LoRA on a frozen (random) base
        assert trainer.train_step().resolve().loss > 0
    assert Gemma3ModelProvider.__dict__["from_config"] is before


_values = st.one_of(st.none(), st.booleans(), st.integers(-2, 10**6), st.floats(allow_nan=True), st.text(max_size=8))
_records = st.lists(
    st.one_of(
        _values,
        st.fixed_dictionaries(
            {
                "impl": st.sampled_from(["env", "hf", "ours", "skipped", "x"]),
                "variant": st.one_of(
                    st.sampled_from(["compile", "eager", "lora", "defaults", "lora-defaults"]), _values
                ),
                "size": st.one_of(st.sampled_from(["1b", "4b", "12b"]), _values),
                "seq": st.one_of(st.sampled_from([4096, 32768]), _values),
                "mbs": st.one_of(st.integers(1, 16), _values),
                "tok_s": _values,
                "mfu_vs_989": _values,
                "peak_gib": _values,
                "recompute": _values,
                "gpu": _values,
                "date": _values,
                "status": _values,
            }
        ),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(_records)
def test_any_records_give_well_formed_rows_or_none(records) -> None:
    """Hostile or damaged JSON never crashes the table: each row is one line of exactly six cells."""
    for row in front_table.rows_of_call(records):
        line = front_table.markdown_row(row)
        assert "\n" not in line and line.replace("\\|", "").count("|") == 7
        if row["ratio"] is not None:
            assert row["ratio"] > 0 and row["anchor"]["impl"] == "hf" and row["ours"]["impl"] == "ours"
