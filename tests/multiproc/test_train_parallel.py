"""DP=2, TP=2, CP=2 and PP=2 under torchrun (2 CPU processes, gloo) give the per-step losses of a single process
within 1e-5 relative: the loss is normalised by the loss tokens of the whole global batch, so the split does not
matter."""

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
    module_args = args[args.index("-m") + 1 :]  # gemma3_runtime.cli.main run ...
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--nnodes=1",
        f"--master-port={_port()}",
        "--master-addr=127.0.0.1",
        "-m",
        *module_args,
    ]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    save = tmp_path_factory.mktemp("single") / "run"
    proc = run_subprocess(run_cli_args(save, ITERS, ["checkpoint.save_at_end=false"]))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return step_losses(save)


@pytest.mark.parametrize(
    "layout, extra",
    [
        ("dp2", []),
        ("tp2", ["parallelism.tensor_model_parallel_size=2"]),
        ("cp2", ["parallelism.context_parallel_size=2"]),
    ],
)
def test_two_processes_match_one(layout, extra, single, tmp_path):
    save = tmp_path / layout
    proc = run_subprocess(_torchrun(save, extra), timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    if layout == "cp2":  # the run really split the sequences (the layout line of rank 0)
        assert "(tp 1, pp 1, cp 2, dp 1)" in proc.stdout + proc.stderr
    losses = step_losses(save)
    assert len(losses) == len(single) == ITERS
    for ours, ref in zip(losses, single, strict=False):
        assert abs(ours - ref) <= 1e-5 * abs(ref), (layout, losses, single)
    print(f"{layout}: {losses} vs single {single}")


def test_pp2_finetune_matches_pp1(tmp_path):
    """PP=2 (megatron's 1F1B schedule, tied embedding split over the first and last stage) from the same
    pretrained weights gives PP=1's per-step losses. (From random init PP differs: each stage draws its layers
    from the seed in another order.)"""
    base = tmp_path / "base"
    proc = run_subprocess(run_cli_args(base, 1, []))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def finetune_args(save):
        args = run_cli_args(save, ITERS, ["checkpoint.save_at_end=false", "data.kind=mock"])
        i = args.index("--recipe")
        args[i + 1 : i + 2] = ["gemma3_tiny_finetune", "--pretrained-checkpoint", str(base)]
        return args

    single = run_subprocess(finetune_args(tmp_path / "pp1"))
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    args = finetune_args(tmp_path / "pp2") + ["parallelism.pipeline_model_parallel_size=2"]
    module_args = args[args.index("-m") + 1 :]
    proc = run_subprocess(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node=2",
            "--nnodes=1",
            f"--master-port={_port()}",
            "--master-addr=127.0.0.1",
            "-m",
            *module_args,
        ],
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    pp1, pp2 = step_losses(tmp_path / "pp1"), step_losses(tmp_path / "pp2")
    assert len(pp2) == len(pp1) == ITERS
    for ours, ref in zip(pp2, pp1, strict=False):
        assert abs(ours - ref) <= 1e-5 * abs(ref), (pp2, pp1)


def test_checkpoint_saved_at_tp1_resumes_at_tp2(tmp_path):
    """Weights AND Adam state saved by one process reshard onto TP=2: the continuation equals TP=1's."""
    import shutil

    tp1, tp2 = tmp_path / "tp1", tmp_path / "tp2"
    first = run_subprocess(run_cli_args(tp1, 4, ["train.exit_interval=2"]))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    shutil.copytree(tp1, tp2)
    rest = run_subprocess(run_cli_args(tp1, 4, []))
    assert rest.returncode == 0, rest.stdout[-3000:] + rest.stderr[-3000:]
    args = run_cli_args(tp2, 4, ["parallelism.tensor_model_parallel_size=2"])
    module_args = args[args.index("-m") + 1 :]
    proc = run_subprocess(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node=2",
            "--nnodes=1",
            f"--master-port={_port()}",
            "--master-addr=127.0.0.1",
            "-m",
            *module_args,
        ],
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "resumed at iteration 2" in proc.stdout
    ref, ours = step_losses(tp1), step_losses(tp2)
    assert ours[:2] == ref[:2] and len(ours) == 4
    for a, b in zip(ours[2:], ref[2:], strict=False):
        assert abs(a - b) <= 1e-5 * abs(b), (ours, ref)
