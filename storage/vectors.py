"""Writing a chunk's vectors (one idempotent bulk upsert) and reading them back in corpus order."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, and_, bindparam, delete, func, select, update

from config.messages import ChunkVectors, DeadRecord
from storage import codec
from storage.bulk import Row, upsert_rows
from storage.dead_letters import insert_letters, resolve_stored
from storage.errors import LedgerError, SourceNotStored
from storage.ledger import finish_if_complete
from storage.schema import chunks, dead_letters, vectors, versions


def _check_model(conn: Connection, chunk: ChunkVectors) -> None:
    """A version holds one model's vectors of one dimension; the first chunk fixes dim."""
    row = conn.execute(select(versions.c.model, versions.c.dim).where(versions.c.key == chunk.version_key)).first()
    if row is None:
        raise LedgerError(f"no collection version {chunk.version_key!r}")
    if row.model != chunk.model:
        raise LedgerError(f"worker encoded with {chunk.model!r} but version {chunk.version_key!r} uses {row.model!r}")
    if row.dim is None:
        conn.execute(update(versions).where(versions.c.key == chunk.version_key).values(dim=chunk.dim))
    elif row.dim != chunk.dim:
        raise LedgerError(f"version {chunk.version_key!r} has dimension {row.dim}, chunk has {chunk.dim}")


def _resolve_aliases(conn: Connection, chunk: ChunkVectors, now: float) -> tuple[list[Row], list[DeadRecord]]:
    """Rows for records whose text repeats an earlier record's, copied by content hash.

    A repeat of a dead letter is a dead letter too; a repeat of a record not stored yet
    (its chunk is still in flight) raises SourceNotStored, which the task retries."""
    if not chunk.aliases:
        return [], []
    wanted = {content_hash for _, _, content_hash, _ in chunk.aliases}
    found = dict(conn.execute(
        select(vectors.c.content_hash, vectors.c.embedding)
        .where(and_(vectors.c.version_key == chunk.version_key, vectors.c.content_hash.in_(wanted)))
    ).all())
    missing = wanted - found.keys()
    dead_hashes = set(conn.execute(
        select(dead_letters.c.content_hash).where(and_(
            dead_letters.c.version_key == chunk.version_key, dead_letters.c.resolved_at.is_(None),
            dead_letters.c.content_hash.in_(missing)))
    ).scalars()) if missing else set()
    if missing - dead_hashes:
        waiting = len(missing - dead_hashes)
        raise SourceNotStored(f"{waiting} repeated texts of chunk {chunk.seq} wait for their first record")
    rows, dead = [], []
    for record_id, position, content_hash, text in chunk.aliases:
        if content_hash in found:
            rows.append((chunk.version_key, record_id, position, content_hash, chunk.model, found[content_hash], now))
        else:
            dead.append(DeadRecord(record_id, position, text, content_hash, "RepeatOfDeadLetter",
                                   "its text repeats a record that is a dead letter; redrive that one"))
    return rows, dead


def store_chunk(engine: Engine, chunk: ChunkVectors) -> int:
    """Upsert the chunk's vectors, write its dead letters and mark it done, in one transaction.
    Returns rows written.

    Idempotent: a redelivered chunk rewrites the same rows and finds its ledger row done.
    """
    blobs = codec.rows(chunk.vectors, chunk.dim) if chunk.ids else []
    if len(blobs) != len(chunk.ids):
        raise ValueError(f"chunk {chunk.seq}: {len(blobs)} vectors for {len(chunk.ids)} records")
    now = time.time()
    params: list[Row] = [
        (chunk.version_key, record_id, position, content_hash, chunk.model, blob, now)
        for record_id, position, content_hash, blob in zip(chunk.ids, chunk.positions, chunk.hashes, blobs)
    ]
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Safe to skip the WAL flush wait: the vectors and the chunk's "done" commit
            # together, so a crash loses both or neither, and a chunk lost that way is still
            # open in the ledger, where resume and the reconciler find it.
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        _check_model(conn, chunk)
        ledger_row = conn.execute(
            select(chunks.c.state, chunks.c.deliveries)
            .where(and_(chunks.c.job_id == chunk.job_id, chunks.c.seq == chunk.seq))
            # Two deliveries of one chunk collected at once: the second waits here, then
            # sees it done, so its dead letters are not written twice.
            .with_for_update()
        ).first()
        upsert_rows(conn, params)
        alias_rows, alias_dead = _resolve_aliases(conn, chunk, now)
        upsert_rows(conn, alias_rows)
        stored_ids = chunk.ids + [row[1] for row in alias_rows]
        resolve_stored(conn, chunk.job_id, chunk.version_key, stored_ids)
        if ledger_row is not None and ledger_row.state == "done":
            return len(stored_ids)  # a redelivery: rows rewritten, letters and counts already there
        dead = chunk.dead + alias_dead
        insert_letters(conn, chunk.job_id, chunk.seq, chunk.version_key, dead,
                       ledger_row.deliveries if ledger_row else 1)
        conn.execute(
            update(chunks)
            .where(and_(chunks.c.job_id == chunk.job_id, chunks.c.seq == chunk.seq))
            .values(state="done", stored=len(stored_ids), dead=len(dead), splits=chunk.splits, payload=None,
                    done_at=now, encode_seconds=chunk.encode_seconds, worker=chunk.worker)
        )
    finish_if_complete(engine, chunk.job_id)
    return len(stored_ids)


def stored_state(engine: Engine, version_key: str, record_ids: Iterable[str]) -> dict[str, tuple[str, int]]:
    """record id -> (content hash, position) of what the version stores, for the ids asked about."""
    ids = list(record_ids)
    if not ids:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(
            select(vectors.c.record_id, vectors.c.content_hash, vectors.c.position)
            .where(and_(vectors.c.version_key == version_key, vectors.c.record_id.in_(ids)))
        ).all()
    return {r.record_id: (r.content_hash, r.position) for r in rows}


def move_positions(engine: Engine, version_key: str, moves: list[tuple[str, int]]) -> None:
    """New positions for unchanged records whose place in the source moved (order is data)."""
    if not moves:
        return
    with engine.begin() as conn:
        conn.execute(
            update(vectors)
            .where(and_(vectors.c.version_key == bindparam("key"), vectors.c.record_id == bindparam("rid")))
            .values(position=bindparam("pos")),
            [{"key": version_key, "rid": record_id, "pos": position} for record_id, position in moves],
        )


def iter_ids(engine: Engine, version_key: str, block: int = 10_000) -> Iterator[list[str]]:
    """Every stored record id of a version, in pages (keyset on the primary key)."""
    last = ""
    while True:
        with engine.connect() as conn:
            ids = list(conn.execute(
                select(vectors.c.record_id)
                .where(and_(vectors.c.version_key == version_key, vectors.c.record_id > last))
                .order_by(vectors.c.record_id).limit(block)
            ).scalars())
        if not ids:
            return
        yield ids
        last = ids[-1]


def delete_ids(engine: Engine, version_key: str, record_ids: list[str]) -> int:
    if not record_ids:
        return 0
    with engine.begin() as conn:
        return int(conn.execute(
            delete(vectors).where(and_(vectors.c.version_key == version_key, vectors.c.record_id.in_(record_ids)))
        ).rowcount or 0)


def count(engine: Engine, version_key: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(
            select(func.count()).select_from(vectors).where(vectors.c.version_key == version_key)
        ).scalar_one())


def iter_ordered(engine: Engine, version_key: str, block: int = 4096) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, matrix) blocks in corpus order, keyset-paged so memory stays bounded."""
    with engine.connect() as conn:
        dim = conn.execute(select(versions.c.dim).where(versions.c.key == version_key)).scalar()
    if dim is None:
        return
    last: tuple[int, str] | None = None
    while True:
        query = select(vectors.c.position, vectors.c.record_id, vectors.c.embedding).where(
            vectors.c.version_key == version_key
        )
        if last is not None:
            query = query.where(
                (vectors.c.position > last[0]) | and_(vectors.c.position == last[0], vectors.c.record_id > last[1])
            )
        query = query.order_by(vectors.c.position, vectors.c.record_id).limit(block)
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return
        matrix = codec.unpack(b"".join(bytes(r.embedding) for r in rows), dim)
        yield [r.record_id for r in rows], matrix
        last = (rows[-1].position, rows[-1].record_id)
