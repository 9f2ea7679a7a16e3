"""The SQL schema on SQLite and PostgreSQL: created idempotently, with the indexes and keys the
hot queries rely on, and column types that hold what the pipeline writes."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, insert, inspect, select

from embedfleet.store.engine import _build, get_engine, normalise_url
from embedfleet.store.schema import jobs, metadata, vectors

TABLES = {"collections", "versions", "jobs", "chunks", "vectors", "dead_letters", "workers"}

# Index name -> the columns, in order, that the queries named in its comment filter on.
HOT_INDEXES = {
    "chunks": {"ix_chunks_job_state": ["job_id", "state"],            # open chunks of a job, job progress
               "ix_chunks_holder_state": ["holder", "state"]},        # a dead node's open chunks
    "vectors": {"ix_vectors_version_position": ["version_key", "position"],  # ordered reads, export
                "ix_vectors_version_hash": ["version_key", "content_hash"]},  # repeats copied by hash
    "dead_letters": {"ix_dead_letters_open": ["version_key", "resolved_at", "record_id"]},
}


@pytest.fixture
def engine(db_url: str):
    return get_engine(db_url)


def test_every_table_is_created(engine) -> None:
    """The first engine on an empty database creates every table of the schema."""
    assert set(inspect(engine).get_table_names()) >= TABLES == set(metadata.tables)


def test_the_indexes_hot_queries_rely_on_exist(engine) -> None:
    """Each index the collector, the sweep and the readers rely on exists, on its columns in order."""
    inspector = inspect(engine)
    for table, expected in HOT_INDEXES.items():
        found = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes(table)}
        for name, columns in expected.items():
            assert found.get(name) == columns, (table, name, found)
    lookup = {tuple(ix["column_names"]) for t in ("versions", "dead_letters") for ix in inspector.get_indexes(t)}
    assert ("collection",) in lookup and ("job_id",) in lookup


def test_primary_keys_make_upserts_and_chunk_rows_unique(engine) -> None:
    """One vector per (version, record) and one ledger row per (job, seq): the upserts and the
    idempotent re-delivery depend on these keys."""
    inspector = inspect(engine)
    assert inspector.get_pk_constraint("vectors")["constrained_columns"] == ["version_key", "record_id"]
    assert inspector.get_pk_constraint("chunks")["constrained_columns"] == ["job_id", "seq"]
    assert inspector.get_pk_constraint("workers")["constrained_columns"] == ["incarnation"]


def test_creating_the_schema_again_changes_nothing(db_url: str) -> None:
    """A second engine on the same database (another worker starting) creates nothing twice and
    loses no row."""
    first = get_engine(db_url)
    with first.begin() as conn:
        conn.execute(insert(vectors).values(version_key="c", record_id="r", position=0, content_hash="h",
                                            model="m", embedding=b"\0" * 4, updated_at=1.0))
    again = _build(db_url)
    try:
        metadata.create_all(again)
        with again.connect() as conn:
            assert conn.execute(select(vectors.c.record_id)).scalars().all() == ["r"]
        assert {ix["name"] for ix in inspect(again).get_indexes("chunks")} >= set(HOT_INDEXES["chunks"])
    finally:
        again.dispose()


def test_columns_hold_what_the_pipeline_writes(engine) -> None:
    """Positions past 2**31 (huge corpora), raw float32 bytes as written, and times in float
    seconds to the millisecond (rates and ETAs are subtraction)."""
    blob = bytes(range(256)) * 6
    now = time.time()
    with engine.begin() as conn:
        conn.execute(insert(vectors).values(version_key="c", record_id="r" * 512, position=2**40,
                                            content_hash="h" * 64, model="m" * 512, embedding=blob,
                                            updated_at=now))
    with engine.connect() as conn:
        row = conn.execute(select(vectors)).one()
    assert row.position == 2**40 and bytes(row.embedding) == blob and len(row.record_id) == 512
    assert abs(row.updated_at - now) < 1e-3


def test_jobs_start_with_zeroed_counters(engine) -> None:
    """A job row written with only its identity gets 0 for every counter and {} options."""
    from embedfleet.store.collections import open_collection

    version = open_collection(engine, "c", "m", {}, {})
    with engine.begin() as conn:
        conn.execute(insert(jobs).values(id="j", collection="c", version_key=version.key, model="m",
                                         state="submitting", created_at=1.0))
    with engine.connect() as conn:
        row = conn.execute(select(jobs)).one()
    counters = ("records_read", "skipped_invalid", "truncated", "added", "updated", "unchanged", "deleted",
                "deduplicated", "chunks_total", "retries", "giveups", "resends")
    assert {name: getattr(row, name) for name in counters} == dict.fromkeys(counters, 0)
    assert row.options == {} and row.source == ""


def test_sqlite_schema_matches_the_metadata_exactly(sqlite_url: str) -> None:
    """Every column of the metadata is in the SQLite tables (a raw engine sees what the code sees)."""
    get_engine(sqlite_url)
    raw = create_engine(normalise_url(sqlite_url))
    try:
        inspector = inspect(raw)
        for table in metadata.sorted_tables:
            assert {c["name"] for c in inspector.get_columns(table.name)} == set(table.columns.keys())
    finally:
        raw.dispose()
