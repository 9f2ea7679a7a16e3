"""Cosine search over a version's stored vectors.

A version stored as pgvector's `vector` or `halfvec` is searched in SQL with `<=>`, through
its HNSW index once built (store/pgvector.py). A `bytea` version (SQLite, or PostgreSQL
without the extension) is searched by brute force in memory-bounded blocks: vectors are
unit-normalised, so cosine is a dot product, and the answer is exact.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import Engine, select

from . import pgvector
from .schema import versions
from .vectors import iter_ordered

BLOCK = 8192
# HNSW's candidate list per query (pgvector's default is 40): wider lists find more of the
# true nearest neighbours (recall) at some cost in time.
EF_SEARCH = 100


def top_k(engine: Engine, version_key: str, queries: np.ndarray, k: int,
          ef_search: int = EF_SEARCH) -> list[list[tuple[str, float]]]:
    """For each query row, the k best (record id, cosine) pairs, best first."""
    if k < 1:
        raise ValueError("k must be at least 1")
    with engine.connect() as conn:
        kind = pgvector.version_kind(conn, version_key)
        dim = conn.execute(select(versions.c.dim).where(versions.c.key == version_key)).scalar()
    if kind != pgvector.BYTEA and dim is not None:
        with engine.begin() as conn:
            return [pgvector.nearest(conn, version_key, kind, dim, query, k, ef_search) for query in queries]
    return brute_force(engine, version_key, queries, k)


def brute_force(engine: Engine, version_key: str, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    """Exact top k by scanning every stored vector, block by block."""
    n_queries = queries.shape[0]
    best_scores = np.full((n_queries, 0), -np.inf, dtype=np.float32)
    best_ids = np.empty((n_queries, 0), dtype=object)
    for ids, block in iter_ordered(engine, version_key, block=BLOCK):
        scores = np.concatenate([best_scores, queries @ block.T], axis=1)
        candidates = np.concatenate([best_ids, np.broadcast_to(np.array(ids, dtype=object), (n_queries, len(ids)))],
                                    axis=1)
        keep = min(k, scores.shape[1])
        top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        best_scores = np.take_along_axis(scores, top, axis=1)
        best_ids = np.take_along_axis(candidates, top, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    best_scores = np.take_along_axis(best_scores, order, axis=1)
    best_ids = np.take_along_axis(best_ids, order, axis=1)
    return [[(str(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True)]
            for row_ids, row_scores in zip(best_ids, best_scores, strict=True)]
