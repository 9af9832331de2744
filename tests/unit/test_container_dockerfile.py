"""containers/Dockerfile: installs everything from the one constraints file, takes torch from the base image,
reads its base image from containers/image.env (no second copy), and lints clean with hadolint."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import dockerfile
import pytest
import tomllib

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "containers" / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def _commands() -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(DOCKERFILE))


def _pip_installs() -> list[list[str]]:
    """Argument lists of every `pip install` in every RUN (split on && / ;)."""
    installs = []
    for command in _commands():
        if command.cmd != "RUN":
            continue
        words = shlex.split(" ".join(command.value))
        separators = [i for i, word in enumerate(words) if word in ("&&", ";", "||")] + [len(words)]
        for index in range(len(words) - 1):
            if words[index] == "pip" and words[index + 1] == "install":
                end = next(s for s in separators if s > index)
                installs.append(words[index + 2 : end])
    return installs


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[_normalize(name)] = version
    return pins


def test_every_pip_install_uses_the_repo_constraints_file() -> None:
    copied = [c.value for c in _commands() if c.cmd == "COPY"]
    assert any("constraints.txt" in value[:-1] for value in copied), "constraints.txt is not copied into the image"
    installs = _pip_installs()
    assert installs, "the Dockerfile installs nothing with pip"
    for args in installs:
        constraint_files = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg in ("-c", "--constraint")]
        assert "constraints.txt" in constraint_files, f"pip install {' '.join(args)} does not use -c constraints.txt"
        loose = [arg for arg in args if re.match(r"^[A-Za-z0-9_.-]+(==|>=|<=|~=)", arg)]
        assert not loose, f"versions pinned in the Dockerfile instead of constraints.txt: {loose}"
    assert any(".[runtime,cuda]" in args for args in installs), (
        "the project (with its runtime and cuda extras) is not installed"
    )


def test_torch_comes_from_the_base_image_and_nothing_else_is_unpinned() -> None:
    pins = _constraint_pins()
    assert "torch" not in pins, "constraints.txt pins torch; the image must keep the base image's CUDA build"
    assert "megatron-core" in pins
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = project["dependencies"] + extras["runtime"] + extras["cuda"]
    names = {_normalize(re.match(r"[A-Za-z0-9_.-]+", req).group(0)) for req in requirements}
    unpinned = sorted(names - set(pins) - {"torch"})
    assert not unpinned, f"runtime dependencies missing from constraints.txt: {unpinned}"
    run_lines = " ".join(" ".join(c.value) for c in _commands() if c.cmd == "RUN")
    assert "torch.__version__" in run_lines, "torch is not pinned to the base image's installed build"


def test_base_image_comes_only_from_the_build_arg() -> None:
    commands = _commands()
    froms = [c for c in commands if c.cmd == "FROM"]
    assert [c.value[0] for c in froms] == ["${BASE_IMAGE}"]
    first_arg = commands[0]
    assert first_arg.cmd == "ARG" and first_arg.value == ("BASE_IMAGE",), "ARG BASE_IMAGE must have no default here"
    assert "nvcr.io" not in DOCKERFILE.read_text(), "an image reference is hard-coded in the Dockerfile"


def test_dockerignore_lets_through_everything_the_dockerfile_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / "containers" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for command in _commands():
        if command.cmd == "COPY":
            for source in command.value[:-1]:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by Dockerfile.dockerignore"
                assert (REPO / source).exists(), f"COPY {source}: no such path in the repo"


def test_hadolint_is_clean(tmp_path: Path) -> None:
    result = subprocess.run([str(HADOLINT), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    # ... and the linter does fail on a Dockerfile it should reject (unpinned base, unpinned apt, no -y).
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install curl\n")
    rejected = subprocess.run([str(HADOLINT), str(bad)], capture_output=True, text=True, timeout=60)
    assert rejected.returncode != 0 and "DL3006" in rejected.stdout
