"""pgvector: a version's vectors in a real `vector(d)` or `halfvec(d)` column where the
PostgreSQL server has the extension, so applications can query them with SQL, with an HNSW
index (cosine) per version.

The one `vectors` table keeps every version; where a version is stored as `vector` its rows
fill the `vec` column (`hvec` for `halfvec`) and leave `embedding` (float32 bytes) NULL, so
a vector is stored once. The columns are untyped (any dimension); the per-version index and
queries cast to the version's dimension (pgvector's expression index, partial on the
version key). Everything that reads vectors back (export, search, copies of repeated texts)
goes through `embedding_column` and `to_float32`, so callers see float32 bytes either way.

Without the extension (SQLite, or a server without it) versions are stored as `bytea`, and
`status --collection` says so.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, literal_column, select, text, update
from sqlalchemy.exc import DBAPIError

from ..errors import LedgerError
from ..safe_errors import reason
from .schema import vectors, versions

log = logging.getLogger(__name__)

BYTEA, VECTOR, HALFVEC = "bytea", "vector", "halfvec"
KINDS = (BYTEA, VECTOR, HALFVEC)
AUTO = "auto"
# The column each kind fills, and the operator class of its cosine index.
COLUMN = {BYTEA: "embedding", VECTOR: "vec", HALFVEC: "hvec"}
OPCLASS = {VECTOR: "vector_cosine_ops", HALFVEC: "halfvec_cosine_ops"}
# pgvector's HNSW indexes hold at most this many dimensions per type.
INDEX_MAX_DIM = {VECTOR: 2000, HALFVEC: 4000}
# How each kind's binary send format stores a value (after a 4-byte header: dim, unused).
_SEND_DTYPE: dict[str, np.dtype[Any]] = {VECTOR: np.dtype(">f4"), HALFVEC: np.dtype(">f2")}


def extension_available(conn: Connection) -> bool:
    """The server has pgvector installed, or can install it (CREATE EXTENSION)."""
    if conn.dialect.name != "postgresql":
        return False
    return conn.execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first() is not None


def check_vector_type(conn: Connection, wanted: str) -> None:
    """Refuse, before a job loads its model, a vector type this database cannot store (what
    choose_kind would refuse when it makes the version), without changing anything."""
    if wanted not in (AUTO, *KINDS):
        raise LedgerError(f"unknown vector type {wanted!r}: use auto, vector, halfvec or bytea")
    if wanted not in (AUTO, BYTEA) and not extension_available(conn):
        where = "SQLite" if conn.dialect.name == "sqlite" else "this PostgreSQL server"
        raise LedgerError(f"--vector-type {wanted} needs the pgvector extension, which {where} does not have "
                          "(use --vector-type auto or bytea)")


def choose_kind(conn: Connection, wanted: str) -> tuple[str, str]:
    """(kind, why) for a new version: `auto` takes `vector` where the extension can be had,
    `bytea` where it cannot; asking for vector or halfvec without it is an error."""
    if wanted not in (AUTO, *KINDS):
        raise LedgerError(f"unknown vector type {wanted!r}: use auto, vector, halfvec or bytea")
    if wanted == BYTEA:
        return BYTEA, "bytea: asked for"
    if not extension_available(conn):
        where = "SQLite" if conn.dialect.name == "sqlite" else "this PostgreSQL server"
        if wanted != AUTO:
            raise LedgerError(f"--vector-type {wanted} needs the pgvector extension, which {where} does not have "
                              "(use --vector-type auto or bytea)")
        return BYTEA, f"bytea: {where} has no pgvector extension"
    try:
        with conn.begin_nested():  # a failure here must not abort the caller's transaction
            _ensure_columns(conn)
    except DBAPIError as exc:
        # Installed on the server but not enabled, and this role may not enable it.
        if wanted != AUTO:
            raise LedgerError(f"--vector-type {wanted}: pgvector could not be enabled: {reason(exc)}") from None
        log.warning("pgvector is available but could not be enabled (%s): storing bytea", reason(exc))
        return BYTEA, f"bytea: pgvector could not be enabled ({reason(exc)})"
    kind = VECTOR if wanted == AUTO else wanted
    return kind, f"{kind}: pgvector {extension_version(conn)}"


def extension_version(conn: Connection) -> str | None:
    if conn.dialect.name != "postgresql":
        return None
    return conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()


def _ensure_columns(conn: Connection) -> None:
    """The extension and the vectors table's `vec`/`hvec` columns (untyped: any dimension).
    Serialised with the schema's own advisory lock: several producers may open versions at once."""
    have = set(conn.execute(text(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'vectors' "
        "AND table_schema = current_schema() AND column_name IN ('vec', 'hvec')")).scalars())
    if have == {"vec", "hvec"}:
        return  # the usual case: ALTER TABLE would take the table's exclusive lock for nothing
    conn.execute(text("SELECT pg_advisory_xact_lock(724183)"))
    conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    conn.execute(text("ALTER TABLE vectors ADD COLUMN IF NOT EXISTS vec vector"))
    conn.execute(text("ALTER TABLE vectors ADD COLUMN IF NOT EXISTS hvec halfvec"))
    conn.execute(text("ALTER TABLE vectors ALTER COLUMN embedding DROP NOT NULL"))


def describe(conn: Connection, kind: str, index_seconds: float | None) -> str:
    """How a version stores its vectors, in words, for `status --collection`: the kind, and
    for bytea why (no pgvector where it is), for pgvector kinds whether the index is built."""
    if kind == BYTEA:
        if conn.dialect.name == "sqlite":
            return "bytea (float32 bytes: SQLite has no pgvector)"
        if not extension_available(conn):
            return "bytea (float32 bytes: this PostgreSQL server has no pgvector extension)"
        return "bytea (float32 bytes, as asked; pgvector is available)"
    index = "HNSW index not built yet" if index_seconds is None else f"HNSW index built in {index_seconds:.1f} s"
    return f"{kind} (pgvector, {index})"


def version_kind(conn: Connection, version_key: str) -> str:
    kind = conn.execute(select(versions.c.storage).where(versions.c.key == version_key)).scalar()
    return kind or BYTEA  # a version made before pgvector support: bytea


def embedding_column(kind: str) -> Any:
    """What to select for a version's vectors: bytes that `to_float32` reads, whatever the kind."""
    if kind == BYTEA:
        return vectors.c.embedding
    return literal_column(f"{kind}_send({COLUMN[kind]})").label("embedding")


def to_float32(blob: bytes, kind: str) -> bytes:
    """One selected vector as float32 little-endian bytes (what crossed the broker)."""
    if kind == BYTEA:
        return bytes(blob)
    return np.frombuffer(blob, dtype=_SEND_DTYPE[kind], offset=4).astype("<f4").tobytes()


def send_format(blob: bytes, kind: str, dim: int) -> bytes:
    """float32 little-endian bytes as pgvector's binary format for COPY (FORMAT BINARY)."""
    values = np.frombuffer(blob, dtype="<f4").astype(_SEND_DTYPE[kind])
    return dim.to_bytes(2, "big") + b"\x00\x00" + values.tobytes()


def index_name(version_key: str) -> str:
    """Index names are at most 63 bytes; version keys up to 80: a digest keeps them unique."""
    return f"vectors_hnsw_{hashlib.sha1(version_key.encode()).hexdigest()[:20]}"


def _literal(version_key: str) -> str:
    # Version keys are checked names (letters, digits, _ and -); quoted anyway. A literal,
    # not a parameter: the partial index is used only when the planner sees the key.
    return "'" + version_key.replace("'", "''") + "'"


def build_index(engine: Engine, version_key: str) -> float | None:
    """The version's HNSW cosine index, built once its bulk load is done (building while
    loading is slow); returns the build's seconds, recorded on the version, or None when
    there was nothing to build (bytea, no dim yet, already built, or too many dimensions).

    CREATE INDEX CONCURRENTLY: collectors of other versions keep writing while it builds.
    An interrupted build leaves an INVALID index, which the next call drops and rebuilds."""
    with engine.connect() as conn:
        row = conn.execute(select(versions.c.storage, versions.c.dim, versions.c.index_seconds)
                           .where(versions.c.key == version_key)).first()
    if row is None or row.storage not in OPCLASS or row.dim is None or row.index_seconds is not None:
        return None
    if row.dim > INDEX_MAX_DIM[row.storage]:
        log.warning("version %s: %s(%d) is too wide for an HNSW index (at most %d); search scans it",
                    version_key, row.storage, row.dim, INDEX_MAX_DIM[row.storage])
        return None
    name = index_name(version_key)
    # One build per version at a time (a job's finish and a retry may both ask): a session
    # lock, so two CONCURRENTLY builds never meet on one name.
    lock = int.from_bytes(hashlib.sha1(version_key.encode()).digest()[:8], "big", signed=True)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock}).scalar():
            log.info("version %s: its index is being built by another process", version_key)
            return None
        try:
            if conn.execute(select(versions.c.index_seconds).where(versions.c.key == version_key)).scalar():
                return None  # built while this call waited for its turn
            started = time.perf_counter()
            invalid = conn.execute(text(
                "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = :name AND NOT i.indisvalid"), {"name": name}).first()
            if invalid:
                conn.execute(text(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"'))
            kind, column = row.storage, COLUMN[row.storage]
            conn.execute(text(
                f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON vectors USING hnsw '
                f"(({column}::{kind}({row.dim})) {OPCLASS[kind]}) WHERE version_key = {_literal(version_key)}"))
            # Fresh statistics after the bulk load, or the planner, still counting the rows
            # of an empty table, sorts a scan instead of walking the index.
            conn.execute(text("ANALYZE vectors"))
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock})
    seconds = time.perf_counter() - started
    with engine.begin() as conn:
        conn.execute(update(versions).where(versions.c.key == version_key).values(index_seconds=seconds))
    log.info("version %s: HNSW index built in %.1f s", version_key, seconds)
    return seconds


def drop_index(conn: Connection, version_key: str) -> None:
    """A dropped or deleted version's HNSW index goes with its rows (a partial index on a
    version key nobody writes would only cost space). A brief exclusive lock on the table."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f'DROP INDEX IF EXISTS "{index_name(version_key)}"'))


def nearest(conn: Connection, version_key: str, kind: str, dim: int, query: np.ndarray, k: int,
            ef_search: int) -> list[tuple[str, float]]:
    """The k nearest stored vectors by cosine, in SQL (`<=>`, through the version's HNSW
    index once built): (record id, cosine similarity), best first."""
    column = f"{COLUMN[kind]}::{kind}({dim})"
    literal = "[" + ",".join(repr(float(x)) for x in query) + "]"
    # SET LOCAL: a wider candidate list than pgvector's default 40, for recall; this transaction only.
    conn.execute(text(f"SET LOCAL hnsw.ef_search = {max(int(ef_search), k)}"))
    rows = conn.execute(text(
        f"SELECT record_id, 1 - ({column} <=> CAST(:q AS {kind}({dim}))) AS score FROM vectors "
        f"WHERE version_key = {_literal(version_key)} AND {COLUMN[kind]} IS NOT NULL "
        f"ORDER BY {column} <=> CAST(:q AS {kind}({dim})) LIMIT :k"), {"q": literal, "k": k}).all()
    return [(row.record_id, float(row.score)) for row in rows]


def storage_bytes(conn: Connection, version_key: str, kind: str) -> int:
    """Bytes the version's vectors take in their column (pg_column_size, summed)."""
    column = COLUMN[kind]
    return int(conn.execute(text(
        f"SELECT COALESCE(SUM(pg_column_size({column})), 0) FROM vectors WHERE version_key = :k"),
        {"k": version_key}).scalar_one())
