"""Writing a chunk's vectors (one idempotent bulk upsert) and reading them back in corpus order."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from config.messages import ChunkVectors
from storage import codec
from storage.dead_letters import insert_letters, resolve_stored
from storage.ledger import LedgerError, finish_if_complete
from storage.schema import chunks, collections, vectors


def _upsert_statement(conn: Connection) -> Any:
    """INSERT ... ON CONFLICT (collection, record_id) DO UPDATE, in the connection's dialect."""
    name = conn.dialect.name
    if name == "postgresql":
        stmt = postgresql.insert(vectors)
    elif name == "sqlite":
        stmt = sqlite.insert(vectors)
    else:
        raise LedgerError(f"unsupported database dialect {name!r}: use SQLite or PostgreSQL")
    excluded = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[vectors.c.collection, vectors.c.record_id],
        set_={
            "position": excluded.position,
            "content_hash": excluded.content_hash,
            "model": excluded.model,
            "embedding": excluded.embedding,
            "updated_at": excluded.updated_at,
        },
    )


def _check_model(conn: Connection, chunk: ChunkVectors) -> None:
    """A collection holds one model's vectors of one dimension; the first chunk fixes dim."""
    row = conn.execute(
        select(collections.c.model, collections.c.dim).where(collections.c.name == chunk.collection)
    ).first()
    if row is None:
        raise LedgerError(f"no collection {chunk.collection!r}")
    if row.model != chunk.model:
        raise LedgerError(
            f"worker encoded with {chunk.model!r} but collection {chunk.collection!r} uses {row.model!r}"
        )
    if row.dim is None:
        conn.execute(update(collections).where(collections.c.name == chunk.collection).values(dim=chunk.dim))
    elif row.dim != chunk.dim:
        raise LedgerError(f"collection {chunk.collection!r} has dimension {row.dim}, chunk has {chunk.dim}")


def store_chunk(engine: Engine, chunk: ChunkVectors) -> int:
    """Upsert the chunk's vectors and mark it done, in one transaction. Returns rows written.

    Idempotent: a redelivered chunk rewrites the same rows and finds its ledger row done.
    """
    blobs = codec.rows(chunk.vectors, chunk.dim) if chunk.ids else []
    if len(blobs) != len(chunk.ids):
        raise ValueError(f"chunk {chunk.seq}: {len(blobs)} vectors for {len(chunk.ids)} records")
    now = time.time()
    params = [
        {
            "collection": chunk.collection,
            "record_id": record_id,
            "position": position,
            "content_hash": content_hash,
            "model": chunk.model,
            "embedding": blob,
            "updated_at": now,
        }
        for record_id, position, content_hash, blob in zip(chunk.ids, chunk.positions, chunk.hashes, blobs)
    ]
    with engine.begin() as conn:
        _check_model(conn, chunk)
        ledger_row = conn.execute(
            select(chunks.c.state, chunks.c.deliveries).where(
                and_(chunks.c.job_id == chunk.job_id, chunks.c.seq == chunk.seq)
            )
            # Two deliveries of one chunk collected at once: the second waits here, then
            # sees it done, so its dead letters are not written twice.
            .with_for_update()
        ).first()
        if params:
            conn.execute(_upsert_statement(conn), params)
            resolve_stored(conn, chunk.job_id, chunk.collection, chunk.ids)
        if ledger_row is not None and ledger_row.state == "done":
            return len(params)  # a redelivery: rows rewritten, letters and counts already there
        insert_letters(conn, chunk.job_id, chunk.seq, chunk.collection, chunk.dead,
                       ledger_row.deliveries if ledger_row else 1)
        conn.execute(
            update(chunks)
            .where(and_(chunks.c.job_id == chunk.job_id, chunks.c.seq == chunk.seq))
            .values(
                state="done",
                stored=len(params),
                dead=len(chunk.dead),
                splits=chunk.splits,
                payload=None,
                done_at=now,
                encode_seconds=chunk.encode_seconds,
                worker=chunk.worker,
            )
        )
    finish_if_complete(engine, chunk.job_id)
    return len(params)


def count(engine: Engine, collection: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(vectors).where(vectors.c.collection == collection)
            ).scalar_one()
        )


def iter_ordered(engine: Engine, collection: str, block: int = 4096) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, matrix) blocks in corpus order, keyset-paged so memory stays bounded."""
    with engine.connect() as conn:
        dim = conn.execute(select(collections.c.dim).where(collections.c.name == collection)).scalar()
    if dim is None:
        return
    last: tuple[int, str] | None = None
    while True:
        query = select(vectors.c.position, vectors.c.record_id, vectors.c.embedding).where(
            vectors.c.collection == collection
        )
        if last is not None:
            query = query.where(
                (vectors.c.position > last[0])
                | and_(vectors.c.position == last[0], vectors.c.record_id > last[1])
            )
        query = query.order_by(vectors.c.position, vectors.c.record_id).limit(block)
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return
        matrix = codec.unpack(b"".join(bytes(r.embedding) for r in rows), dim)
        yield [r.record_id for r in rows], matrix
        last = (rows[-1].position, rows[-1].record_id)
