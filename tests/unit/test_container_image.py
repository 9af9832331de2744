"""The one image definition (containers/image.env) and the launcher's generated copy agree, the base image is
pinned by digest, and `make image` passes exactly those values (and the OCI labels) to the engine's build."""

from __future__ import annotations

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


def _make_image(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`make image` with a stand-in engine on PATH (no container engine here) that records each argv it is given."""
    fake = tmp_path / "engine"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/argv-$1\n')
    fake.chmod(0o755)
    return subprocess.run(
        ["make", "-s", "-C", str(REPO), "image", f"ENGINE={fake}", f"PY={sys.executable}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_make_image_builds_from_the_one_definition_with_oci_labels(tmp_path: Path) -> None:
    res = _make_image(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    argv = (tmp_path / "argv-build").read_text().splitlines()
    values = sync_image.read_image_env()
    assert f"BASE_IMAGE={values['BASE_IMAGE']}" in argv and f"IMAGE={values['IMAGE']}" in argv
    assert argv[argv.index("-t") + 1] == values["IMAGE"]
    assert argv[argv.index("-f") + 1] == "containers/Dockerfile" and argv[-1] == "."
    build_args = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if "=" in a}
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", build_args["REVISION"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", build_args["CREATED"])
    assert build_args["VERSION"] and build_args["SOURCE"]
    assert not (tmp_path / "argv-push").exists(), "pushed without a REGISTRY"
    labels = (REPO / "containers" / "Dockerfile").read_text()
    for key in ("source", "revision", "version", "created"):
        assert f'org.opencontainers.image.{key}="${{{key.upper()}}}"' in labels


def test_make_image_with_a_registry_builds_and_pushes_there(tmp_path: Path) -> None:
    res = _make_image(tmp_path, "REGISTRY=example.invalid/x")
    assert res.returncode == 0, res.stdout + res.stderr
    tag = sync_image.read_image_env()["IMAGE"].rsplit(":", 1)[1]
    name = f"example.invalid/x/gemma3-launch:{tag}"
    build = (tmp_path / "argv-build").read_text().splitlines()
    assert build[build.index("-t") + 1] == name and f"IMAGE={name}" in build
    assert (tmp_path / "argv-push").read_text().splitlines() == ["push", name]


def test_make_n_image_prints_the_build_and_push_commands() -> None:
    res = subprocess.run(
        ["make", "-n", "-C", str(REPO), "image", "REGISTRY=example.invalid/x", "ENGINE=docker"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any(line.startswith("docker build ") and "-t example.invalid/x/gemma3-launch:" in line for line in lines)
    assert any(line.startswith("docker push example.invalid/x/gemma3-launch:") for line in lines)


def test_the_job_image_runs_as_a_non_root_user() -> None:
    users = [
        line.split()[1]
        for line in (REPO / "containers" / "Dockerfile").read_text().splitlines()
        if line.startswith("USER ")
    ]
    assert users and users[-1].split(":")[0] not in ("root", "0")
