"""Crash splits in the ledger: a parent replaced by two halves, with plain messages."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from embedfleet.chunks.splits import NewChunk, is_split_born, split_chunk
from embedfleet.jobs.stats import job_stats
from embedfleet.store.engine import get_engine
from embedfleet.store.schema import chunks
from tests.store.helpers import live_job


@pytest.fixture
def engine(db_url):
    return get_engine(db_url)


def halves_of(records: int, asked: list[tuple[int, int]]):
    """A stand-in for the workers' halving: storage only stores what it is given."""

    def make(first: int, second: int) -> tuple[NewChunk, NewChunk]:
        asked.append((first, second))
        return (NewChunk(first, records // 2, f"half {first}".encode()),
                NewChunk(second, records - records // 2, f"half {second}".encode()))

    return make


def test_split_chunk_in_the_ledger(engine) -> None:
    """A split closes the parent as `split`, adds two open halves with fresh negative seqs, their
    messages and holder, and grows the job; a chunk no longer open is not split (its maker never called)."""
    job_id, _ = live_job(engine)
    asked: list[tuple[int, int]] = []
    halves = split_chunk(engine, job_id, 0, halves_of(4, asked), holder="w")
    assert [h.seq for h in halves] == [-1, -2] and asked == [(-1, -2)]
    assert split_chunk(engine, job_id, 0, halves_of(4, asked), holder="w") == ()  # no longer open
    assert asked == [(-1, -2)]
    again = split_chunk(engine, job_id, -2, halves_of(2, asked), holder="w")
    assert [h.seq for h in again] == [-3, -4]
    stats = job_stats(engine, job_id)
    assert (stats.chunks_total, stats.chunks_done) == (6, 2)
    with engine.connect() as conn:
        rows = {r.seq: r for r in conn.execute(select(chunks).where(chunks.c.job_id == job_id))}
    assert (rows[0].state, rows[-2].state, rows[-1].state, rows[-3].parent_seq) == ("split", "split", "queued", -2)
    assert (rows[-1].records, rows[-3].records, rows[-4].records) == (2, 1, 1)
    assert (bytes(rows[-3].payload), rows[-3].holder, rows[0].payload) == (b"half -3", "w", None)


def test_split_born_seqs_are_negative() -> None:
    assert is_split_born(-1) and not is_split_born(0) and not is_split_born(7)
