"""The fleet bench's helpers that need no worker: the no-op encoder it names, the workers' own
seconds of a job, and its scratch PostgreSQL database."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text, update

from benchmarks.fleet import NOOP, consume_seconds, scratch_postgres
from embedfleet.encode.encoder import NoopEncoder, encoder_class
from embedfleet.settings import Settings
from embedfleet.store.engine import get_engine
from embedfleet.store.schema import chunks, jobs
from tests.conftest import TEST_PG_URL, unavailable
from tests.store.helpers import job_with_chunks


def test_the_pipeline_encoder_is_the_noop_encoder() -> None:
    """The pipeline section's EMBEDFLEET_ENCODER names a class that really exists."""
    assert encoder_class(Settings(encoder=NOOP)) is NoopEncoder


def test_consume_seconds_run_from_the_first_started_chunk_to_the_jobs_end(sqlite_url: str) -> None:
    """The workers' side alone: the job's finish minus the earliest chunk start (not the job's creation)."""
    engine = get_engine(sqlite_url)
    job_id = job_with_chunks(engine, {0: [0], 1: [1], 2: [2]})
    with engine.begin() as conn:
        for seq, started in ((0, 105.0), (1, 101.5), (2, 110.0)):
            conn.execute(update(chunks).where(chunks.c.job_id == job_id, chunks.c.seq == seq)
                         .values(started_at=started))
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(created_at=50.0, finished_at=131.5))
    assert consume_seconds(sqlite_url, job_id) == 30.0


def _exists(name: str) -> bool:
    with psycopg.connect(TEST_PG_URL, autocommit=True, connect_timeout=3) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


@pytest.mark.postgres
def test_scratch_postgres_is_made_and_dropped() -> None:
    """A fresh database on the given server, usable through an engine, dropped afterwards with its engines."""
    try:
        psycopg.connect(TEST_PG_URL, connect_timeout=3).close()
    except psycopg.OperationalError:
        unavailable(f"PostgreSQL at {TEST_PG_URL}")
    with scratch_postgres(TEST_PG_URL.replace("postgresql://", "postgresql+psycopg://")) as url:
        name = url.rsplit("/", 1)[1]
        assert name.startswith("embedfleet_bench_") and _exists(name)
        with get_engine(url).connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0
    assert not _exists(name)
