"""Brute-force cosine search over a version's stored vectors, in memory-bounded blocks.

Vectors are unit-normalised, so cosine is a dot product. pgvector's operators would serve
PostgreSQL where the extension exists; without it (as on our machines) this path serves both.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import Engine

from .vectors import iter_ordered

BLOCK = 8192


def top_k(engine: Engine, version_key: str, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    """For each query row, the k best (record id, cosine) pairs, best first."""
    if k < 1:
        raise ValueError("k must be at least 1")
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
