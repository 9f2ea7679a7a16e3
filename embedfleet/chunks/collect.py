"""The collector's rules: what a chunk's vectors become in storage, in one transaction.

- Every record ends stored or a dead letter: the encoder's failures are letters, a record
  whose text repeats an earlier record's gets that record's vector (by content hash), or a
  letter when there is none to copy.
- One idempotent upsert: a redelivered chunk rewrites the same rows and finds its ledger
  row done, so it writes no letter twice.
- A row the database refuses (too long an id, a NUL) does not lose the chunk: the
  transaction is written again, and the refused rows become StorageRejected letters.
- A chunk whose job was cancelled while it was encoded is not stored.

Storage gives the primitives, taking plain rows (store/vectors.py, bulk.py, ledger.py,
dead_letters.py); the wire messages are read here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from ..errors import SourceNotStored
from ..safe_errors import safe_error
from ..store import codec
from ..store.bulk import ROW_ERRORS, Row, upsert_isolating, upsert_rows
from ..store.ledger import ChunkCancelled, Collected, finish_if_complete, locked_payload, mark_collected
from ..store.pgvector import BYTEA
from ..store.vectors import analyze, bulk_write, check_version, embeddings_by_hash
from .dead_letters import insert_letters, open_letter_hashes, resolve_stored
from .messages import ChunkVectors, DeadRecord, read_payload

log = logging.getLogger(__name__)
# The error type of a record the database refused to store (too long an id, a NUL, ...).
STORAGE_REJECTED = "StorageRejected"
REPEAT_OF_DEAD_LETTER = "RepeatOfDeadLetter"
SOURCE_NOT_STORED = "SourceNotStored"
# After these chunks of a job are stored (at 256 records a chunk: about 1,000, 8,000 and
# 65,000 rows of the version), the collector has PostgreSQL analyze the vectors table, so a
# version new to it (a first load, a migration beside millions of older rows) becomes
# visible to the planner before autovacuum gets to it. ANALYZE samples 30,000 rows: 0.4 s
# at 100,000 rows, at most three times a job and only in jobs of five chunks or more.
ANALYZE_AFTER_SEQS = frozenset({4, 32, 256})


def store_chunk(engine: Engine, chunk: ChunkVectors, last_attempt: bool = True,
                on_job_done: Callable[[str], None] | None = None, lock_timeout: float | None = None) -> int | None:
    """Upsert the chunk's vectors, write its dead letters and mark it done, in one transaction.
    Returns rows written, or None when its job was cancelled while it was encoded.
    `on_job_done(version_key)` is called when this chunk finished its job (the version's
    bulk load is over: time for its search index). lock_timeout: seconds a statement may
    wait for a lock (PostgreSQL) before the store fails, rolled back.

    The hot path of the collector, so every round trip to the database counts: only a chunk
    with a row the database refuses (ROW_ERRORS) pays for a second, isolating write.
    """
    blobs = codec.rows(chunk.vectors, chunk.dim) if chunk.ids else []
    if len(blobs) != len(chunk.ids):
        raise ValueError(f"chunk {chunk.seq}: {len(blobs)} vectors for {len(chunk.ids)} records")
    now = time.time()
    n = len(chunk.ids)
    texts = chunk.texts if chunk.texts is not None else [None] * n
    metadata = chunk.metadata if chunk.metadata is not None else [None] * n
    rows: list[Row] = [
        (chunk.version_key, record_id, position, content_hash, chunk.model, blob, now, text, meta)
        for record_id, position, content_hash, blob, text, meta
        in zip(chunk.ids, chunk.positions, chunk.hashes, blobs, texts, metadata, strict=True)
    ]
    try:
        try:
            stored, kind = _write_chunk(engine, chunk, rows, now, last_attempt, isolate=False,
                                        lock_timeout=lock_timeout)
        except ROW_ERRORS as exc:
            # One row the database refuses aborts the whole transaction: write the chunk again,
            # isolating the rows it refuses, as the encoder isolates poison records.
            log.warning("job=%s chunk=%d: the database refused a row (%s); isolating the rows it refuses",
                        chunk.job_id, chunk.seq, safe_error(exc))
            stored, kind = _write_chunk(engine, chunk, rows, now, last_attempt, isolate=True, lock_timeout=lock_timeout)
    except ChunkCancelled:
        return None
    if finish_if_complete(engine, chunk.job_id) and on_job_done is not None and kind != BYTEA:
        on_job_done(chunk.version_key)
    if chunk.seq in ANALYZE_AFTER_SEQS:
        try:
            analyze(engine)
        except SQLAlchemyError as exc:  # the chunk is committed: a failed ANALYZE costs speed only
            log.warning("job=%s chunk=%d: ANALYZE vectors failed: %s", chunk.job_id, chunk.seq, safe_error(exc))
    return stored


def _write_chunk(engine: Engine, chunk: ChunkVectors, encoded: list[Row], now: float, last_attempt: bool,
                 isolate: bool, lock_timeout: float | None = None) -> tuple[int, str]:
    """store_chunk's transaction. With isolate, the rows the database refuses become
    StorageRejected dead letters (their texts from the ledger's copy of the message)."""
    with bulk_write(engine, lock_timeout) as conn:
        kind = check_version(conn, chunk.version_key, chunk.model, chunk.dim)
        alias_rows, alias_dead = _resolve_aliases(conn, chunk, {row[3]: row[5] for row in encoded}, now, last_attempt,
                                                  kind)
        rows = encoded + alias_rows
        dead = list(chunk.dead) + alias_dead
        if isolate:
            texts = _ledger_texts(conn, chunk)  # its FOR UPDATE takes the chunk's row lock first
            rejected = upsert_isolating(conn, rows, kind)
            dead += [
                DeadRecord(rows[i][1], rows[i][2], texts.get(rows[i][1], ""), rows[i][3], STORAGE_REJECTED,
                             f"the database refused to store the record: {safe_error(exc)}")
                for i, exc in rejected
            ]
            refused = {i for i, _ in rejected}
            rows = [row for i, row in enumerate(rows) if i not in refused]
        # Marking done first takes the chunk's row lock (see mark_collected). Raising
        # ChunkCancelled rolls back whatever the isolating path already wrote.
        deliveries = mark_collected(conn, chunk.job_id, chunk.seq, Collected(
            stored=len(rows), dead=len(dead), splits=chunk.splits, encode_seconds=chunk.encode_seconds,
            worker=chunk.worker), now)
        if not isolate:
            upsert_rows(conn, rows, kind=kind)
        resolve_stored(conn, chunk.job_id, chunk.version_key, [row[1] for row in rows])
        if deliveries is not None:  # None: a redelivery, rows rewritten, letters already there
            insert_letters(conn, chunk.job_id, chunk.seq, chunk.version_key, dead, deliveries)
    return len(rows), kind


def _resolve_aliases(conn: Connection, chunk: ChunkVectors, own: dict[str, bytes], now: float,
                     last_attempt: bool, kind: str) -> tuple[list[Row], list[DeadRecord]]:
    """Rows for records whose text repeats an earlier record's, copied by content hash: from
    this chunk's own vectors first, then from what the version stores.

    A repeat of a dead letter (in this chunk or before) is a dead letter too. A repeat of a
    record not stored yet (its chunk is still in flight) raises SourceNotStored, which the
    task retries; on the last attempt it becomes a dead letter instead, to redrive, so the
    rest of the chunk is still stored."""
    if not chunk.aliases:
        return [], []
    wanted = {alias[2] for alias in chunk.aliases} - own.keys()
    found = {**own, **embeddings_by_hash(conn, chunk.version_key, wanted, kind)}
    missing = wanted - found.keys()
    dead_hashes = {d.content_hash for d in chunk.dead} & missing
    dead_hashes |= open_letter_hashes(conn, chunk.version_key, missing - dead_hashes)
    waiting = missing - dead_hashes
    if waiting and not last_attempt:
        raise SourceNotStored(f"{len(waiting)} repeated texts of chunk {chunk.seq} wait for their first record")
    rows, dead = [], []
    for alias in chunk.aliases:
        record_id, position, content_hash, text = alias[:4]
        if content_hash in found:
            rows.append((chunk.version_key, record_id, position, content_hash, chunk.model, found[content_hash], now,
                         text if chunk.store_text else None, alias[4] if len(alias) > 4 else None))
        elif content_hash in dead_hashes:
            dead.append(DeadRecord(record_id, position, text, content_hash, REPEAT_OF_DEAD_LETTER,
                                     "its text repeats a record that is a dead letter; redrive either"))
        else:
            dead.append(DeadRecord(record_id, position, text, content_hash, SOURCE_NOT_STORED,
                                     "the record whose text it repeats was not stored in time; redrive it"))
    return rows, dead


def _ledger_texts(conn: Connection, chunk: ChunkVectors) -> dict[str, str]:
    """record id -> text, from the ledger's copy of the chunk's message (the collector's
    message carries no texts); empty if the chunk is already done."""
    payload = locked_payload(conn, chunk.job_id, chunk.seq)
    if payload is None:
        return {}
    try:
        _, records = read_payload(payload)
    except Exception:  # not a chunk message (a test's placeholder, say): letters without texts
        return {}
    return {record_id: text for record_id, _, text, _ in records}
