"""Ending a job by hand, versions of ended jobs, names that collide with version keys, and
concurrent first submits: on SQLite and on real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select, update

from embedfleet.storage.collections import (
    drop_version,
    get_collection,
    new_version,
    open_collection,
)
from embedfleet.storage.engine import get_engine
from embedfleet.storage.ledger import (
    LedgerError,
    abandon_submission,
    add_chunk,
    cancel_job,
    check_collection_name,
    close_submission,
    create_job,
    finish_if_complete,
    start_delivery,
)
from embedfleet.storage.jobs import job_stats
from embedfleet.storage.schema import chunks, jobs, vectors, versions
from embedfleet.storage.vectors import store_chunk
from tests.conftest import REPO
from tests.storage.test_vectors import _chunk, _job


def _rows(engine, key: str = "c1") -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(vectors).where(vectors.c.version_key == key)).scalar_one()


def test_cancel_skips_queued_chunks_and_drops_chunks_in_flight(db_url: str) -> None:
    """After cancel: a queued chunk is not started, a chunk encoded meanwhile is not stored, the job stays cancelled."""
    engine = get_engine(db_url)
    job_id = _job(engine, {0: [0, 1], 1: [2, 3], 2: [4, 5]})
    assert store_chunk(engine, _chunk(job_id, 0, [0, 1])) == 2
    assert start_delivery(engine, job_id, 1) == 1  # chunk 1 is being encoded when the job is cancelled
    assert cancel_job(engine, job_id) == 2
    assert start_delivery(engine, job_id, 2) is None  # its message arrives later: skipped
    assert store_chunk(engine, _chunk(job_id, 1, [2, 3])) is None  # the in-flight chunk reaches the collector
    finish_if_complete(engine, job_id)
    stats = job_stats(engine, job_id)
    assert (stats.state, stats.stored, _rows(engine)) == ("cancelled", 2, 2)
    assert stats.eta_seconds is None and stats.finished_at is not None
    with pytest.raises(LedgerError, match="cancelled"):
        cancel_job(engine, job_id)
    with pytest.raises(LedgerError, match="no job"):
        cancel_job(engine, "nope")


def test_a_job_cancelled_while_submitting_stays_cancelled(sqlite_url: str) -> None:
    """close_submission after a cancel does not bring the job back to running."""
    engine = get_engine(sqlite_url)
    version = open_collection(engine, "c1", "m", {}, {})
    job_id = create_job(engine, "c1", version.key, "m", "test", {}, records_read=2, skipped_invalid=0)
    add_chunk(engine, job_id, 0, 2, b"payload")
    cancel_job(engine, job_id)
    close_submission(engine, job_id, chunks_total=1, truncated=0)
    assert job_stats(engine, job_id).state == "cancelled"


@pytest.mark.parametrize("end", ["cancel", "abandon"])
def test_a_version_whose_job_ended_without_finishing_can_be_dropped(db_url: str, end: str) -> None:
    """drop-version accepts a version whose only job was cancelled or abandoned, and still refuses a running one."""
    engine = get_engine(db_url)
    _job(engine, {0: [0]})
    v2 = new_version(engine, "c1", "m")
    job_id = create_job(engine, "c1", v2.key, "m", "test", {}, records_read=1, skipped_invalid=0)
    add_chunk(engine, job_id, 0, 1, b"payload")
    with pytest.raises(LedgerError, match="still writing"):
        drop_version(engine, "c1", 2)
    if end == "cancel":
        cancel_job(engine, job_id)
    else:
        assert abandon_submission(engine, job_id)
    assert drop_version(engine, "c1", 2) == 0
    assert [v.state for v in get_collection(engine, "c1").versions] == ["building", "dropped"]


def test_a_stalled_job_has_no_eta(sqlite_url: str) -> None:
    """A running job with stored records but no chunk activity for the lease is stalled: no ETA."""
    engine = get_engine(sqlite_url)
    job_id = _job(engine, {0: [0, 1], 1: [2, 3]})
    store_chunk(engine, _chunk(job_id, 0, [0, 1]))
    assert job_stats(engine, job_id, lease_seconds=60).eta_seconds is not None
    with engine.begin() as conn:
        conn.execute(update(chunks).where(chunks.c.job_id == job_id).values(sent_at=1.0, done_at=2.0))
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(created_at=time.time() - 3600))
    stats = job_stats(engine, job_id, lease_seconds=60)
    assert stats.stalled and stats.eta_seconds is None and stats.as_dict()["eta_seconds"] is None
    assert not job_stats(engine, job_id).stalled  # without a lease nothing is judged


@pytest.mark.parametrize("name", ["c7\n", "c7__v2", "a__b", "c7__", "7c", ""])
def test_names_that_collide_with_version_keys_or_end_in_newline_are_refused(name: str) -> None:
    """Names match whole (no trailing newline) and may not contain '__', the version key separator."""
    with pytest.raises(LedgerError, match="invalid collection name"):
        check_collection_name(name)
    assert check_collection_name("c7_v2-x") == "c7_v2-x"


RACE = """
import sys, time
from embedfleet.storage.engine import get_engine
from embedfleet.storage.collections import open_collection
from embedfleet.storage.ledger import create_job
url, name, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
if url.startswith("postgresql"):  # connected first, so that the three INSERTs race
    get_engine(url).connect().close()
time.sleep(max(0.0, start - time.time()))  # SQLite: the fresh file's first connections race too
engine = get_engine(url)
version = open_collection(engine, name, "m", {}, {})
print(create_job(engine, name, version.key, "m", "s", {}, 1, 0))
"""


def test_concurrent_first_opens_of_a_new_collection_share_one_version(db_url: str, tmp_path) -> None:
    """Three processes open a new collection (on a fresh file for SQLite) at the same instant, three times: all succeed, one version."""
    for attempt in range(3):
        url = db_url if db_url.startswith("postgresql") else f"sqlite:///{tmp_path}/race{attempt}.db"
        name = f"race{attempt}"
        start = time.time() + 2.0
        procs = [subprocess.Popen([sys.executable, "-c", RACE, url, name, str(start)], cwd=REPO,
                                  env={"PYTHONPATH": str(REPO)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in results]
        engine = get_engine(url)
        with engine.connect() as conn:
            assert conn.execute(select(versions.c.key).where(versions.c.collection == name)).scalars().all() == [name]
            assert conn.execute(select(jobs.c.version_key).where(jobs.c.collection == name)).scalars().all() == [name] * 3
