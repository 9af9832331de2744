"""The one image definition (containers/image.env) and the launcher's generated copy agree, the base image is
pinned by digest, and containers/build.sh passes exactly those values to `docker build`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gemma3_launch import container_image

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "containers"))
import sync_image  # noqa: E402  (a script in containers/, not a package)


def test_launcher_copy_agrees_with_image_env() -> None:
    values = sync_image.read_image_env()
    assert values["IMAGE"] == container_image.DEFAULT_IMAGE
    assert values["BASE_IMAGE"] == container_image.BASE_IMAGE
    check = subprocess.run(
        [sys.executable, str(REPO / "containers" / "sync_image.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr


def test_stale_copy_is_detected(tmp_path: Path) -> None:
    edited = tmp_path / "image.env"
    edited.write_text(sync_image.IMAGE_ENV.read_text().replace("IMAGE=", "IMAGE=x", 1))
    assert sync_image.render_module(sync_image.read_image_env(edited)) != sync_image.GENERATED.read_text()


def test_malformed_image_env_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "image.env"
    bad.write_text("BASE_IMAGE=a:b\nIMAGE=c:d\nIMAGE=e:f\n")
    with pytest.raises(ValueError, match=r"image.env:3"):
        sync_image.read_image_env(bad)


def test_base_image_is_nvidia_pytorch_pinned_by_digest() -> None:
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3@sha256:[0-9a-f]{64}", container_image.BASE_IMAGE)


def test_build_script_passes_the_one_definition_to_docker(tmp_path: Path) -> None:
    """No docker engine here: a stand-in `docker` on PATH records the argv build.sh would run."""
    fake = tmp_path / "docker"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/argv\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    subprocess.run(
        ["bash", str(REPO / "containers" / "build.sh")], check=True, env=env, timeout=60, capture_output=True
    )
    argv = (tmp_path / "argv").read_text().splitlines()
    values = sync_image.read_image_env()
    assert argv[0] == "build"
    assert f"BASE_IMAGE={values['BASE_IMAGE']}" in argv and f"IMAGE={values['IMAGE']}" in argv
    assert argv[argv.index("-t") + 1] == values["IMAGE"]
    assert argv[argv.index("-f") + 1] == str(REPO / "containers" / "Dockerfile") and argv[-1] == str(REPO)
