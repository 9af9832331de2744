"""The commands of a docs page, as the quickstart tests run them: every ```bash block in order, joined into one
script. A cluster quickstart keeps what differs between clusters in one settings block of `export NAME=value` lines;
a test puts its testbed's values in place of those (and only those) with `script_with`."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

BLOCK = re.compile(r"^```bash\n(.*?)^```$", re.S | re.M)
EXPORT = re.compile(r"^export (\w+=\S+(?: \w+=\S+)*)$")


def bash_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


def settings(page: Path) -> dict[str, str]:
    """NAME -> value of every `export NAME=value ...` line in the page's bash blocks."""
    found: dict[str, str] = {}
    for block in bash_blocks(page.read_text(encoding="utf-8")):
        for line in block.splitlines():
            match = EXPORT.match(line)
            if match:
                found.update(word.split("=", 1) for word in shlex.split(match.group(1)))
    return found


def script_with(page: Path, values: dict[str, str]) -> str:
    """The page's bash blocks as one `set -euo pipefail` script, each `export` of a name in `values` giving that
    value instead; every name in `values` must be one the page exports (a renamed setting fails the test)."""
    missing = set(values) - set(settings(page))
    assert not missing, f"{page.name} no longer exports {sorted(missing)}"
    lines = []
    for block in bash_blocks(page.read_text(encoding="utf-8")):
        for line in block.splitlines():
            match = EXPORT.match(line)
            if match:
                pairs = [word.split("=", 1) for word in shlex.split(match.group(1))]
                line = "export " + " ".join(f"{name}={shlex.quote(values.get(name, value))}" for name, value in pairs)
            lines.append(line)
    return "set -euo pipefail\n" + "\n".join(lines) + "\n"
