"""No test, script, Make target or CI file reads anything outside the repository: a fresh clone with nothing beside
it runs every tier. What the tiers need from other projects is vendored (tests/k8s/crds, scripts/k8s_testbed) with
its upstream named; this test fails on a reference that climbs out of the checkout or names a machine path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
CHECKED = ("tests", "scripts", ".ci", "Makefile")
TEXT_SUFFIXES = {".py", ".sh", ".bash", ".mk", ".cfg", ".ini", ".toml", ".yaml", ".yml", ".json", ".txt", ".md", ""}
#: Large vendored data (API schemas): no paths in them, and too big to scan on every run.
SKIPPED_DIRS = {"crds", "__pycache__"}

#: A sibling directory of the checkout (the shared workspace this project grew up beside), an absolute machine
#: path, or an environment variable that pointed there. Spelt in pieces so this file does not match itself.
OUTSIDE = [
    re.compile(r"\.\./" + "shared"),
    re.compile(r"\b" + "REPO" + r"\.parent\b"),
    re.compile("/" + "work/"),
    re.compile(r"\bGEMMA3_" + "SHARED" + r"\b"),
]
PARENTS = re.compile(r"parents\[(\d+)\]")
UPS = re.compile(r"\.\.(?:/\.\.)*")


def _files() -> list[Path]:
    found: list[Path] = []
    for name in CHECKED:
        root = REPO / name
        if root.is_file():
            found.append(root)
        elif root.is_dir():
            found += [
                p
                for p in root.rglob("*")
                if p.is_file() and p.suffix in TEXT_SUFFIXES and not SKIPPED_DIRS & set(p.relative_to(REPO).parts)
            ]
    return sorted(found)


def _climbs_out(relative: Path, line: str) -> bool:
    """`parents[N]` or a run of `../` from this file's directory that ends above the repository root."""
    depth = len(relative.parts) - 1  # directories between the repository root and this file
    if any(int(n) >= depth + 1 for n in PARENTS.findall(line)) and relative.suffix == ".py":
        return True
    if relative.suffix in (".sh", ".bash") and ("dirname" in line or "HERE" in line):
        return any(match.group(0).count("..") > depth for match in UPS.finditer(line))
    return False


def offenders() -> list[str]:
    found: list[str] = []
    for path in _files():
        if path == Path(__file__).resolve():
            continue
        relative = path.relative_to(REPO)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if any(p.search(line) for p in OUTSIDE) or _climbs_out(relative, line):
                found.append(f"{relative}:{number}: {line.strip()[:120]}")
    return found


def test_nothing_reads_outside_the_repository() -> None:
    problems = offenders()
    assert not problems, "references outside the repository:\n" + "\n".join(problems)


def test_the_check_can_fail(tmp_path: Path) -> None:
    """The patterns find each kind of escape (checked on sample lines, not on the repository)."""
    assert any(p.search('SHARED = REPO.parent / "shared"') for p in OUTSIDE)
    sibling = "../../.." + "/shared/fake.c"  # built, so this file itself holds no path outside the repository
    assert any(p.search(f"FAKE=${{X:-$HERE/{sibling}}}") for p in OUTSIDE)
    assert _climbs_out(Path("tests/k8s/helpers.py"), "ROOT = Path(__file__).parents[3]")
    assert not _climbs_out(Path("tests/k8s/helpers.py"), "REPO = Path(__file__).resolve().parents[2]")
    assert _climbs_out(Path("scripts/k8s_testbed/up.sh"), 'X=$(cd "$HERE/../../.." && pwd)')
    assert not _climbs_out(Path("scripts/k8s_testbed/up.sh"), 'REPO=$(cd "$HERE/../.." && pwd)')
