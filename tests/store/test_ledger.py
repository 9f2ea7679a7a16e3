"""The job and chunk ledger: creating, ending, cancelling, stalls, names, statistics."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select, update

from embedfleet.chunks.collect import store_chunk
from embedfleet.jobs.stats import job_stats
from embedfleet.store.collections import open_collection
from embedfleet.store.engine import get_engine
from embedfleet.store.ledger import (
    LedgerError,
    add_chunk,
    cancel_job,
    close_submission,
    count_retry,
    create_job,
    finish_if_complete,
    job_state,
    mark_resent,
    open_chunk_count,
    open_chunk_payloads,
    start_delivery,
)
from embedfleet.store.schema import chunks, jobs
from tests.store.helpers import chunk_vectors, job_with_chunks, rows_in


def test_stalled_jobs_are_found_after_their_lease(db_url: str) -> None:
    """A running job whose open chunks show no sign of life for the lease is stalled; a busy one is not."""
    from sqlalchemy import update as sql_update

    from embedfleet.store.ledger import stalled_jobs
    from embedfleet.store.schema import chunks

    engine = get_engine(db_url)
    quiet = job_with_chunks(engine, {0: [0], 1: [1]})
    busy = job_with_chunks(engine, {0: [0]})
    with engine.begin() as conn:
        conn.execute(sql_update(chunks).where(chunks.c.job_id == quiet).values(sent_at=1.0))
    store_chunk(engine, chunk_vectors(quiet, 0, [0]))  # done long ago, by its clock
    with engine.begin() as conn:
        conn.execute(sql_update(chunks).where(chunks.c.job_id == quiet).values(done_at=2.0))
    assert stalled_jobs(engine, lease_seconds=60) == [quiet]
    assert stalled_jobs(engine, lease_seconds=10**10) == []
    assert busy not in stalled_jobs(engine, lease_seconds=60)


def test_a_submission_whose_producer_died_is_abandoned(sqlite_url: str) -> None:
    """A job left `submitting` with no sign of life past the lease becomes `abandoned`; waiting on it stops."""
    from sqlalchemy import update as sql_update

    from embedfleet.jobs.follow import JobProgress
    from embedfleet.store.ledger import abandon_stalled_submissions
    from embedfleet.store.schema import chunks

    engine = get_engine(sqlite_url)
    version = open_collection(engine, "c1", "m", {}, {})
    job_id = create_job(engine, "c1", version.key, "m", "test", {}, records_read=10, skipped_invalid=0)
    add_chunk(engine, job_id, 0, 5, b"payload")  # the producer died before close_submission
    assert abandon_stalled_submissions(engine, lease_seconds=60) == []
    with engine.begin() as conn:
        conn.execute(sql_update(chunks).where(chunks.c.job_id == job_id).values(sent_at=1.0))
    assert abandon_stalled_submissions(engine, lease_seconds=60) == [job_id]
    assert job_stats(engine, job_id).state == "abandoned"
    with pytest.raises(LedgerError, match="abandoned"), JobProgress(engine, job_id) as progress:
        progress.wait_done(timeout=5)


def test_a_producer_still_reading_records_is_not_abandoned(sqlite_url: str, monkeypatch) -> None:
    """A producer that sends nothing for longer than the lease (a long run of unchanged records)
    but keeps touching its job stays `submitting`; once it stops touching, it is abandoned."""
    from sqlalchemy import update as sql_update

    from embedfleet.corpus.records import Record
    from embedfleet.jobs import submit as submit_module
    from embedfleet.store.ledger import abandon_stalled_submissions, touch_submission

    engine = get_engine(sqlite_url)
    version = open_collection(engine, "c1", "m", {}, {})
    job_id = create_job(engine, "c1", version.key, "m", "test", {}, records_read=10, skipped_invalid=0)
    add_chunk(engine, job_id, 0, 5, b"payload")
    with engine.begin() as conn:  # its last chunk was sent long ago
        conn.execute(sql_update(chunks).where(chunks.c.job_id == job_id).values(sent_at=1.0))
    # The producer reads records (here: unchanged ones, so nothing is sent) and beats as it goes.
    monkeypatch.setattr(submit_module, "PRODUCER_BEAT_SECONDS", 0.0)
    records = [Record(f"r{i}", i, "text", "h", i + 1) for i in range(3)]
    assert list(submit_module._keep_alive(engine, job_id, iter(records))) == records
    assert abandon_stalled_submissions(engine, lease_seconds=60) == []
    touch_submission(engine, job_id)
    assert not job_stats(engine, job_id, lease_seconds=60).stalled
    with engine.begin() as conn:  # then it died: its last sign of life ages past the lease
        conn.execute(sql_update(jobs).where(jobs.c.id == job_id).values(producer_seen_at=2.0))
    assert abandon_stalled_submissions(engine, lease_seconds=60) == [job_id]


def test_cancel_skips_queued_chunks_and_drops_chunks_in_flight(db_url: str) -> None:
    """After cancel: a queued chunk is not started, a chunk encoded meanwhile is not stored, the job stays cancelled."""
    engine = get_engine(db_url)
    job_id = job_with_chunks(engine, {0: [0, 1], 1: [2, 3], 2: [4, 5]})
    assert store_chunk(engine, chunk_vectors(job_id, 0, [0, 1])) == 2
    assert start_delivery(engine, job_id, 1) == 1  # chunk 1 is being encoded when the job is cancelled
    assert cancel_job(engine, job_id) == 2
    assert start_delivery(engine, job_id, 2) is None  # its message arrives later: skipped
    assert store_chunk(engine, chunk_vectors(job_id, 1, [2, 3])) is None  # the in-flight chunk reaches the collector
    finish_if_complete(engine, job_id)
    stats = job_stats(engine, job_id)
    assert (stats.state, stats.stored, rows_in(engine)) == ("cancelled", 2, 2)
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


def test_a_cancelled_job_gets_no_new_chunk(db_url: str) -> None:
    """add_chunk writes the row (payload and all) while the job is submitting, and nothing once it is cancelled:
    the producer learns it from the same statement."""
    engine = get_engine(db_url)
    version = open_collection(engine, "c1", "m", {}, {})
    job_id = create_job(engine, "c1", version.key, "m", "test", {}, records_read=4, skipped_invalid=0)
    assert add_chunk(engine, job_id, 0, 2, b"\x00payload\xff") is True
    assert open_chunk_payloads(engine, job_id) == [(0, b"\x00payload\xff")]
    cancel_job(engine, job_id)
    assert add_chunk(engine, job_id, 1, 2, b"more") is False
    assert add_chunk(engine, "no-such-job", 0, 2, b"x") is False
    with engine.connect() as conn:
        rows = conn.execute(select(chunks.c.seq, chunks.c.state).where(chunks.c.job_id == job_id)).all()
    assert [tuple(r) for r in rows] == [(0, "cancelled")]


def test_a_stalled_job_has_no_eta(sqlite_url: str) -> None:
    """A running job with stored records but no chunk activity for the lease is stalled: no ETA."""
    engine = get_engine(sqlite_url)
    job_id = job_with_chunks(engine, {0: [0, 1], 1: [2, 3]})
    store_chunk(engine, chunk_vectors(job_id, 0, [0, 1]))
    assert job_stats(engine, job_id, lease_seconds=60).eta_seconds is not None
    with engine.begin() as conn:
        conn.execute(update(chunks).where(chunks.c.job_id == job_id).values(sent_at=1.0, done_at=2.0))
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(created_at=time.time() - 3600))
    stats = job_stats(engine, job_id, lease_seconds=60)
    assert stats.stalled and stats.eta_seconds is None and stats.as_dict()["eta_seconds"] is None
    assert not job_stats(engine, job_id).stalled  # without a lease nothing is judged


def test_each_delivery_of_an_open_chunk_is_counted_until_it_is_done(db_url: str) -> None:
    """start_delivery counts 1, 2, ... while the chunk is open, and answers None once it is stored."""
    engine = get_engine(db_url)
    job_id = job_with_chunks(engine, {0: [0, 1], 1: [2]})
    assert start_delivery(engine, job_id, 0, holder="w1") == 1
    assert start_delivery(engine, job_id, 0) == 2
    store_chunk(engine, chunk_vectors(job_id, 0, [0, 1]))
    assert start_delivery(engine, job_id, 0) is None
    assert open_chunk_count(engine, job_id) == 1


def test_open_chunks_are_there_to_resend_in_seq_order(sqlite_url: str) -> None:
    """resume reads the messages of the chunks not done, by seq; re-sending counts on the job."""
    engine = get_engine(sqlite_url)
    job_id = job_with_chunks(engine, {0: [0], 1: [1], 2: [2]})
    store_chunk(engine, chunk_vectors(job_id, 1, [1]))
    assert open_chunk_payloads(engine, job_id) == [(0, b"payload"), (2, b"payload")]
    mark_resent(engine, job_id, [0, 2])
    mark_resent(engine, job_id, [])
    assert job_stats(engine, job_id).resends == 2
    with pytest.raises(LedgerError, match="no job"):
        open_chunk_payloads(engine, "nope")


def test_retries_are_counted_on_the_job(sqlite_url: str) -> None:
    """Each count_retry adds one to the job's retries."""
    engine = get_engine(sqlite_url)
    job_id = job_with_chunks(engine, {0: [0]})
    count_retry(engine, job_id)
    count_retry(engine, job_id)
    assert job_stats(engine, job_id).retries == 2


def test_a_job_finishes_only_when_submitted_and_every_chunk_is_done(sqlite_url: str) -> None:
    """A job still submitting does not finish though its chunks are done; close_submission finishes it."""
    engine = get_engine(sqlite_url)
    version = open_collection(engine, "c1", "m", {}, {})
    job_id = create_job(engine, "c1", version.key, "m", "test", {}, records_read=1, skipped_invalid=0)
    add_chunk(engine, job_id, 0, 1, b"payload")
    store_chunk(engine, chunk_vectors(job_id, 0, [0]))
    assert job_state(engine, job_id) == "submitting"
    close_submission(engine, job_id, chunks_total=1, truncated=0)
    stats = job_stats(engine, job_id)
    assert (stats.state, stats.stored, stats.chunks_done, stats.chunks_total) == ("done", 1, 1, 1)
    assert job_state(engine, "nope") is None


def test_mark_collected_marks_once_and_refuses_a_cancelled_chunk(db_url: str) -> None:
    """Inside the collector's transaction: an open chunk is marked done with its figures and its payload
    dropped (deliveries returned, at least 1); a redelivery gets None; a cancelled job's chunk raises."""
    from embedfleet.store.ledger import ChunkCancelled, Collected, cancel_job, locked_payload, mark_collected

    engine = get_engine(db_url)
    job_id = job_with_chunks(engine, {0: [0, 1], 1: [2]})
    done = Collected(stored=2, dead=0, splits=1, encode_seconds=0.5, worker="w1")
    with engine.begin() as conn:
        assert locked_payload(conn, job_id, 0) == b"payload"
        assert mark_collected(conn, job_id, 0, done, time.time()) == 1
        assert locked_payload(conn, job_id, 0) is None
    with engine.begin() as conn:
        assert mark_collected(conn, job_id, 0, done, time.time()) is None
    stats = job_stats(engine, job_id)
    assert (stats.chunks_done, stats.splits) == (1, 1)
    cancel_job(engine, job_id)
    with pytest.raises(ChunkCancelled), engine.begin() as conn:
        mark_collected(conn, job_id, 1, done, time.time())
