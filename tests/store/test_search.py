"""Brute-force cosine search over a version's stored vectors, in blocks."""

from __future__ import annotations

import numpy as np
import pytest

from embedfleet.chunks.collect import store_chunk
from embedfleet.store import codec, search
from embedfleet.store.engine import get_engine
from tests.store.helpers import DIM, chunk_vectors, job_with_chunks


def _stored(db_url: str) -> tuple[object, dict[str, np.ndarray]]:
    """Seven records in two chunks, and their vectors by id."""
    engine = get_engine(db_url)
    job_id = job_with_chunks(engine, {0: [0, 1, 2, 3], 1: [4, 5, 6]})
    by_id = {}
    for seq, positions in ((0, [0, 1, 2, 3]), (1, [4, 5, 6])):
        chunk = chunk_vectors(job_id, seq, positions)
        store_chunk(engine, chunk)
        by_id.update(zip(chunk.ids, codec.unpack(chunk.vectors, DIM), strict=True))
    return engine, by_id


def _expected(by_id: dict[str, np.ndarray], query: np.ndarray, k: int) -> list[str]:
    scores = {record_id: float(vector @ query) for record_id, vector in by_id.items()}
    return sorted(scores, key=lambda r: -scores[r])[:k]


@pytest.mark.parametrize("block", [2, 8192])
def test_top_k_matches_a_full_sort_whatever_the_block(sqlite_url: str, monkeypatch: pytest.MonkeyPatch,
                                                      block: int) -> None:
    """Each query's k best ids, best first, with their dot products, across block boundaries."""
    monkeypatch.setattr(search, "BLOCK", block)
    engine, by_id = _stored(sqlite_url)
    queries = np.random.default_rng(42).standard_normal((3, DIM)).astype(np.float32)
    results = search.top_k(engine, "c1", queries, k=3)
    assert len(results) == 3
    for query, result in zip(queries, results, strict=True):
        assert [record_id for record_id, _ in result] == _expected(by_id, query, 3)
        for record_id, score in result:
            assert score == pytest.approx(float(by_id[record_id] @ query), rel=1e-5)


def test_k_larger_than_the_version_returns_every_record(sqlite_url: str) -> None:
    """Asking for more than is stored returns all records, still best first."""
    engine, by_id = _stored(sqlite_url)
    query = np.ones((1, DIM), dtype=np.float32)
    [result] = search.top_k(engine, "c1", query, k=50)
    assert [record_id for record_id, _ in result] == _expected(by_id, query[0], 50)


def test_k_below_one_is_refused(sqlite_url: str) -> None:
    """k must be at least 1."""
    with pytest.raises(ValueError, match="at least 1"):
        search.top_k(get_engine(sqlite_url), "c1", np.ones((1, DIM), dtype=np.float32), k=0)
