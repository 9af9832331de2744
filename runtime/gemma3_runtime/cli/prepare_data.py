"""`gemma3-runtime prepare-data` (stub: the owning engineer replaces this module; keep add_parser/main)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("prepare-data", help="(not implemented yet)")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(args: argparse.Namespace) -> int:
    raise NotImplementedError("gemma3-runtime prepare-data is not implemented yet")
