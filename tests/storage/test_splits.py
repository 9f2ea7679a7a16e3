"""Crash splits: halving a chunk and recording the halves in the ledger."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from embedfleet.config.messages import ChunkTexts
from embedfleet.storage.engine import get_engine
from embedfleet.storage.jobs import job_stats
from embedfleet.storage.schema import chunks
from embedfleet.storage.splits import halve, split_chunk
from tests.storage.helpers import live_job


def test_halve_keeps_order_and_aliases_ride_second() -> None:
    """Halves hold the records in order; aliases go with the second half."""
    chunk = ChunkTexts("j", 3, "v", "m", list("abcde"), [0, 1, 2, 3, 4], list("abcde"), list("hhhhh"),
                       aliases=[["z", 9, "h", "a"]])
    first, second = halve(chunk, -1, -2)
    assert (first.seq, first.ids, first.positions, first.aliases) == (-1, ["a", "b"], [0, 1], [])
    assert (second.seq, second.ids, second.positions, second.aliases) == (-2, ["c", "d", "e"], [2, 3, 4],
                                                                           [["z", 9, "h", "a"]])


@pytest.fixture
def engine(db_url):
    from embedfleet.storage.collections import open_collection  # noqa: F401  (imports the schema's users)

    return get_engine(db_url)


def test_split_chunk_in_the_ledger(engine) -> None:
    """A split closes the parent as `split`, adds two open halves with fresh negative seqs, and grows the job."""
    job_id, texts = live_job(engine)
    halves = split_chunk(engine, texts[0], holder="w")
    assert [h.seq for h in halves] == [-1, -2]
    assert split_chunk(engine, texts[0], holder="w") == ()  # no longer open
    again = split_chunk(engine, halves[1], holder="w")
    assert [h.seq for h in again] == [-3, -4]
    stats = job_stats(engine, job_id)
    assert (stats.chunks_total, stats.chunks_done) == (6, 2)
    with engine.connect() as conn:
        rows = {r.seq: r for r in conn.execute(select(chunks).where(chunks.c.job_id == job_id))}
    assert (rows[0].state, rows[-2].state, rows[-1].state, rows[-3].parent_seq) == ("split", "split", "queued", -2)
    assert rows[-1].records + rows[-3].records + rows[-4].records == 4
