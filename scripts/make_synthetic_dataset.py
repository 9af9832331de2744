#!/usr/bin/env python3
"""Regenerate the bundled synthetic SFT dataset (runtime/gemma3_runtime/data/bundled/wordcode_*.jsonl).

Deterministic (fixed seed in gemma3_runtime.data.synthetic); a unit test checks the committed files match.
Usage: python scripts/make_synthetic_dataset.py [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gemma3_runtime.data import synthetic


def main() -> None:
    default_out = Path(__file__).resolve().parents[1] / "runtime" / "gemma3_runtime" / "data" / "bundled"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train, heldout = synthetic.generate()
    synthetic.write_jsonl(train, args.out / f"{synthetic.NAME}_train.jsonl")
    synthetic.write_jsonl(heldout, args.out / f"{synthetic.NAME}_heldout.jsonl")
    print(f"wrote {len(train)} train and {len(heldout)} held-out items to {args.out}")


if __name__ == "__main__":
    main()
