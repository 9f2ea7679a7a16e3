"""Writing a chunk's vectors (one idempotent bulk upsert) and reading them back in corpus order."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

import msgpack
import numpy as np
from sqlalchemy import Connection, Engine, and_, bindparam, delete, func, select, update

from ..config.messages import ChunkTexts, ChunkVectors, DeadRecord
from . import codec
from .bulk import ROW_ERRORS, Row, upsert_isolating, upsert_rows
from .dead_letters import insert_letters, resolve_stored
from .errors import LedgerError, SourceNotStored
from .ledger import finish_if_complete
from .safe_errors import safe_error
from .schema import chunks, dead_letters, vectors, versions

log = logging.getLogger(__name__)
# The error type of a record the database refused to store (too long an id, a NUL, ...).
STORAGE_REJECTED = "StorageRejected"

# (database, version key) -> (model, dim) once the dim is fixed: neither changes after that,
# so the collector checks them in memory instead of with a query per chunk.
_fixed_versions: dict[tuple[str, str], tuple[str, int]] = {}


def _check_model(conn: Connection, chunk: ChunkVectors) -> None:
    """A version holds one model's vectors of one dimension; the first chunk fixes dim."""
    cache_key = (str(conn.engine.url), chunk.version_key)
    known = _fixed_versions.get(cache_key)
    if known is None:
        row = conn.execute(select(versions.c.model, versions.c.dim).where(versions.c.key == chunk.version_key)).first()
        if row is None:
            raise LedgerError(f"no collection version {chunk.version_key!r}")
        if row.model != chunk.model:
            raise LedgerError(
                f"worker encoded with {chunk.model!r} but version {chunk.version_key!r} uses {row.model!r}")
        if row.dim is None:
            conn.execute(update(versions).where(versions.c.key == chunk.version_key).values(dim=chunk.dim))
            return
        _fixed_versions[cache_key] = known = (row.model, row.dim)
    if known is not None and known[0] != chunk.model:
        raise LedgerError(f"worker encoded with {chunk.model!r} but version {chunk.version_key!r} uses {known[0]!r}")
    if known is not None and known[1] != chunk.dim:
        raise LedgerError(f"version {chunk.version_key!r} has dimension {known[1]}, chunk has {chunk.dim}")


def _resolve_aliases(conn: Connection, chunk: ChunkVectors, own: dict[str, bytes], now: float,
                     last_attempt: bool) -> tuple[list[Row], list[DeadRecord]]:
    """Rows for records whose text repeats an earlier record's, copied by content hash: from
    this chunk's own vectors first, then from what the version stores.

    A repeat of a dead letter (in this chunk or before) is a dead letter too. A repeat of a
    record not stored yet (its chunk is still in flight) raises SourceNotStored, which the
    task retries; on the last attempt it becomes a dead letter instead, to redrive, so the
    rest of the chunk is still stored."""
    if not chunk.aliases:
        return [], []
    wanted = {content_hash for _, _, content_hash, _ in chunk.aliases} - own.keys()
    found = dict(own)
    if wanted:
        found.update(conn.execute(
            select(vectors.c.content_hash, vectors.c.embedding)
            .where(and_(vectors.c.version_key == chunk.version_key, vectors.c.content_hash.in_(wanted)))
        ).all())
    missing = wanted - found.keys()
    dead_hashes = {d.content_hash for d in chunk.dead} & missing
    if missing - dead_hashes:
        dead_hashes |= set(conn.execute(
            select(dead_letters.c.content_hash).where(and_(
                dead_letters.c.version_key == chunk.version_key, dead_letters.c.resolved_at.is_(None),
                dead_letters.c.content_hash.in_(missing - dead_hashes)))
        ).scalars())
    waiting = missing - dead_hashes
    if waiting and not last_attempt:
        raise SourceNotStored(f"{len(waiting)} repeated texts of chunk {chunk.seq} wait for their first record")
    rows, dead = [], []
    for record_id, position, content_hash, text in chunk.aliases:
        if content_hash in found:
            vector = bytes(found[content_hash])
            rows.append((chunk.version_key, record_id, position, content_hash, chunk.model, vector, now))
        elif content_hash in dead_hashes:
            dead.append(DeadRecord(record_id, position, text, content_hash, "RepeatOfDeadLetter",
                                   "its text repeats a record that is a dead letter; redrive either"))
        else:
            dead.append(DeadRecord(record_id, position, text, content_hash, "SourceNotStored",
                                   "the record whose text it repeats was not stored in time; redrive it"))
    return rows, dead


def store_chunk(engine: Engine, chunk: ChunkVectors, last_attempt: bool = True) -> int | None:
    """Upsert the chunk's vectors, write its dead letters and mark it done, in one transaction.
    Returns rows written, or None when its job was cancelled while it was encoded.

    Idempotent: a redelivered chunk rewrites the same rows and finds its ledger row done.
    The hot path of the collector, so every round trip to the database counts. If the
    database refuses a row (ROW_ERRORS), the transaction is written again isolating the
    refused rows into StorageRejected dead letters: only such chunks pay for it.
    """
    blobs = codec.rows(chunk.vectors, chunk.dim) if chunk.ids else []
    if len(blobs) != len(chunk.ids):
        raise ValueError(f"chunk {chunk.seq}: {len(blobs)} vectors for {len(chunk.ids)} records")
    now = time.time()
    rows: list[Row] = [
        (chunk.version_key, record_id, position, content_hash, chunk.model, blob, now)
        for record_id, position, content_hash, blob in zip(chunk.ids, chunk.positions, chunk.hashes, blobs, strict=True)
    ]
    try:
        stored = _write_chunk(engine, chunk, rows, now, last_attempt, isolate=False)
    except _ChunkCancelled:
        return None
    except ROW_ERRORS as exc:
        # One row the database refuses aborts the whole transaction: write the chunk again,
        # isolating the rows it refuses, as the encoder isolates poison records.
        log.warning("job=%s chunk=%d: the database refused a row (%s); isolating the rows it refuses",
                    chunk.job_id, chunk.seq, safe_error(exc))
        try:
            stored = _write_chunk(engine, chunk, rows, now, last_attempt, isolate=True)
        except _ChunkCancelled:
            return None
    finish_if_complete(engine, chunk.job_id)
    return stored


class _ChunkCancelled(Exception):
    """The chunk's job was cancelled while it was encoded: its transaction is rolled back."""


def _write_chunk(engine: Engine, chunk: ChunkVectors, encoded: list[Row], now: float, last_attempt: bool,
                 isolate: bool) -> int:
    """store_chunk's transaction. With isolate, the rows the database refuses become
    StorageRejected dead letters (their texts from the ledger's copy of the message)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Safe to skip the WAL flush wait: the vectors and the chunk's "done" commit
            # together, so a crash loses both or neither, and a chunk lost that way is still
            # open in the ledger, where resume and the reconciler find it.
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        _check_model(conn, chunk)
        alias_rows, alias_dead = _resolve_aliases(conn, chunk, {row[3]: row[5] for row in encoded}, now, last_attempt)
        rows = encoded + alias_rows
        dead = chunk.dead + alias_dead
        if isolate:
            texts = _ledger_texts(conn, chunk)  # its FOR UPDATE takes the chunk's row lock first
            rejected = upsert_isolating(conn, rows)
            dead = dead + [
                DeadRecord(rows[i][1], rows[i][2], texts.get(rows[i][1], ""), rows[i][3], STORAGE_REJECTED,
                           f"the database refused to store the record: {safe_error(exc)}")
                for i, exc in rejected
            ]
            refused = {i for i, _ in rejected}
            rows = [row for i, row in enumerate(rows) if i not in refused]
        # Marking done first takes the chunk's row lock: a second delivery collected at the
        # same moment waits here, then finds the chunk done and writes no letters twice.
        marked = conn.execute(
            update(chunks)
            .where(and_(chunks.c.job_id == chunk.job_id, chunks.c.seq == chunk.seq, chunks.c.state == "queued"))
            .values(state="done", stored=len(rows), dead=len(dead), splits=chunk.splits, payload=None,
                    done_at=now, encode_seconds=chunk.encode_seconds, worker=chunk.worker)
            .returning(chunks.c.deliveries)
        ).first()
        if marked is None and conn.execute(select(chunks.c.state).where(and_(
                chunks.c.job_id == chunk.job_id, chunks.c.seq == chunk.seq))).scalar_one_or_none() == "cancelled":
            # Its job was cancelled while it was encoded: not stored, not counted. Raising
            # rolls back whatever the isolating path already wrote.
            raise _ChunkCancelled()
        if not isolate:
            upsert_rows(conn, rows)
        resolve_stored(conn, chunk.job_id, chunk.version_key, [row[1] for row in rows])
        if marked is not None:  # None: a redelivery, rows rewritten, letters already there
            insert_letters(conn, chunk.job_id, chunk.seq, chunk.version_key, dead, max(marked.deliveries, 1))
    return len(rows)


def _ledger_texts(conn: Connection, chunk: ChunkVectors) -> dict[str, str]:
    """record id -> text, from the ledger's copy of the chunk's message (the collector's
    message carries no texts); empty if the chunk is already done."""
    payload = conn.execute(
        select(chunks.c.payload).where(and_(chunks.c.job_id == chunk.job_id, chunks.c.seq == chunk.seq))
        .with_for_update()
    ).scalar()
    if payload is None:
        return {}
    try:
        texts = ChunkTexts.from_wire(msgpack.unpackb(payload))
    except Exception:  # not a chunk message (a test's placeholder, say): letters without texts
        return {}
    found = dict(zip(texts.ids, texts.texts, strict=True))
    found.update((record_id, text) for record_id, _, _, text in texts.aliases)
    return found


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
