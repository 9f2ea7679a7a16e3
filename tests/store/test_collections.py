"""Collections and their versions: one model per collection, opening, dropping, cutover, rollback."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from embedfleet.chunks.collect import store_chunk
from embedfleet.store.collections import (
    claim_reindex,
    cutover,
    drop_version,
    get_collection,
    mark_ready,
    new_version,
    open_collection,
    rollback,
    version_rows,
)
from embedfleet.store.engine import get_engine
from embedfleet.store.ledger import LedgerError, abandon_submission, add_chunk, cancel_job, create_job
from embedfleet.store.schema import jobs, versions
from tests.conftest import REPO
from tests.store.helpers import chunk_vectors, job_with_chunks


def test_a_collection_holds_one_model(sqlite_url: str) -> None:
    """Vectors from another model than the collection's are refused."""
    engine = get_engine(sqlite_url)
    job_id = job_with_chunks(engine, {0: [0]})
    with pytest.raises(LedgerError, match="encoded with"):
        store_chunk(engine, chunk_vectors(job_id, 0, [0], model="other"))
    with pytest.raises(LedgerError, match="is on model 'm', not 'other'"):
        open_collection(engine, "c1", "other", {}, {})


@pytest.mark.parametrize("end", ["cancel", "abandon"])
def test_a_version_whose_job_ended_without_finishing_can_be_dropped(db_url: str, end: str) -> None:
    """drop-version accepts a version whose only job was cancelled or abandoned, and still refuses a running one."""
    engine = get_engine(db_url)
    job_with_chunks(engine, {0: [0]})
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


RACE = """
import sys, time
from embedfleet.store.engine import get_engine
from embedfleet.store.collections import open_collection
from embedfleet.store.ledger import create_job
url, name, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
if url.startswith("postgresql"):  # connected first, so that the three INSERTs race
    get_engine(url).connect().close()
time.sleep(max(0.0, start - time.time()))  # SQLite: the fresh file's first connections race too
engine = get_engine(url)
version = open_collection(engine, name, "m", {}, {})
print(create_job(engine, name, version.key, "m", "s", {}, 1, 0))
"""


@pytest.mark.slow
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


def test_cutover_needs_a_complete_newer_version_and_rollback_goes_back_and_forth(db_url: str) -> None:
    """A version still building cannot be cut over to; once ready it can, and rollback swaps current and previous."""
    engine = get_engine(db_url)
    first = open_collection(engine, "docs", "m", {}, {})
    second = new_version(engine, "docs", "m2")
    with pytest.raises(LedgerError, match="no complete version"):
        cutover(engine, "docs")
    with engine.begin() as conn:
        mark_ready(conn, second.key)
    assert cutover(engine, "docs").key == second.key
    assert get_collection(engine, "docs").current_key == second.key
    assert rollback(engine, "docs").key == first.key
    assert get_collection(engine, "docs").current_key == first.key
    assert rollback(engine, "docs").key == second.key


def test_only_a_version_that_is_not_current_can_be_dropped(sqlite_url: str) -> None:
    """Dropping the current version is refused; dropping another deletes its rows and marks it dropped."""
    engine = get_engine(sqlite_url)
    job_id = job_with_chunks(engine, {0: [0, 1, 2]})
    store_chunk(engine, chunk_vectors(job_id, 0, [0, 1, 2]))
    newer = new_version(engine, "c1", "m")
    with engine.begin() as conn:
        mark_ready(conn, newer.key)
    cutover(engine, "c1")
    with pytest.raises(LedgerError, match="is current"):
        drop_version(engine, "c1", newer.version)
    assert version_rows(engine, "c1") == 3
    assert drop_version(engine, "c1", 1) == 3
    assert version_rows(engine, "c1") == 0
    collection = get_collection(engine, "c1")
    assert [v.state for v in collection.versions if v.version == 1] == ["dropped"]
    assert collection.previous_key is None
    with pytest.raises(LedgerError, match="no version 9"):
        drop_version(engine, "c1", 9)


def test_one_reindex_claim_per_gap(sqlite_url: str) -> None:
    """The first claim wins, a second within the gap loses, and an unknown collection never claims."""
    engine = get_engine(sqlite_url)
    open_collection(engine, "docs", "m", {}, {})
    assert claim_reindex(engine, "docs", min_gap_seconds=3600)
    assert not claim_reindex(engine, "docs", min_gap_seconds=3600)
    assert claim_reindex(engine, "docs", min_gap_seconds=-1)
    assert not claim_reindex(engine, "nope", min_gap_seconds=3600)


def test_collections_are_listed_with_their_versions_and_rows(db_url: str) -> None:
    """Every collection by name; each version with its stored rows; the current one's model, dim and rows on top."""
    from embedfleet.store.collections import list_collections

    engine = get_engine(db_url)
    assert list_collections(engine) == []
    job_id = job_with_chunks(engine, {0: [0, 1, 2]})
    store_chunk(engine, chunk_vectors(job_id, 0, [0, 1, 2]))
    new_version(engine, "c1", "other-model")
    open_collection(engine, "b0", "m", {}, {})
    listed = [c.as_dict() for c in list_collections(engine)]
    assert [c["name"] for c in listed] == ["b0", "c1"]
    c1 = listed[1]
    assert (c1["current_version"], c1["model"], c1["dim"], c1["rows"]) == (1, "m", 4, 3)
    assert [(v["version"], v["rows"], v["model"], v["role"]) for v in c1["versions"]] == [
        (1, 3, "m", "current"), (2, 0, "other-model", "")]
    assert listed[0]["rows"] == 0 and listed[0]["dim"] is None


def test_delete_collection_removes_its_rows_versions_and_jobs(db_url: str) -> None:
    """Refused while a job runs; then one transaction deletes every version's vectors, the versions, the jobs'
    chunks and dead letters, the jobs and the registry entry, and leaves other collections alone."""
    from sqlalchemy import func

    from embedfleet.store.collections import delete_collection
    from embedfleet.store.schema import chunks, collections, vectors

    engine = get_engine(db_url)
    job_id = job_with_chunks(engine, {0: [0, 1], 1: [2]})
    store_chunk(engine, chunk_vectors(job_id, 0, [0, 1]))  # chunk 1 still open: the job runs
    new_version(engine, "c1", "m2")
    open_collection(engine, "keep", "m", {}, {})
    with pytest.raises(LedgerError, match=f"job {job_id} on collection 'c1' has not ended"):
        delete_collection(engine, "c1")
    cancel_job(engine, job_id)
    deleted = delete_collection(engine, "c1")
    assert (deleted.versions, deleted.vectors, deleted.jobs) == (2, 2, 1)
    with engine.connect() as conn:
        left = {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (collections, versions, jobs, chunks, vectors)}
    assert left == {"collections": 1, "versions": 1, "jobs": 0, "chunks": 0, "vectors": 0}
    with pytest.raises(LedgerError, match="no collection 'c1'"):
        delete_collection(engine, "c1")
