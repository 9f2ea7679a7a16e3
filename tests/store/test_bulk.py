"""Bulk upserts per dialect and row-by-row isolation of refused rows."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select

from embedfleet.chunks.collect import store_chunk
from embedfleet.jobs.stats import job_stats
from embedfleet.store.bulk import upsert_isolating, upsert_rows
from embedfleet.store.engine import get_engine
from embedfleet.store.schema import dead_letters, vectors
from tests.store.helpers import one_chunk_job, refuse_ids_starting_bad, stored_ids


def test_upsert_isolating_stores_good_rows_and_returns_each_refused_row(sqlite_url):
    """Bisection with savepoints: every good row is stored, each refused row comes back with its error."""
    engine = get_engine(sqlite_url)
    refuse_ids_starting_bad(engine)
    ids = ["a", "bad1", "b", "c", "d", "bad2", "e", "f", "g"]
    rows = [("c1", i, n, "h", "m", b"\0" * 4, 0.0, None, None) for n, i in enumerate(ids)]
    with engine.begin() as conn:
        with pytest.raises(sa_exc.IntegrityError), conn.begin_nested():
            upsert_rows(conn, rows)
        rejected = upsert_isolating(conn, rows)
    assert [(i, type(e).__name__) for i, e in rejected] == [(1, "IntegrityError"), (5, "IntegrityError")]
    assert stored_ids(engine) == ["a", "b", "c", "d", "e", "f", "g"]


def test_postgres_failed_transaction_does_not_lose_the_staging_table(pg_url):
    """After a transaction that created the COPY staging table rolls back, the next chunk on the same
    connection stores everything (it used to fail with UndefinedTable: vectors_in)."""
    engine = get_engine(pg_url)
    with pytest.raises(RuntimeError), engine.begin() as conn:  # noqa: PT012  (the rollback is the point)
        upsert_rows(conn, [("c0", "a", 0, "h", "m", b"\0" * 16, 0.0, None, None)])
        raise RuntimeError("the collector's transaction fails after the upsert")
    job_id, chunk = one_chunk_job(engine, [f"r{i}" for i in range(195)])
    assert store_chunk(engine, chunk) == 195
    stats = job_stats(engine, job_id)
    assert (stats.state, stats.stored, stats.dead) == ("done", 195, 0)
    with engine.connect() as conn:
        assert conn.execute(select(dead_letters.c.id)).all() == []


def test_upserting_a_record_again_replaces_its_row(db_url: str) -> None:
    """Rows are keyed by (version, record id): a second write of a record updates it in place, on both dialects."""
    engine = get_engine(db_url)
    with engine.begin() as conn:
        upsert_rows(conn, [("c1", "a", 0, "h1", "m", b"\1" * 16, 1.0, None, None),
                           ("c1", "b", 1, "h1", "m", b"\1" * 16, 1.0, None, None)])
    with engine.begin() as conn:
        upsert_rows(conn, [("c1", "a", 5, "h2", "m", b"\2" * 16, 2.0, None, None)])
    with engine.connect() as conn:
        rows = conn.execute(select(vectors.c.record_id, vectors.c.position, vectors.c.content_hash)
                            .order_by(vectors.c.record_id)).all()
    assert [tuple(r) for r in rows] == [("a", 5, "h2"), ("b", 1, "h1")]
