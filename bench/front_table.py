"""The rows of docs/PERFORMANCE.md's front table from the JSON records of bench/train_throughput.py.

One JSON file = one device call (a list of records: the "env" record names the card and the date; "hf" records are
the anchor's micro-batch sweep; "ours" records our variants). A row pairs, within ONE call, the anchor at its best
micro-batch with ours for the same size, sequence length and kind (full-parameter: HF + compile or eager vs our
`defaults`; LoRA: HF + PEFT vs our `lora-defaults`), so every row is a same-call comparison.

    python3 bench/front_table.py bench/results/2026-12-05-sweep1b.json [more.json ...]

Torch-free (it only reads JSON); tests/unit/test_front_table.py checks the best-of-sweep pick and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: the anchor plans each kind is compared with, and our shipped variant of that kind
KINDS = {"full": (("compile", "eager"), "defaults"), "lora": (("lora",), "lora-defaults")}
#: issue 19's targets, by (size, kind, seq); rows without one still print (target "-")
TARGETS = {
    ("1b", "full", 4096): ">= 1.65x HF + compile, >= 55% MFU",
    ("1b", "lora", 4096): ">= 3.2x HF + PEFT",
    ("4b", "full", 4096): ">= 1.5x HF + compile",
    ("12b", "lora", 4096): ">= 2.5x HF + PEFT",
    ("1b", "full", 32768): ">= 50% MFU",
    ("4b", "full", 32768): "measured",
    ("4b", "lora", 32768): "measured",
}
ANCHOR_NAMES = {"compile": "HF + compile", "eager": "HF eager", "lora": "HF + PEFT r32"}
HEADER = "| target | anchor at its best (sweep) | ours | ratio | card | date |\n|---|---|---|---|---|---|"


def best_of_sweep(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The measured record with the most tokens/s (OOMs, errors and skips never win); None if none was measured."""
    measured = [r for r in rows if _is_number(r.get("tok_s")) and r["tok_s"] > 0 and not r.get("error")]
    return max(measured, key=lambda r: r["tok_s"]) if measured else None


def _sweep_text(rows: list[dict[str, Any]]) -> str:
    """`1: 40.1k, 2: 48.4k, 4: oom` in micro-batch order."""
    parts = []
    for r in sorted(rows, key=lambda r: r.get("mbs", 0)):
        if _is_number(r.get("tok_s")):
            parts.append(f"{r['mbs']}: {r['tok_s'] / 1000:.1f}k")
        else:
            parts.append(f"{r.get('mbs')}: {r.get('status') or 'error'}")
    return ", ".join(parts)


def _size(record: dict[str, Any]) -> str:
    return str(record.get("size") or "1b")  # records from before --size existed are the 1B


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def usable(record: Any) -> bool:
    """A record this table can read: the env record, or a measurement with an integer micro-batch and sequence
    length and, when it has them, numeric tokens/s, MFU and peak memory (anything else is left out, not guessed)."""
    if not isinstance(record, dict):
        return False
    if record.get("impl") == "env":
        return True
    if record.get("impl") not in ("hf", "ours") or not isinstance(record.get("variant"), str):
        return False
    if not all(isinstance(record.get(k), int) and not isinstance(record.get(k), bool) for k in ("mbs", "seq")):
        return False
    return all(record.get(k) is None or _is_number(record[k]) for k in ("tok_s", "mfu_vs_989", "peak_gib"))


def rows_of_call(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (size, kind, seq) where this call measured the anchor or ours (a ratio only where both)."""
    records = [r for r in records if usable(r)]
    env = next((r for r in records if r.get("impl") == "env"), {})
    keys = sorted({(_size(r), r.get("seq")) for r in records if r.get("impl") in ("hf", "ours")}, key=str)
    rows = []
    for size, seq in keys:
        for kind, (plans, ours_variant) in KINDS.items():
            anchor_rows = [
                r
                for r in records
                if r.get("impl") == "hf" and r.get("variant") in plans and _size(r) == size and r.get("seq") == seq
            ]
            ours_rows = [
                r
                for r in records
                if r.get("impl") == "ours"
                and r.get("variant") == ours_variant
                and _size(r) == size
                and r.get("seq") == seq
            ]
            anchor, ours = best_of_sweep(anchor_rows), best_of_sweep(ours_rows)
            if ours is None and anchor is None:
                continue
            rows.append(
                dict(
                    size=size,
                    kind=kind,
                    seq=seq,
                    target=TARGETS.get((size, kind, seq), "-"),
                    anchor=anchor,
                    anchor_sweep=_sweep_text([r for r in anchor_rows if anchor and r["variant"] == anchor["variant"]]),
                    ours=ours,
                    ours_sweep=_sweep_text(ours_rows),
                    ratio=round(ours["tok_s"] / anchor["tok_s"], 2) if ours and anchor else None,
                    card=str(env.get("gpu", "?")),
                    date=str(env.get("date", "?")),
                )
            )
    return rows


def markdown_row(row: dict[str, Any]) -> str:
    what = f"{row['size'].upper()} {'full-parameter' if row['kind'] == 'full' else 'LoRA r32'}, seq {row['seq']}"
    anchor, ours = row["anchor"], row["ours"]
    if anchor:
        name = ANCHOR_NAMES.get(anchor["variant"], anchor["variant"])
        anchor_text = f"{name}, mbs {anchor['mbs']}: {anchor['tok_s']:,.0f} tok/s ({row['anchor_sweep']})"
    else:
        anchor_text = "not measured in this call" + (f" ({row['anchor_sweep']})" if row["anchor_sweep"] else "")
    if ours:
        mfu = f"{ours['mfu_vs_989'] * 100:.1f}% MFU" if ours.get("mfu_vs_989") is not None else "MFU ?"
        peak = f"{ours['peak_gib']} GiB" if ours.get("peak_gib") is not None else "peak ?"
        batch = f"mbs {ours['mbs']} x {ours.get('micro_batches', 1)}"
        recompute = f", recompute {ours['recompute']}" if ours.get("recompute") not in (None, "none") else ""
        ours_text = f"{ours['tok_s']:,.0f} tok/s, {mfu}, {peak}, {batch}{recompute}"
    else:
        ours_text = "no measurement" + (f" ({row['ours_sweep']})" if row["ours_sweep"] else "")
    ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-"
    cells = [f"{what}: {row['target']}", anchor_text, ours_text, ratio, row["card"], row["date"]]
    return "| " + " | ".join(" ".join(str(c).replace("|", "\\|").split()) for c in cells) + " |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="bench/train_throughput.py --json files, one per call")
    args = ap.parse_args(argv)
    lines = [HEADER]
    for path in args.json:
        try:
            records = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            print(f"{path}: not a readable JSON list of records ({exc.__class__.__name__})", file=sys.stderr)
            return 2
        if not isinstance(records, list):
            print(f"{path}: expected a JSON list of records", file=sys.stderr)
            return 2
        lines.extend(markdown_row(row) for row in rows_of_call(records))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
