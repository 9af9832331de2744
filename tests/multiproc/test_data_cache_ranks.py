"""Tokenization happens once across 2 ranks (rank 0 prepares, rank 1 waits, both read the same tokens), and a
restart of the job (a new pair of processes) only hits the cache."""

from __future__ import annotations

import json

import pytest
from data_fixtures import bundled_chat_rows, write_parquet

pytestmark = pytest.mark.unit


def test_two_ranks_tokenize_once_and_a_restart_only_hits(run_torchrun, real_270m_dir, tmp_path):
    from gemma3_runtime.data.token_cache import read_events

    parquet = write_parquet(tmp_path / "chat.parquet", bundled_chat_rows(limit=64))
    cache = tmp_path / "cache"
    outcomes, seen = [], 0
    for attempt in ("first", "restart"):
        out = tmp_path / attempt
        out.mkdir()
        kwargs = dict(tokenizer_dir=str(real_270m_dir), source=str(parquet), cache_dir=str(cache), out=str(out))
        run_torchrun("multiproc.data_cache_workers:tokenize_sft", nproc=2, kwargs=kwargs, timeout=600)
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0] == ranks[1] and len(ranks[0]) == 64
        events = read_events(cache)[seen:]
        seen += len(events)
        outcomes.append(sorted((e["rank"], e["outcome"]) for e in events))
    assert outcomes[0] == [(0, "prepared"), (1, "waited")]
    assert outcomes[1] == [(0, "hit"), (1, "hit")]
    assert len(list(cache.glob("sft-*.npz"))) == 1
