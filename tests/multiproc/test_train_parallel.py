"""DP=2 and TP=2 under torchrun (2 CPU processes, gloo) give the per-step losses of a single process within 1e-5
relative: the loss is normalised by the loss tokens of the whole global batch, so the split does not matter."""

import socket
import sys

import pytest

from train_helpers import run_cli_args, run_subprocess, step_losses

pytestmark = [pytest.mark.unit, pytest.mark.slow]

ITERS = 3


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(save, extra):
    args = run_cli_args(save, ITERS, ["checkpoint.save_at_end=false", *extra])
    module_args = args[args.index("-m") + 1:]  # gemma3_runtime.cli.main run ...
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--nnodes=1",
            f"--master-port={_port()}", "--master-addr=127.0.0.1", "-m", *module_args]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    save = tmp_path_factory.mktemp("single") / "run"
    proc = run_subprocess(run_cli_args(save, ITERS, ["checkpoint.save_at_end=false"]))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return step_losses(save)


@pytest.mark.parametrize("layout, extra", [
    ("dp2", []),
    ("tp2", ["parallelism.tensor_model_parallel_size=2"]),
])
def test_two_processes_match_one(layout, extra, single, tmp_path):
    save = tmp_path / layout
    proc = run_subprocess(_torchrun(save, extra), timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    losses = step_losses(save)
    assert len(losses) == len(single) == ITERS
    for ours, ref in zip(losses, single):
        assert abs(ours - ref) <= 1e-5 * abs(ref), (layout, losses, single)
    print(f"{layout}: {losses} vs single {single}")
