"""Medians of the before/after benchmark runs (run.sh part `beforeafter`): tokens/s of the shipped defaults, full
and LoRA, on the baseline checkout (before*.json, its variants `default-mbs8-ga2` / `lora-default-mbs8-ga2`) and on
this tree (after*.json, `defaults` / `lora-defaults`), and the relative change.

    python3 bench/gpu_session/before_after.py OUT_DIR
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

PAIRS = {"full": ("default-mbs8-ga2", "defaults"), "lora": ("lora-default-mbs8-ga2", "lora-defaults")}


def tokens_per_s(out: Path, prefix: str, variant: str) -> list[float]:
    values = []
    for path in sorted(out.glob(f"{prefix}*.json")):
        values += [r["tok_s"] for r in json.loads(path.read_text()) if r.get("variant") == variant and "tok_s" in r]
    return values


def main(out: Path) -> int:
    for kind, (before_name, after_name) in PAIRS.items():
        before, after = tokens_per_s(out, "before", before_name), tokens_per_s(out, "after", after_name)
        if not before or not after:
            print(f"{kind}: missing runs (before {len(before)}, after {len(after)})")
            continue
        b, a = statistics.median(before), statistics.median(after)
        runs = f"{len(before)} / {len(after)} runs"
        print(f"{kind}: before {b:,.0f} tokens/s, after {a:,.0f} ({runs}): {a / b - 1:+.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
