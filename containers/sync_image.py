"""Generate launcher/gemma3_launch/container_image.py (and the Helm chart's default `image:`) from
containers/image.env, the one definition.

WHY generated copies: a non-editable (wheel) install of the launcher has no containers/ directory, so the
launcher carries the values as a module, and a chart is installed without the repo; tests fail when they disagree.
Usage: sync_image.py [--check]     (--check: exit 1 if the generated module is stale, write nothing)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGE_ENV = REPO / "containers" / "image.env"
GENERATED = REPO / "launcher" / "gemma3_launch" / "container_image.py"
HELM_VALUES = REPO / "helm" / "gemma3-launch" / "values.yaml"
_HELM_IMAGE_LINE = re.compile(r"^image: .*$", re.M)
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
        f"#: The image jobs run in unless the spec names another (what `make image` builds and tags).\n"
        f"DEFAULT_IMAGE = {json.dumps(values['IMAGE'])}\n\n"
        f"#: NVIDIA's PyTorch base image the job image is built FROM (pinned by digest).\n"
        f"BASE_IMAGE = {json.dumps(values['BASE_IMAGE'])}\n"
    )


def render_helm_values(values: dict[str, str], current: str) -> str:
    """The chart's values.yaml with its top-level `image:` set to IMAGE (comments and the rest untouched)."""
    return _HELM_IMAGE_LINE.sub(f"image: {values['IMAGE']}", current, count=1)


def main(argv: list[str]) -> int:
    values = read_image_env()
    helm_current = HELM_VALUES.read_text(encoding="utf-8")
    targets = [(GENERATED, render_module(values)), (HELM_VALUES, render_helm_values(values, helm_current))]
    stale = []
    for path, wanted in targets:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == wanted:
            continue
        if "--check" in argv:
            stale.append(path)
        else:
            path.write_text(wanted, encoding="utf-8")
            print(f"wrote {path}")
    for path in stale:
        print(f"{path} is stale: run containers/sync_image.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
