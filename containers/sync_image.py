"""Generate launcher/gemma3_launch/container_image.py from containers/image.env (the one definition).

WHY a generated copy: a non-editable (wheel) install of the launcher has no containers/ directory, so the
launcher carries the values as a module; tests/unit/test_container_image.py fails when the two disagree.
Usage: sync_image.py [--check]     (--check: exit 1 if the generated module is stale, write nothing)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGE_ENV = REPO / "containers" / "image.env"
GENERATED = REPO / "launcher" / "gemma3_launch" / "container_image.py"
KEYS = ("BASE_IMAGE", "IMAGE")
_LINE = re.compile(r"^(?P<key>[A-Z_]+)=(?P<value>\S+)$")


def read_image_env(path: Path = IMAGE_ENV) -> dict[str, str]:
    """KEY=VALUE lines; comments and blanks ignored; exactly the KEYS, each once."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line.strip())
        if not match or match["key"] not in KEYS or match["key"] in values:
            raise ValueError(f"{path}:{number}: expected one of {', '.join(KEYS)} as KEY=VALUE once, got {line!r}")
        values[match["key"]] = match["value"]
    missing = [key for key in KEYS if key not in values]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    return values


def render_module(values: dict[str, str]) -> str:
    return (
        '"""Container image references. GENERATED from containers/image.env by containers/sync_image.py: edit that\n'
        'file and re-run the script; never edit this one (a unit test checks they agree)."""\n\n'
        f"#: The image jobs run in unless the spec names another (what containers/build.sh builds and tags).\n"
        f"DEFAULT_IMAGE = {values['IMAGE']!r}\n\n"
        f"#: NVIDIA's PyTorch base image the job image is built FROM (pinned by digest).\n"
        f"BASE_IMAGE = {values['BASE_IMAGE']!r}\n"
    )


def main(argv: list[str]) -> int:
    wanted = render_module(read_image_env())
    current = GENERATED.read_text(encoding="utf-8") if GENERATED.exists() else ""
    if "--check" in argv:
        if current != wanted:
            print(f"{GENERATED} is stale: run containers/sync_image.py", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        GENERATED.write_text(wanted, encoding="utf-8")
        print(f"wrote {GENERATED}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
