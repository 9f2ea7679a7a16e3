"""Split a stream of records into chunks by an estimated-token budget, with a cap on records."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from ..tokens import estimate_tokens, is_truncated
from .records import Record

__all__ = ["chunk_records", "estimate_tokens", "is_truncated", "sort_windows"]


def sort_windows(records: Iterable[Record], window: int) -> Iterator[Record]:
    """Each run of `window` records, longest first: chunks then hold texts of like length and
    batches pad little, as a whole-corpus sort would, with memory bounded by the window.
    The sort is stable, so a repeated text still comes after its first occurrence."""
    if window <= 1:
        yield from records
        return
    iterator = iter(records)
    while buffer := list(itertools.islice(iterator, window)):
        buffer.sort(key=lambda r: -len(r.text))
        yield from buffer


def chunk_records(
    records: Iterable[Record], max_records: int, token_budget: int, window: int
) -> Iterator[list[Record]]:
    if max_records < 1 or token_budget < 1:
        raise ValueError("chunk size and token budget must be at least 1")
    chunk: list[Record] = []
    tokens = 0
    for record in records:
        cost = 0 if record.alias else estimate_tokens(record.text, window)
        if chunk and (len(chunk) >= max_records or tokens + cost > token_budget):
            yield chunk
            chunk, tokens = [], 0
        chunk.append(record)
        tokens += cost
    if chunk:
        yield chunk
