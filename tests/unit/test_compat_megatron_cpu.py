"""One test per CPU fix in gemma3_runtime.compat.megatron_cpu: megatron-core 0.16.1's own path fails on this CPU
machine, and the fix makes it work. (If megatron stops hard-coding CUDA there, the 'fails without' half tells us the
fix can go.)"""

from __future__ import annotations

import pytest
import torch

from gemma3_runtime.compat import megatron_cpu as compat

pytestmark = pytest.mark.unit

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only shims; this machine has CUDA")


def test_version_check_accepts_the_pin_and_refuses_others(monkeypatch):
    assert compat.check_megatron_version() == "0.16.1"
    import megatron.core.package_info as info

    monkeypatch.setattr(info, "__version__", "0.17.0")
    with pytest.raises(compat.UnsupportedMegatronVersion, match="megatron-core 0.17.0 is not supported"):
        compat.check_megatron_version()


@needs_no_cuda
def test_rng_tracker_on_cpu_generator():
    from megatron.core.tensor_parallel import random as mrandom

    saved = (mrandom._CUDA_RNG_STATE_TRACKER, mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED)
    try:
        mrandom._CUDA_RNG_STATE_TRACKER, mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = None, False
        with pytest.raises((AssertionError, RuntimeError)):
            mrandom.model_parallel_cuda_manual_seed(7, tp_rank=0, ep_rank=0, etp_rank=0)
        compat.cpu_rng_tracker(7, tp_rank=1)
        tracker = mrandom.get_cuda_rng_tracker()
        outside = torch.get_rng_state()
        with tracker.fork():
            a = torch.rand(3)
        assert torch.equal(torch.get_rng_state(), outside)  # the default generator is untouched
        torch.manual_seed(7 + 2718 + 1)
        assert torch.equal(a, torch.rand(3))  # the model-parallel stream is seeded like megatron's CUDA one
    finally:
        mrandom._CUDA_RNG_STATE_TRACKER, mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = saved


@needs_no_cuda
def test_tensor_cuda_is_identity_only_inside_the_block():
    t = torch.zeros(2)
    with pytest.raises((AssertionError, RuntimeError)):
        t.cuda()
    with compat.tensor_cuda_is_identity():
        assert t.cuda() is t
    with pytest.raises((AssertionError, RuntimeError)):
        t.cuda()


@needs_no_cuda
def test_dist_checkpoint_save_needs_cuda_synchronize_shim(tmp_path):
    from megatron.core import dist_checkpointing
    from model_helpers import build_model, tiny_config

    model = build_model(tiny_config(num_layers=1, vocab=128))  # also enters the platform's current_device shim
    (tmp_path / "without").mkdir()
    with compat.cuda_current_device_is_cpu(), pytest.raises((AssertionError, RuntimeError), match="CUDA"):
        dist_checkpointing.save(model.sharded_state_dict(), str(tmp_path / "without"))  # dies in synchronize()
    (tmp_path / "with").mkdir()
    with compat.cpu_checkpoint_io():
        dist_checkpointing.save(model.sharded_state_dict(), str(tmp_path / "with"))
        loaded = dist_checkpointing.load(model.sharded_state_dict(), str(tmp_path / "with"))
    model.load_state_dict(loaded)
    assert (tmp_path / "with" / "metadata.json").exists()


@needs_no_cuda
def test_kv_head_all_gather_needs_current_device_shim(run_torchrun):
    """TP=2 with one kv head: megatron all-gathers the fused QKV, allocating on torch.cuda.current_device()."""
    proc = run_torchrun("multiproc.compat_checks:all_gather_needs_current_device", nproc=2)
    assert proc.stdout.count("without shim: raised") == 2 and proc.stdout.count("with shim: gathered") == 2


@needs_no_cuda
def test_full_activation_recompute_needs_cuda_rng_state_shim():
    """megatron's checkpoint saves the CUDA RNG state (raises here); with the shim a recomputed backward is exact."""
    from megatron.core import tensor_parallel
    from model_helpers import build_model, tiny_config

    with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
        _pristine_megatron_random()._get_cuda_rng_state()
    build_model(tiny_config(num_layers=1, vocab=128))  # platform: process group + CPU RNG tracker
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4, requires_grad=True)
    with compat.cuda_rng_state_is_noop():
        tensor_parallel.checkpoint(layer, False, x).sum().backward()
    assert torch.allclose(x.grad, layer.weight.sum(0).expand(2, 4))


def _pristine_megatron_random():
    """A fresh copy of megatron.core.tensor_parallel.random (the imported one may be shimmed by the platform)."""
    import importlib.util

    spec = importlib.util.find_spec("megatron.core.tensor_parallel.random")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
