"""Which worker node holds which chunk, which nodes are alive, and the sweep that re-sends the
open chunks of a dead node within seconds (instead of after the broker's visibility timeout).

Every time here is the database's clock: hosts' clocks differ, the database has one.

- A node writes a heartbeat row (`workers`) every few seconds; `up_since` is the start of its
  current unbroken run of beats (a beat later than `streak_gap` after the last one starts a
  new run).
- A node marks the chunks whose encode or collect message it receives as held by its
  incarnation (`chunks.holder`).
- A sweep re-sends the open chunks held by nodes not seen for `dead_after` seconds, with a
  compare-and-set on the holder so two sweepers never both re-send a chunk.
- A sweep judges only while some node has beaten without a break for `dead_after` seconds:
  after a database outage every node looks stale at once, and nobody is judged until the
  nodes have had that long to beat again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    case,
    delete,
    exists,
    insert,
    literal_column,
    select,
    tuple_,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from ..store.ledger import OPEN_CHUNK_STATES
from ..store.schema import chunks, jobs, workers


def db_now(dialect: str) -> ColumnElement[float]:
    """The database's clock in float seconds since the epoch."""
    if dialect == "postgresql":
        return literal_column("extract(epoch from clock_timestamp())::float8")
    return literal_column("((julianday('now') - 2440587.5) * 86400.0)")


def streak_gap(dead_after: float) -> float:
    """A beat later than this after the previous one breaks a node's run of beats. Half of
    dead_after: an outage shorter than this cannot make a beating node look dead (its beats
    resume within a beat interval), and a longer one breaks every node's run."""
    return dead_after / 2


def beat(engine: Engine, incarnation: str, name: str, host: str, pid: int, dead_after: float,
         queues: str | None = None) -> None:
    """The node's heartbeat: one UPDATE (an INSERT on its first beat, or after it was pruned).
    `queues`: what the node consumes, comma-separated, kept when None."""
    kept = {} if queues is None else {"queues": queues}
    with engine.begin() as conn:
        now = db_now(conn.dialect.name)
        broke = workers.c.last_seen < now - streak_gap(dead_after)
        updated = conn.execute(
            update(workers).where(workers.c.incarnation == incarnation)
            # SET expressions read the row's old values: up_since restarts after a gap.
            .values(last_seen=now, up_since=case((broke, now), else_=workers.c.up_since), **kept)
        ).rowcount
        if not updated:
            conn.execute(insert(workers).values(incarnation=incarnation, name=name, host=host, pid=pid,
                                                started_at=now, last_seen=now, up_since=now, **kept))


# What a node that has not said what it consumes (a row from before workers.queues) is taken to.
ALL_QUEUES = ("embed", "collect", "dead_letter", "query")


def live_workers_by_queue(conn: Connection, dead_after: float) -> dict[str, int]:
    """Nodes seen within `dead_after` (the database's clock), counted per queue they consume."""
    rows = conn.execute(select(workers.c.queues).where(workers.c.last_seen >= db_now(conn.dialect.name) - dead_after))
    counts: dict[str, int] = {}
    for queues in rows.scalars():
        for queue in queues.split(",") if queues else ALL_QUEUES:
            counts[queue] = counts.get(queue, 0) + 1
    return counts


def live_consumers(conn: Connection, queue: str, dead_after: float) -> int:
    """Nodes seen within `dead_after` that consume `queue`."""
    return live_workers_by_queue(conn, dead_after).get(queue, 0)


def retire(engine: Engine, incarnation: str) -> None:
    """A node shutting down cleanly: Celery has returned its unfinished messages to the broker,
    so its chunks need no re-send; release them and remove the row."""
    with engine.begin() as conn:
        conn.execute(update(chunks).where(and_(chunks.c.holder == incarnation, chunks.c.state.in_(OPEN_CHUNK_STATES)))
                     .values(holder=None))
        conn.execute(delete(workers).where(workers.c.incarnation == incarnation))


def hold(engine: Engine, incarnation: str, keys: list[tuple[str, int]]) -> None:
    """Mark chunks (job_id, seq) as held by this node, as it receives them. One statement, so
    autocommit: one round trip per message the node receives, not BEGIN, UPDATE, COMMIT."""
    if not keys:
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(update(chunks).where(and_(tuple_(chunks.c.job_id, chunks.c.seq).in_(keys),
                                               chunks.c.state.in_(OPEN_CHUNK_STATES)))
                     .values(holder=incarnation))


@dataclass(frozen=True)
class Stranded:
    job_id: str
    seq: int
    holder: str
    payload: bytes


def _judge_cutoff(conn: Connection, dead_after: float) -> float | None:
    """The database time before which a node's last beat makes it dead, or None while no node
    has beaten without a break for dead_after seconds (nobody may be judged yet)."""
    now = conn.execute(select(db_now(conn.dialect.name))).scalar_one()
    witness = conn.execute(
        select(workers.c.incarnation)
        .where(and_(workers.c.last_seen >= now - streak_gap(dead_after), workers.c.up_since <= now - dead_after))
        .limit(1)
    ).first()
    return None if witness is None else float(now) - dead_after


def claim_stranded(engine: Engine, dead_after: float, job_id: str | None = None,
                   claimant: str | None = None) -> list[Stranded]:
    """The open chunks held by dead nodes (of one job, or all), each claimed by a
    compare-and-set on its holder: the caller re-sends exactly the chunks returned. The
    claimant (the sweeping node's incarnation, if it is one) becomes the holder, so a sweeper
    that dies before sending is swept in turn. Dead nodes are pruned only once their chunks
    were sent (prune_dead_nodes): a chunk whose send fails goes back to its dead holder, which
    must still be there for the next sweep to judge."""
    with engine.connect() as conn:
        cutoff = _judge_cutoff(conn, dead_after)
        if cutoff is None:
            return []
        dead = list(conn.execute(select(workers.c.incarnation).where(workers.c.last_seen < cutoff)).scalars())
        if not dead:
            return []
        query = select(chunks.c.job_id, chunks.c.seq, chunks.c.holder, chunks.c.payload).where(
            and_(chunks.c.holder.in_(dead), chunks.c.state.in_(OPEN_CHUNK_STATES), chunks.c.payload.is_not(None)))
        if job_id is not None:
            query = query.where(chunks.c.job_id == job_id)
        candidates = [Stranded(r.job_id, r.seq, r.holder, r.payload) for r in conn.execute(query)]
    claimed = []
    with engine.begin() as conn:
        for chunk in candidates:
            won = conn.execute(
                update(chunks)
                .where(and_(chunks.c.job_id == chunk.job_id, chunks.c.seq == chunk.seq,
                            chunks.c.holder == chunk.holder, chunks.c.state.in_(OPEN_CHUNK_STATES)))
                .values(holder=claimant, sent_at=time.time())
            ).rowcount
            if won:
                claimed.append(chunk)
                conn.execute(update(jobs).where(jobs.c.id == chunk.job_id).values(resends=jobs.c.resends + 1))
    return claimed


def prune_dead_nodes(engine: Engine, dead_after: float) -> int:
    """Forget nodes silent for dead_after (judged as claim_stranded judges) that hold no open
    chunk any more; returns how many."""
    with engine.begin() as conn:
        cutoff = _judge_cutoff(conn, dead_after)
        if cutoff is None:
            return 0
        held = exists().where(and_(chunks.c.holder == workers.c.incarnation, chunks.c.state.in_(OPEN_CHUNK_STATES)))
        return int(conn.execute(delete(workers).where(and_(workers.c.last_seen < cutoff, ~held))).rowcount or 0)


def unclaim(engine: Engine, chunk: Stranded, claimant: str | None) -> None:
    """A claimed chunk that could not be sent goes back to its dead holder, for the next sweep."""
    with engine.begin() as conn:
        conn.execute(update(chunks).where(and_(chunks.c.job_id == chunk.job_id, chunks.c.seq == chunk.seq,
                                               chunks.c.holder.is_(None) if claimant is None
                                               else chunks.c.holder == claimant))
                     .values(holder=chunk.holder))

