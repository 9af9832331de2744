"""The context-parallel split's rule on sequence lengths, torch-free.

One source of truth for "a sequence of S tokens splits over CP ranks": the zigzag split (context_split.py) cuts it
into 2*CP equal chunks, so S must be a positive multiple of 2*CP. context_split.validate_split raises with this
message at run time; the config validation (training/validate.py, also run by the launcher on the login node, where
torch is not imported) refuses the same configuration before a job starts.
"""

from __future__ import annotations


def split_problem(
    seq_len: int, cp_size: int, *, seq_key: str = "seq_length", cp_key: str = "context_parallel_size"
) -> str | None:
    """Why `seq_len` tokens cannot be split over `cp_size` ranks (one line naming the keys), or None if they can."""
    if cp_size < 1:
        return f"{cp_key}: expected an integer >= 1, got {cp_size}"
    if seq_len < 1 or seq_len % (2 * cp_size) != 0:
        return f"{seq_key}: expected a positive multiple of 2 * {cp_key} = {2 * cp_size}, got {seq_len}"
    return None
