"""A version's vectors: the primitives of the collector's one-transaction write (its rules
live in chunks/collect.py), and reading them back in corpus order."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, and_, bindparam, column, delete, func, select, update, values

from ..errors import LedgerError
from . import codec
from .pgvector import BYTEA, embedding_column, to_float32, version_kind
from .schema import vectors, versions

# (database, version key) -> (model, dim, storage kind) once the dim is fixed: none of them
# changes after that, so the collector checks them in memory instead of with a query per chunk.
_fixed_versions: dict[tuple[str, str], tuple[str, int, str]] = {}


@contextmanager
def bulk_write(engine: Engine, lock_timeout: float | None = None) -> Iterator[Connection]:
    """One transaction for a chunk's rows, its letters and its ledger mark. lock_timeout
    (PostgreSQL): seconds any one statement may wait for a lock before it fails."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Safe to skip the WAL flush wait: the vectors and the chunk's "done" commit
            # together, so a crash loses both or neither, and a chunk lost that way is still
            # open in the ledger, where resume and the reconciler find it.
            settings = "SET LOCAL synchronous_commit = off"
            if lock_timeout is not None:
                settings += f"; SET LOCAL lock_timeout = {max(1, int(lock_timeout * 1000))}"
            conn.exec_driver_sql(settings)
        yield conn


def analyze(engine: Engine) -> None:
    """Refresh PostgreSQL's statistics of the vectors table (a no-op elsewhere). A version
    that autovacuum has not seen yet is planned as holding about one row, and then the
    look-ups by content hash walk the version's whole position index (every probe a scan
    of the rows stored so far); a few ANALYZEs early in a load keep them index probes.
    SKIP_LOCKED: while autovacuum or another worker analyzes, this one has nothing to do.
    A role that does not own the table gets a warning from the server, not an error."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE (SKIP_LOCKED) vectors")


def check_version(conn: Connection, version_key: str, model: str, dim: int) -> str:
    """A version holds one model's vectors of one dimension; the first chunk fixes dim.
    Returns how the version stores its vectors (bytea, vector or halfvec)."""
    cache_key = (str(conn.engine.url), version_key)
    known = _fixed_versions.get(cache_key)
    if known is None:
        row = conn.execute(select(versions.c.model, versions.c.dim, versions.c.storage)
                           .where(versions.c.key == version_key)).first()
        if row is None:
            raise LedgerError(f"no collection version {version_key!r}")
        if row.model != model:
            raise LedgerError(f"worker encoded with {model!r} but version {version_key!r} uses {row.model!r}")
        if row.dim is None:
            conn.execute(update(versions).where(versions.c.key == version_key).values(dim=dim))
            return row.storage or BYTEA
        _fixed_versions[cache_key] = known = (row.model, row.dim, row.storage or BYTEA)
    if known[0] != model:
        raise LedgerError(f"worker encoded with {model!r} but version {version_key!r} uses {known[0]!r}")
    if known[1] != dim:
        raise LedgerError(f"version {version_key!r} has dimension {known[1]}, chunk has {dim}")
    return known[2]


def embeddings_by_hash(conn: Connection, version_key: str, hashes: Collection[str],
                       kind: str = BYTEA) -> dict[str, bytes]:
    """content hash -> stored vector as float32 bytes, for the hashes the version stores.

    One index probe per hash, taking the first row: a text stored 100,000 times is read
    once, not 100,000 times per chunk. On a table nothing has analyzed yet (a first load),
    PostgreSQL planned `content_hash IN (256 hashes)` as a scan of the whole version (80 ms
    a chunk at 100,000 rows, growing with it); the probe's two equalities pick
    ix_vectors_version_hash there. A version new to an analyzed table (a migration) is
    planned as about one row, where the position index can look as cheap, and each probe
    would then walk the version. The ORDER BY, which only the hash index gives for free,
    took a measured migration from 839 to 14,734 rec/s without ANALYZE, but a plan made
    with the version's value in hand could still pick the position index: the collector's
    ANALYZE (chunks/collect.py: ANALYZE_AFTER_SEQS) is what settles it."""
    if not hashes:
        return {}
    wanted = values(column("content_hash", vectors.c.content_hash.type), name="wanted").data(
        [(content_hash,) for content_hash in hashes]).cte("wanted")
    first = (select(embedding_column(kind))
             .where(and_(vectors.c.version_key == version_key, vectors.c.content_hash == wanted.c.content_hash))
             .order_by(vectors.c.version_key, vectors.c.content_hash).limit(1).scalar_subquery())
    return {content_hash: to_float32(blob, kind)
            for content_hash, blob in conn.execute(select(wanted.c.content_hash, first)).all()
            if blob is not None}


def stored_extras(engine: Engine, version_key: str, record_ids: Iterable[str]) -> dict[str, tuple[str | None, Any]]:
    """record id -> (text, metadata) kept beside the vector (None where the collection keeps
    neither), for the ids asked about: what search results show a person."""
    ids = list(record_ids)
    if not ids:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(
            select(vectors.c.record_id, vectors.c.text, vectors.c.metadata)
            .where(and_(vectors.c.version_key == version_key, vectors.c.record_id.in_(ids)))
        ).all()
    return {r.record_id: (r.text, r.metadata) for r in rows}


def holds_any(engine: Engine, version_key: str) -> bool:
    """Whether the version stores at least one vector (one index probe)."""
    with engine.connect() as conn:
        row = conn.execute(select(vectors.c.record_id).where(vectors.c.version_key == version_key).limit(1)).first()
    return row is not None


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


@dataclass(frozen=True)
class Block:
    """Consecutive rows of a version in corpus order; texts and metadata only when asked for."""

    ids: list[str]
    positions: list[int]
    matrix: np.ndarray
    texts: list[str | None] | None = None
    metadata: list[Any] | None = None


def iter_ordered(engine: Engine, version_key: str, block: int = 4096) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, matrix) blocks in corpus order, keyset-paged so memory stays bounded."""
    for rows in iter_blocks(engine, version_key, block):
        yield rows.ids, rows.matrix


def iter_blocks(engine: Engine, version_key: str, block: int = 4096, extras: bool = False) -> Iterator[Block]:
    """Blocks of rows in corpus order, keyset-paged so memory stays bounded; with `extras`,
    each row's stored text and metadata too (None where the version keeps none)."""
    with engine.connect() as conn:
        dim = conn.execute(select(versions.c.dim).where(versions.c.key == version_key)).scalar()
        kind = version_kind(conn, version_key)
    if dim is None:
        return
    columns = [vectors.c.position, vectors.c.record_id, embedding_column(kind)]
    if extras:
        columns += [vectors.c.text, vectors.c.metadata]
    last: tuple[int, str] | None = None
    while True:
        query = select(*columns).where(vectors.c.version_key == version_key)
        if last is not None:
            query = query.where(
                (vectors.c.position > last[0]) | and_(vectors.c.position == last[0], vectors.c.record_id > last[1])
            )
        query = query.order_by(vectors.c.position, vectors.c.record_id).limit(block)
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return
        matrix = codec.unpack(b"".join(to_float32(r.embedding, kind) for r in rows), dim)
        yield Block([r.record_id for r in rows], [r.position for r in rows], matrix,
                    [r.text for r in rows] if extras else None, [r.metadata for r in rows] if extras else None)
        last = (rows[-1].position, rows[-1].record_id)


def stores_extras(engine: Engine, version_key: str) -> tuple[bool, bool]:
    """(texts, metadata): whether any row of the version keeps a text, and a metadata value."""
    with engine.connect() as conn:
        def any_row(column: Any) -> bool:
            return conn.execute(select(vectors.c.record_id).where(
                and_(vectors.c.version_key == version_key, column.is_not(None))).limit(1)).first() is not None

        return any_row(vectors.c.text), any_row(vectors.c.metadata)
