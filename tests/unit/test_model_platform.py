"""platform: explicit, logged device choice (never a silent CPU fallback) and idempotent distributed init."""

from __future__ import annotations

import logging

import pytest
import torch

from gemma3_runtime import platform

pytestmark = pytest.mark.unit


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour on a machine without CUDA")
def test_cuda_requested_without_cuda_is_an_error_not_a_fallback():
    with pytest.raises(platform.DeviceError, match=r"--device cuda: CUDA is not usable here .* use --device cpu"):
        platform.select_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the default on a machine without CUDA")
def test_default_device_is_logged_with_the_reason(caplog):
    with caplog.at_level(logging.INFO, logger="gemma3_runtime.platform"):
        assert platform.select_device(None) == torch.device("cpu")
        assert platform.select_device("cpu") == torch.device("cpu")
    assert "device: cpu (default: CUDA is not available)" in caplog.text
    assert "device: cpu (requested with --device cpu)" in caplog.text


def test_unknown_device_names_the_choices():
    with pytest.raises(platform.DeviceError, match=r"--device: 'tpu' is not a device, expected one of cpu, cuda"):
        platform.select_device("tpu")


def test_init_distributed_is_idempotent_and_refuses_a_different_layout():
    state = platform.init_distributed("cpu", tp=1, pp=1)
    assert (state.world_size, state.tp, state.pp, state.device.type) == (1, 1, 1, "cpu")
    assert platform.init_distributed("cpu", tp=1, pp=1).world_size == 1
    with pytest.raises(platform.DeviceError, match="tp=2 x pp=1 x cp=1 do not divide the world size 1"):
        platform.init_distributed("cpu", tp=2, pp=1)
    with pytest.raises(platform.DeviceError, match="tp=1 x pp=1 x cp=2 do not divide the world size 1"):
        platform.init_distributed("cpu", tp=1, pp=1, cp=2)


def test_a_gloo_group_left_by_someone_else_is_refused_for_cuda():
    """A process group someone else created with gloo (a test helper reading a checkpoint, a notebook) cannot carry
    megatron's CUDA collectives: one clear error before any CUDA work, not a segfault in the first all-gather."""
    import torch.distributed as dist

    platform.teardown()
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(platform.DeviceError, match="already initialised with the gloo backend"):
            platform.init_distributed(torch.device("cuda"), tp=1, pp=1)
        assert platform.init_distributed("cpu", tp=1, pp=1).world_size == 1  # the same group serves the CPU
    finally:
        platform.teardown()
        if dist.is_initialized():
            dist.destroy_process_group()


_ENTRY_CHECK = """
import sys
import torch.distributed as dist
from megatron.core import parallel_state
from gemma3_runtime.cli.main import entry
code = entry(sys.argv[1:])
assert code == 0, code
assert not dist.is_initialized(), "process group left for interpreter shutdown"
assert not parallel_state.model_parallel_is_initialized()
print("released")
"""


def test_process_entry_releases_the_process_group(tmp_path):
    """`gemma3-runtime` / `python -m gemma3_runtime.cli.main` destroy the parallel state and process group they
    created before the interpreter exits (left to shutdown, a gloo rank aborted after a finished run)."""
    import subprocess
    import sys

    from train_helpers import run_cli_args, runtime_env

    argv = run_cli_args(tmp_path / "run", 1, ["checkpoint.save_at_end=false"])
    argv = argv[argv.index("-m") + 2 :]  # the subcommand and its arguments
    done = subprocess.run(
        [sys.executable, "-c", _ENTRY_CHECK, *argv], env=runtime_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and "released" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
