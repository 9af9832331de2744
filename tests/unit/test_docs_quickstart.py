"""The local quickstart's commands run verbatim: every ```bash block of docs/quickstart-local.md, in order, as one
bash script from the repository root (RUNS_ROOT and XDG_STATE_HOME in a temporary directory). It includes one real
CPU training job (the tiny pretrain spec), so it is marked slow. The other docs' links are checked too."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from doc_blocks import bash_blocks, settings

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "docs" / "quickstart-local.md"


@pytest.mark.unit
def test_quickstart_has_the_commands_it_promises():
    script = "\n".join(bash_blocks(QUICKSTART.read_text(encoding="utf-8")))
    for command in ("--version", "validate", "render", "--dry-run", "--follow", "status", "checkpoints", "list"):
        assert command in script, command
    assert all(line.startswith(("gemma3-launch ", "JOB=")) for line in script.splitlines() if line.strip())


@pytest.mark.slow
def test_local_quickstart_runs_verbatim(tmp_path):
    exe = Path(sys.executable).parent / "gemma3-launch"
    assert exe.is_file(), f"the gemma3-launch console script is missing beside {sys.executable}: pip install -e ."
    assert shutil.which("bash"), "bash is needed to run the quickstart's blocks"
    script = "set -euo pipefail\n" + "\n".join(bash_blocks(QUICKSTART.read_text(encoding="utf-8")))
    env = dict(
        os.environ,
        PATH=f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        RUNS_ROOT=str(tmp_path / "runs"),
        XDG_STATE_HOME=str(tmp_path / "state"),
        PYTHONPATH=f"{REPO / 'launcher'}{os.pathsep}{REPO / 'runtime'}",
        CUDA_VISIBLE_DEVICES="",
    )
    env.pop("GEMMA3_LAUNCH_TRACEBACK", None)
    res = subprocess.run(
        ["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert res.returncode == 0, f"stdout:\n{res.stdout[-4000:]}\nstderr:\n{res.stderr[-4000:]}"
    out = res.stdout
    assert out.startswith("gemma3-launch ")
    assert "gemma3-launch: job cpu-tiny-" in out and " COMPLETED" in out
    assert re.search(r"progress: step 20/20 \(100%\)  loss \d", out)
    assert re.search(r"^\s+20\s+\S+ \S+\s+\S+\s+\S+iter_0000020$", out, re.M)
    start = out.rindex('{\n  "job_id"')  # status --json (render --format plan printed one earlier)
    doc, _ = json.JSONDecoder().raw_decode(out[start:])
    assert doc["state"] == "COMPLETED" and doc["progress"]["step"] == 20 and doc["progress"]["total"] == 20
    assert doc["progress"]["last_checkpoint"]["iteration"] == 20
    assert not list(REPO.glob("runs")), "the quickstart wrote into the repository"


@pytest.mark.unit
@pytest.mark.parametrize("page", sorted([*REPO.glob("docs/*.md"), *REPO.glob("docs/howto/*.md"), REPO / "README.md"]))
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)\s#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
        assert (page.parent / target).exists(), f"{page.relative_to(REPO)}: broken link {target}"


def _check_commands() -> list[tuple[Path, str]]:
    pages = [REPO / "docs" / "quickstart-slurm.md", REPO / "docs" / "quickstart-kubernetes.md"]
    pages += sorted(REPO.glob("docs/howto/*.md"))
    return [
        (page, line)
        for page in pages
        for block in bash_blocks(page.read_text(encoding="utf-8"))
        for line in block.splitlines()
        if line.startswith(("gemma3-launch validate ", "gemma3-launch render "))
    ]


@pytest.mark.unit
@pytest.mark.parametrize(("page", "line"), _check_commands(), ids=lambda value: getattr(value, "name", None))
def test_cluster_docs_validate_and_render_commands_work_here(page, line, tmp_path, monkeypatch, capsys):
    """The SLURM / Kubernetes quickstarts run on the testbeds (tests/slurm, tests/k8s); their validate / render lines
    and the how-tos' need no cluster and run here, with the page's own settings (`export NAME=value`)."""
    import shlex

    from gemma3_launch.cli import main

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for name, value in settings(page).items():
        monkeypatch.setenv(name, value)
    argv = [os.path.expandvars(word) for word in shlex.split(line)[1:]]
    assert main(argv) == 0, f"{page.name}: {line}: {capsys.readouterr().err}"


@pytest.mark.unit
@pytest.mark.parametrize("name", ["quickstart-slurm.md", "quickstart-kubernetes.md"])
def test_cluster_quickstarts_keep_cluster_values_in_one_settings_block(name):
    """What the testbed tests change is the settings block only: every other line they run is a plain command."""
    page = REPO / "docs" / name
    assert {"SPEC", "IMAGE", "CKPT_ROOT"} <= set(settings(page))
    lines = [line for block in bash_blocks(page.read_text(encoding="utf-8")) for line in block.splitlines()]
    assert all(line.startswith(("gemma3-launch ", "JOB=", "export ")) for line in lines if line.strip()), lines
    script = "\n".join(lines)
    for command in ("validate", "render", "submit", "list", "status", "logs"):
        assert f"gemma3-launch {command} " in script, command
