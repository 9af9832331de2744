"""save_checkpoint / load_checkpoint with real megatron dist_checkpointing on CPU, and the commit protocol."""

import logging
import os
import time

import pytest
import torch

from gemma3_runtime.checkpoint import io as ckpt_io
from gemma3_runtime.checkpoint.layout import TRACKER_FILE, resolve_checkpoint
from gemma3_runtime.errors import UserInputError

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    if torch.distributed.is_initialized():
        yield
        return
    store = tmp_path_factory.mktemp("pg") / "store"
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def _sharded(values: dict[str, torch.Tensor]):
    from megatron.core.dist_checkpointing import ShardedTensor

    return {k: ShardedTensor.from_rank_offsets(k, v, replica_id=0) for k, v in values.items()}


def test_save_commit_and_load_round_trip(tmp_path, process_group):
    weights = {"a.weight": torch.randn(16, 8), "b.weight": torch.randn(4).to(torch.bfloat16)}
    tok = tmp_path / "hf"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    final = ckpt_io.save_checkpoint(
        tmp_path / "ck",
        0,
        _sharded(weights),
        {"model": {"num_layers": 1}},
        tokenizer_dir=tok,
        extra_files={"train_state.pt": b"x"},
    )
    assert final.name == "iter_0000000"
    assert (tmp_path / "ck" / TRACKER_FILE).read_text().strip() == "0"
    assert (final / "tokenizer" / "tokenizer.json").exists() and (final / "train_state.pt").read_bytes() == b"x"
    assert resolve_checkpoint(tmp_path / "ck").run_config["model"] == {"num_layers": 1}
    assert [p.name for p in (tmp_path / "ck").iterdir() if ".tmp-" in p.name] == []

    target = {k: torch.zeros_like(v) for k, v in weights.items()}
    loaded = ckpt_io.load_checkpoint(tmp_path / "ck", _sharded(target))
    for k, v in weights.items():
        assert torch.equal(loaded[k], v)

    with pytest.raises(UserInputError, match="missing 1 tensors"):
        ckpt_io.load_checkpoint(final, _sharded({"c.weight": torch.zeros(2)}))


def test_crash_during_save_leaves_no_committed_checkpoint(tmp_path, process_group, monkeypatch):
    from megatron.core import dist_checkpointing

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(dist_checkpointing, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        ckpt_io.save_checkpoint(tmp_path / "ck", 5, {}, {"model": {}})
    assert not (tmp_path / "ck" / TRACKER_FILE).exists()
    assert [p.name for p in (tmp_path / "ck").iterdir()] == []  # the temp iteration dir was removed
    with pytest.raises(UserInputError, match="no checkpoint iteration"):
        resolve_checkpoint(tmp_path / "ck")


def test_resave_same_iteration_replaces_it(tmp_path, process_group):
    for value in (1.0, 2.0):
        ckpt_io.save_checkpoint(tmp_path / "ck", 3, _sharded({"w": torch.full((4,), value)}), {"model": {}})
    loaded = ckpt_io.load_checkpoint(tmp_path / "ck", _sharded({"w": torch.zeros(4)}))
    assert torch.equal(loaded["w"], torch.full((4,), 2.0))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["iter_0000003", TRACKER_FILE, "run_config.yaml"]


def _leftover(path, age_s):
    """A temp iteration dir with a shard file, last written `age_s` seconds ago."""
    path.mkdir()
    (path / "__0_0.distcp").write_bytes(b"partial")
    stamp = time.time() - age_s
    for p in (path / "__0_0.distcp", path):
        os.utime(p, (stamp, stamp))
    return path


def test_next_save_removes_stale_temp_dirs_of_an_earlier_process(tmp_path, process_group, caplog):
    save = tmp_path / "ck"
    ckpt_io.save_checkpoint(save, 2, _sharded({"w": torch.full((4,), 2.0)}), {"model": {}})
    # an earlier process (any pid, even ours: containers restart with the same pids) killed while writing iter 4,
    # and one killed after its re-save of iter 2 was in place but before the old copy was deleted
    stale = [
        _leftover(save / "iter_0000004.tmp-999999", 3600),
        _leftover(save / f"iter_0000006.tmp-{os.getpid()}", 3600),
        _leftover(save / ".iter_0000002.old-999999", 3600),
    ]
    # kept: written after this process started (its writer may still be busy), and the only copy of an iteration
    fresh = _leftover(save / "iter_0000008.tmp-999998", 0)
    only_copy = _leftover(save / ".iter_0000001.old-999999", 3600)

    with caplog.at_level(logging.INFO, logger="gemma3_runtime.checkpoint.io"):
        ckpt_io.save_checkpoint(save, 4, _sharded({"w": torch.full((4,), 4.0)}), {"model": {}})
    removals = [r.getMessage() for r in caplog.records if "removed stale temporary" in r.getMessage()]
    assert len(removals) == 3 and all(any(p.name in m for m in removals) for p in stale)
    assert any("kept" in r.getMessage() and only_copy.name in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in save.iterdir()) == sorted(
        [only_copy.name, "iter_0000002", "iter_0000004", fresh.name, TRACKER_FILE, "run_config.yaml"]
    )

    # both committed iterations still load; the save dir resolves to the new one
    assert resolve_checkpoint(save).iteration == 4
    for source, value in ((save, 4.0), (save / "iter_0000002", 2.0)):
        loaded = ckpt_io.load_checkpoint(source, _sharded({"w": torch.zeros(4)}))
        assert torch.equal(loaded["w"], torch.full((4,), value))
