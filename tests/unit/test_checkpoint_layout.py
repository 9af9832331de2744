"""Checkpoint discovery: resolve save dir / iter dir, and the errors for everything that is not a checkpoint."""

import pytest
import yaml

from gemma3_runtime.checkpoint.layout import FORMAT, resolve_checkpoint
from gemma3_runtime.errors import UserInputError

pytestmark = pytest.mark.unit


def _fake_iter(save_dir, iteration, fmt=FORMAT):
    it = save_dir / f"iter_{iteration:07d}"
    it.mkdir(parents=True)
    (it / "run_config.yaml").write_text(yaml.safe_dump({"format": fmt, "model": {"num_layers": 2}}))
    return it


def test_resolves_save_dir_through_tracker_and_iter_dir_directly(tmp_path):
    _fake_iter(tmp_path, 0)
    it = _fake_iter(tmp_path, 100)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("100\n")
    via_save = resolve_checkpoint(tmp_path)
    assert via_save.iter_dir == it and via_save.iteration == 100
    via_iter = resolve_checkpoint(tmp_path / "iter_0000000")
    assert via_iter.iteration == 0 and via_iter.run_config["model"] == {"num_layers": 2}


@pytest.mark.parametrize(
    "setup,expected",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "no checkpoint iteration"),
        (lambda p: (p.mkdir(), (p / "iter_0000005.tmp-99").mkdir()), "never committed"),
        (lambda p: (p.mkdir(), (p / "latest_checkpointed_iteration.txt").write_text("7")), "iter_0000007/ is missing"),
        (lambda p: (p.mkdir(), (p / "latest_checkpointed_iteration.txt").write_text("x")), "expected an iteration"),
        (
            lambda p: (
                p.mkdir(),
                (p / "iter_0000000").mkdir(),
                (p / "latest_checkpointed_iteration.txt").write_text("0"),
            ),
            "not a gemma3-launch checkpoint",
        ),
        (
            lambda p: (_fake_iter(p, 0, fmt="other"), (p / "latest_checkpointed_iteration.txt").write_text("0")),
            "not a gemma3-launch checkpoint",
        ),
    ],
)
def test_errors_name_the_path_and_the_problem(tmp_path, setup, expected):
    path = tmp_path / "ckpt"
    setup(path)
    with pytest.raises(UserInputError, match=expected) as info:
        resolve_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
