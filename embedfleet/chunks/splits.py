"""Crash isolation in the ledger: a chunk whose worker process keeps dying is replaced by its
two halves, new chunks of the same job, until the one record that kills its process is alone.

The halves get negative seqs (-1, -2, ...): the producer numbers its chunks 0, 1, 2, ... and
may still be sending when a split happens, so the two never collide, and a negative seq says
the chunk was born of a crash split (it splits again sooner). The parent leaves the open
state as `split`: it stores nothing itself, its records are stored or dead in its halves,
so stored + skipped + dead = records read still holds, and the job's chunk count grows by two.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, and_, func, insert, select, update

from ..store.ledger import OPEN_CHUNK_STATES
from ..store.schema import chunks, jobs

SPLIT_STATE = "split"


@dataclass(frozen=True)
class NewChunk:
    """A chunk to add to a job's ledger: its seq, its record count and its message."""

    seq: int
    records: int
    payload: bytes


# Given the two seqs the ledger chose, the chunk's halves (how a message is halved is the
# workers' business).
MakeHalves = Callable[[int, int], tuple[NewChunk, NewChunk]]


def is_split_born(seq: int) -> bool:
    return seq < 0


def split_chunk(engine: Engine, job_id: str, seq: int, make_halves: MakeHalves,
                holder: str | None) -> tuple[NewChunk, ...]:
    """Replace an open chunk by its halves in the ledger, in one transaction, before they are
    sent. Returns the halves to send; none when the chunk is no longer open (another delivery
    finished or split it). The halves are held by `holder`, so if the splitting node dies
    before sending them, the liveness sweep sends them."""
    now = time.time()
    with engine.begin() as conn:
        # The parent's UPDATE first: it takes the row (and SQLite's write lock), so of two
        # deliveries splitting at once, one wins and the other finds the chunk no longer open.
        won = conn.execute(
            update(chunks)
            .where(and_(chunks.c.job_id == job_id, chunks.c.seq == seq, chunks.c.state.in_(OPEN_CHUNK_STATES)))
            .values(state=SPLIT_STATE, payload=None, done_at=now, splits=chunks.c.splits + 1)
        ).rowcount
        if not won:
            return ()
        # The job's row lock serialises the splits of one job, so two never take the same seqs.
        conn.execute(select(jobs.c.id).where(jobs.c.id == job_id).with_for_update())
        lowest = conn.execute(select(func.min(chunks.c.seq)).where(chunks.c.job_id == job_id)).scalar_one()
        first = min(int(lowest), 0) - 1
        halves = make_halves(first, first - 1)
        conn.execute(insert(chunks), [
            {"job_id": job_id, "seq": h.seq, "state": "queued", "records": h.records, "payload": h.payload,
             "sent_at": now, "holder": holder, "parent_seq": seq}
            for h in halves
        ])
        # close_submission sets the producer's own count if the job is still submitting; the
        # ledger rows (which job_stats counts too) hold the halves either way.
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(chunks_total=jobs.c.chunks_total + 2))
    return halves
