"""The job and chunk ledger, write side: every chunk has a row before its message is sent.
(What status and progress read is in jobs/stats.py.)"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, literal, select, update

from ..errors import LedgerError, check_collection_name  # noqa: F401  (re-exported)
from .collections import cutover_conn, mark_ready
from .schema import chunks, jobs

OPEN_CHUNK_STATES = ("queued",)


def create_job(
    engine: Engine,
    collection: str,
    version_key: str,
    model: str,
    source: str,
    options: dict[str, Any],
    records_read: int,
    skipped_invalid: int,
    runner: str | None = None,
) -> str:
    """The job row, with the corpus's counts already known from validation. `runner`: None
    for the fleet, "embedded HOST PID" for an embedded run."""
    job_id = uuid.uuid4().hex
    with engine.begin() as conn:
        conn.execute(
            insert(jobs).values(
                id=job_id,
                collection=collection,
                version_key=version_key,
                model=model,
                state="submitting",
                source=source,
                options=options,
                records_read=records_read,
                skipped_invalid=skipped_invalid,
                runner=runner,
                created_at=time.time(),
            )
        )
    return job_id


def add_chunk(engine: Engine, job_id: str, seq: int, records: int, payload: bytes, added: int | None = None) -> bool:
    """Write the chunk's ledger row (with its message, and `added`: how many of its records
    are new to the version) before the message is sent; False, and no row, when the job was
    cancelled (its producer stops: a cancelled job does not grow).

    One statement, so autocommit: INSERT ... SELECT from the job's row, which PostgreSQL
    locks FOR SHARE until the insert commits. A cancel (store/ledger.py: cancel_job, whose
    UPDATE of the job row waits for that lock) then cancels this chunk with the others; a
    separate read of the job's state could let a chunk in after the cancel's chunk UPDATE,
    left queued in a cancelled job. SQLite has one writer at a time: the same holds there."""
    row = (
        select(jobs.c.id, literal(seq), literal("queued"), literal(records), literal(payload, chunks.c.payload.type),
               literal(time.time()), literal(added, chunks.c.added.type))
        .where(and_(jobs.c.id == job_id, jobs.c.state != CANCELLED))
        .with_for_update(read=True)
    )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # RETURNING, not rowcount: psycopg's rowcount of an INSERT ... SELECT that added no row
        # was not 0 (measured).
        inserted = conn.execute(insert(chunks).from_select(
            [chunks.c.job_id, chunks.c.seq, chunks.c.state, chunks.c.records, chunks.c.payload, chunks.c.sent_at,
             chunks.c.added],
            row).returning(chunks.c.seq)).first()
    return inserted is not None


def close_submission(engine: Engine, job_id: str, chunks_total: int, truncated: int,
                     changes: dict[str, int] | None = None) -> None:
    """Every chunk is in the ledger: the job may now finish when its last chunk does.
    `changes` holds the change-detection counts (added, updated, unchanged, deleted, deduplicated)."""
    with engine.begin() as conn:
        conn.execute(
            update(jobs)
            # A job cancelled while its producer was still sending stays cancelled.
            .where(and_(jobs.c.id == job_id, jobs.c.state != "cancelled"))
            .values(state="running", truncated=truncated, chunks_total=chunks_total, **(changes or {}))
        )
    finish_if_complete(engine, job_id)


def finish_if_complete(engine: Engine, job_id: str) -> bool:
    """Mark the job done if it is running and no chunk is open; True when this call did.

    Called in its own transaction, after the caller's change is committed: two collectors
    committing the last two chunks at once each see the other's chunk as still open inside
    their own transaction (READ COMMITTED), but whichever checks last after committing sees
    both done. One UPDATE ... WHERE NOT EXISTS, so the check and the mark cannot be split.
    """
    open_chunks = select(chunks.c.seq).where(
        and_(chunks.c.job_id == job_id, chunks.c.state.in_(OPEN_CHUNK_STATES))
    )
    # The usual answer (chunks still open) in one autocommit round trip, no transaction.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if conn.execute(open_chunks.limit(1)).first() is not None:
            return False
    with engine.begin() as conn:
        finished = conn.execute(
            update(jobs)
            .where(and_(jobs.c.id == job_id, jobs.c.state == "running", ~open_chunks.exists()))
            .values(state="done", finished_at=time.time())
        ).rowcount
        if finished:
            # The version the job filled is complete (stored + dead = records); a migration
            # asked to switch reads to it in the same transaction.
            job = conn.execute(select(jobs.c.collection, jobs.c.version_key, jobs.c.options)
                               .where(jobs.c.id == job_id)).one()
            mark_ready(conn, job.version_key)
            if (job.options or {}).get("cutover"):
                cutover_conn(conn, job.collection, job.version_key)
    return bool(finished)


def open_chunk_count(engine: Engine, job_id: str) -> int:
    """How many of the job's chunks are still open: the embedded producer's back-pressure
    gauge, asked once per chunk. Counted on ix_chunks_job_state, so it reads the open
    chunks only (a handful). Counting every chunk of the job instead costs in proportion
    to the job: 7.9% of py-spy's samples in a 300,000-record no-op run (its wall time was
    within noise of this), and more the longer the job."""
    with engine.connect() as conn:
        return int(conn.execute(
            select(func.count()).where(and_(chunks.c.job_id == job_id, chunks.c.state.in_(OPEN_CHUNK_STATES)))
        ).scalar_one())


def open_chunk_payloads(engine: Engine, job_id: str) -> list[tuple[int, bytes]]:
    """The messages of every chunk not yet done, for `resume`."""
    with engine.connect() as conn:
        if conn.execute(select(jobs.c.id).where(jobs.c.id == job_id)).first() is None:
            raise LedgerError(f"no job {job_id!r}")
        rows = conn.execute(
            select(chunks.c.seq, chunks.c.payload)
            .where(and_(chunks.c.job_id == job_id, chunks.c.state.in_(OPEN_CHUNK_STATES)))
            .order_by(chunks.c.seq)
        ).all()
    return [(r.seq, r.payload) for r in rows]


def mark_resent(engine: Engine, job_id: str, seqs: list[int]) -> None:
    if not seqs:
        return
    with engine.begin() as conn:
        conn.execute(
            update(chunks).where(and_(chunks.c.job_id == job_id, chunks.c.seq.in_(seqs))).values(sent_at=time.time())
        )
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(resends=jobs.c.resends + len(seqs)))


def abandon_stalled_submissions(engine: Engine, lease_seconds: float) -> list[str]:
    """Jobs still `submitting` with no sign of life for lease_seconds: their producer died
    before it sent every chunk. They become `abandoned`, so waiting stops; the chunks they did
    send still complete, and submitting the corpus again sends the rest (unchanged records
    are skipped)."""
    stalled = stalled_jobs(engine, lease_seconds, state="submitting", open_only=False)
    if stalled:
        with engine.begin() as conn:
            conn.execute(update(jobs).where(and_(jobs.c.id.in_(stalled), jobs.c.state == "submitting"))
                         .values(state="abandoned", finished_at=time.time()))
    return stalled


def stalled_jobs(engine: Engine, lease_seconds: float, state: str = "running", open_only: bool = True) -> list[str]:
    """Jobs in `state` with open chunks and no sign of life (no chunk sent, started or done)
    for lease_seconds: the broker has most likely lost their messages."""
    # greatest() on PostgreSQL; SQLite's max() with several arguments is the same scalar.
    greatest = func.greatest if engine.dialect.name == "postgresql" else func.max
    last_activity = greatest(
        func.max(func.coalesce(chunks.c.done_at, 0.0)),
        func.max(func.coalesce(chunks.c.started_at, 0.0)),
        func.max(func.coalesce(chunks.c.sent_at, 0.0)),
        func.max(func.coalesce(jobs.c.producer_seen_at, 0.0)),
    )
    query = (
        select(chunks.c.job_id)
        .join(jobs, jobs.c.id == chunks.c.job_id)
        .where(jobs.c.state == state)
        .group_by(chunks.c.job_id)
        .having(and_(last_activity < time.time() - lease_seconds,
                     func.count().filter(chunks.c.state.in_(OPEN_CHUNK_STATES)) > (0 if open_only else -1)))
    )
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(query)]


def jobs_with_open_chunks(engine: Engine, states: tuple[str, ...] = ("submitting", "running")) -> list[str]:
    """Jobs in one of `states` that have chunks not done yet."""
    query = (
        select(chunks.c.job_id).distinct()
        .join(jobs, jobs.c.id == chunks.c.job_id)
        .where(and_(jobs.c.state.in_(states), chunks.c.state.in_(OPEN_CHUNK_STATES)))
    )
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(query)]


def touch_submission(engine: Engine, job_id: str) -> None:
    """The producer is alive and still submitting (reading records, maybe sending nothing)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.state == "submitting"))
                     .values(producer_seen_at=time.time()))


def start_delivery(engine: Engine, job_id: str, seq: int, holder: str | None = None) -> int | None:
    """Count one more delivery of an open chunk; None when the chunk is already done.
    One statement, so autocommit: one round trip on every chunk's encode path. A fleet
    worker also writes itself as the chunk's holder (chunks/liveness.py)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        row = conn.execute(
            update(chunks)
            .where(and_(chunks.c.job_id == job_id, chunks.c.seq == seq, chunks.c.state.in_(OPEN_CHUNK_STATES)))
            .values(deliveries=chunks.c.deliveries + 1, started_at=time.time(),
                    **({"holder": holder} if holder else {}))
            .returning(chunks.c.deliveries)
        ).first()
    return None if row is None else int(row[0])


def start_collect(engine: Engine, job_id: str, seq: int) -> int | None:
    """Count one more collect of an open chunk; None when the chunk is no longer open (done,
    split or cancelled: its vectors are committed, or must not be)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        row = conn.execute(
            update(chunks)
            .where(and_(chunks.c.job_id == job_id, chunks.c.seq == seq, chunks.c.state.in_(OPEN_CHUNK_STATES)))
            .values(collects=func.coalesce(chunks.c.collects, 0) + 1)
            .returning(chunks.c.collects)
        ).first()
    return None if row is None else int(row[0])


@dataclass(frozen=True)
class Collected:
    """What the collector stored of a chunk, for its ledger row."""

    stored: int
    dead: int
    splits: int
    encode_seconds: float
    worker: str


class ChunkCancelled(Exception):
    """The chunk's job was cancelled while it was encoded: raised inside the collector's
    transaction, so whatever it wrote rolls back."""


def mark_collected(conn: Connection, job_id: str, seq: int, collected: Collected, now: float) -> int | None:
    """Mark an open chunk done, inside the collector's transaction; returns its deliveries,
    or None when it was already done (a redelivery). Raises ChunkCancelled when its job was
    cancelled. Taking the row lock first: a second delivery collected at the same moment
    waits here, then finds the chunk done and writes no letters twice."""
    marked = conn.execute(
        update(chunks)
        .where(and_(chunks.c.job_id == job_id, chunks.c.seq == seq, chunks.c.state.in_(OPEN_CHUNK_STATES)))
        .values(state="done", stored=collected.stored, dead=collected.dead, splits=collected.splits, payload=None,
                done_at=now, encode_seconds=collected.encode_seconds, worker=collected.worker)
        .returning(chunks.c.deliveries)
    ).first()
    if marked is not None:
        return max(int(marked.deliveries), 1)
    state = conn.execute(select(chunks.c.state).where(and_(chunks.c.job_id == job_id, chunks.c.seq == seq))
                         ).scalar_one_or_none()
    if state == CANCELLED:
        raise ChunkCancelled(f"job {job_id} was cancelled")
    return None


def locked_payload(conn: Connection, job_id: str, seq: int) -> bytes | None:
    """The ledger's copy of an open chunk's message, its row locked for the transaction;
    None once the chunk is done."""
    payload = conn.execute(
        select(chunks.c.payload).where(and_(chunks.c.job_id == job_id, chunks.c.seq == seq)).with_for_update()
    ).scalar()
    return None if payload is None else bytes(payload)


def unstarted_halves(engine: Engine, job_id: str, parent_seq: int) -> list[bytes]:
    """The messages of a split chunk's halves that no worker has started yet: sent again when
    the parent's message comes back (the splitting process died, or the broker failed,
    between the split's commit and the halves' send)."""
    with engine.connect() as conn:
        return [bytes(p) for p in conn.execute(
            select(chunks.c.payload).where(and_(
                chunks.c.job_id == job_id, chunks.c.parent_seq == parent_seq, chunks.c.deliveries == 0,
                chunks.c.state.in_(OPEN_CHUNK_STATES), chunks.c.payload.is_not(None)))
        ).scalars()]


def count_retry(engine: Engine, job_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(retries=jobs.c.retries + 1))


CANCELLED = "cancelled"


def job_state(engine: Engine, job_id: str) -> str | None:
    """The job's state, or None if there is no such job: one primary-key read."""
    with engine.connect() as conn:
        return conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one_or_none()


def cancel_job(engine: Engine, job_id: str) -> int:
    """Mark the job `cancelled` and its open chunks `cancelled`, in one transaction. Returns
    the chunks cancelled.

    A queued message of a cancelled chunk is skipped when it arrives (start_delivery starts
    only open chunks); a chunk being encoded at this moment is not stored when it reaches
    the collector (store_chunk marks and stores only open chunks); the finish check moves
    only running jobs, so nothing brings the job back. Its counts stay what was stored."""
    now = time.time()
    with engine.begin() as conn:
        ended = conn.execute(
            update(jobs).where(and_(jobs.c.id == job_id, jobs.c.state.in_(("submitting", "running"))))
            .values(state=CANCELLED, finished_at=now)
        ).rowcount
        if not ended:
            state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one_or_none()
            if state is None:
                raise LedgerError(f"no job {job_id!r}")
            raise LedgerError(f"job {job_id} is {state}: only a submitting or running job can be cancelled")
        cancelled = conn.execute(
            update(chunks).where(and_(chunks.c.job_id == job_id, chunks.c.state.in_(OPEN_CHUNK_STATES)))
            .values(state=CANCELLED, payload=None, done_at=now)
        ).rowcount
    return int(cancelled or 0)


def abandon_submission(engine: Engine, job_id: str) -> bool:
    """The producer cannot finish sending (the broker went away mid-submission): the job
    becomes `abandoned` at once instead of looking alive until the reconciler notices. The
    chunks already sent still complete."""
    with engine.begin() as conn:
        return bool(conn.execute(
            update(jobs).where(and_(jobs.c.id == job_id, jobs.c.state == "submitting"))
            .values(state="abandoned", finished_at=time.time())
        ).rowcount)


# --- jobs run by an embedded run's process ----------------------------------------------------

def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat, field 22), so a pid
    reused by another process is not mistaken for the run; "?" where /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[19]


def embedded_runner() -> str:
    """What an embedded run writes as its jobs' runner: "embedded HOST PID START"."""
    pid = os.getpid()
    return f"embedded {socket.gethostname()} {pid} {_process_start(pid)}"


def runner_gone(runner: str | None) -> bool:
    """Whether the embedded run that owns a job is gone: its process on this host has exited
    (or its pid now belongs to another process). A fleet job (None), or a run on another host,
    whose process this one cannot see, is never taken for gone."""
    parts = (runner or "").split()
    if len(parts) < 3 or parts[0] != "embedded" or parts[1] != socket.gethostname():
        return False
    pid = int(parts[2])
    if not Path(f"/proc/{pid}").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's
        return False
    return len(parts) > 3 and parts[3] != "?" and _process_start(pid) != parts[3]


def abandon_orphaned(engine: Engine, collection: str | None = None) -> list[str]:
    """Jobs of embedded runs whose process is gone (killed, the machine's OOM killer): their
    chunks lived in that process's memory broker, so nothing will finish them. Each becomes
    `abandoned` and its open chunks cancelled, so `delete-collection` and waiting stop being
    held up; running the same job again stores the rest (stored records are skipped)."""
    query = select(jobs.c.id, jobs.c.runner).where(and_(jobs.c.state.in_(("submitting", "running")),
                                                        jobs.c.runner.like("embedded %")))
    if collection is not None:
        query = query.where(jobs.c.collection == collection)
    with engine.connect() as conn:
        orphans = [row.id for row in conn.execute(query) if runner_gone(row.runner)]
    now = time.time()
    for job_id in orphans:
        with engine.begin() as conn:
            changed = conn.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.state.in_(
                ("submitting", "running")))).values(state="abandoned", finished_at=now)).rowcount
            if changed:
                conn.execute(update(chunks).where(and_(chunks.c.job_id == job_id,
                                                       chunks.c.state.in_(OPEN_CHUNK_STATES)))
                             .values(state=CANCELLED, payload=None, done_at=now))
    return orphans
