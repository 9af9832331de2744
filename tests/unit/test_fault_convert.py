"""`convert import` and `convert export` SIGKILLed halfway (a real kill of the real `gemma3-runtime convert`, through
the test-only kill points of tests/fault_hooks): no half-written output under the final name, and the same command
run again completes cleanly over the leftovers, to tensors equal to the source's."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from procs import run_in_own_group, run_on_small_tmpfs
from safetensors.torch import load_file

from gemma3_launch.contract import STORAGE_FULL_EXIT_CODE
from gemma3_runtime.checkpoint.layout import TRACKER_FILE, read_tracker, resolve_checkpoint
from gemma3_runtime.errors import UserInputError

pytestmark = [pytest.mark.unit, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _env(kill_at: str | None = None) -> dict[str, str]:
    paths = [str(REPO / "runtime"), str(REPO / "launcher"), str(REPO / "tests")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    if kill_at:
        paths.insert(0, str(REPO / "tests" / "fault_hooks"))
        env["GEMMA3_TEST_KILL_AT"] = kill_at
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gemma3_runtime.cli.main", "convert", *args, "--device", "cpu"]


def _convert(*args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    return run_in_own_group(_command(*args), _env(kill_at), str(REPO), timeout=600)


def _tensors(hf_dir: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(hf_dir.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def _killed(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    assert "fault_hooks: SIGKILL" in res.stderr


def test_killed_import_then_killed_export_rerun_cleanly(tmp_path):
    from model_helpers import hf_model, tiny_config

    src, ckpt, out = tmp_path / "hf", tmp_path / "ckpt", tmp_path / "out"
    hf_model(tiny_config(num_layers=2)).save_pretrained(str(src))
    import_args = ("import", "--hf-model", str(src), "--megatron-path", str(ckpt))

    # import: killed with iter_0000000 complete but before the tracker commits it
    _killed(_convert(*import_args, kill_at=f"gemma3_runtime.checkpoint.io:write_text_atomic:1:before:{TRACKER_FILE}"))
    assert read_tracker(ckpt) is None
    with pytest.raises(UserInputError, match="no committed iteration"):
        resolve_checkpoint(ckpt)  # nothing reads it as a checkpoint
    rerun = _convert(*import_args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert resolve_checkpoint(ckpt).iteration == 0
    assert [p.name for p in ckpt.iterdir() if p.name.startswith(("iter_", ".iter_"))] == ["iter_0000000"]

    # export: killed after the shards are written, before config.json, the index and the rename
    export_args = ("export", "--hf-model", str(src), "--megatron-path", str(ckpt), "--hf-path", str(out))
    _killed(_convert(*export_args, kill_at="gemma3_runtime.bridge.safetensors_io:save_file:1:after"))
    assert not out.exists()  # nothing under the final name
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]  # only the temp sibling
    rerun = _convert(*export_args)  # no --overwrite needed: the killed export never published
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "hf", "out"]  # the leftover was removed
    exported, original = _tensors(out), _tensors(src)
    assert sorted(exported) == sorted(original)
    assert all(torch.equal(exported[k], v) for k, v in original.items())


def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """The tiny model's HF export (about 440 kB) onto a 256 kB tmpfs (a private mount namespace: `unshare`)."""
    from model_helpers import hf_model, tiny_config

    src, ckpt, mnt = tmp_path / "hf", tmp_path / "ckpt", tmp_path / "small"
    hf_model(tiny_config(num_layers=2)).save_pretrained(str(src))
    imported = _convert("import", "--hf-model", str(src), "--megatron-path", str(ckpt))
    assert imported.returncode == 0, imported.stderr[-3000:]
    export = shlex.join(
        _command("export", "--hf-model", str(src), "--megatron-path", str(ckpt), "--hf-path", str(mnt / "out"))
    )
    script = f"{export}\ncode=$?\nls -A {shlex.quote(str(mnt))}\nexit $code\n"
    try:
        res = run_on_small_tmpfs(mnt, "256k", script, _env(), timeout=600)
    except RuntimeError as exc:
        pytest.fail(f"the disk-full test cannot build its small file system: {exc}")
    assert res.returncode == STORAGE_FULL_EXIT_CODE, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and str(mnt) in errors[0] and "no space left" in errors[0], errors
    assert "Traceback" not in res.stderr
    assert res.stdout.split() == [], res.stdout  # the temp dir was removed; nothing under the final name
