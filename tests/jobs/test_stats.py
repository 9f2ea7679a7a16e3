"""The jobs' read model: a job found by any unique prefix of its id, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from embedfleet.errors import LedgerError
from embedfleet.jobs.stats import CANDIDATES_SHOWN, AmbiguousJob, job_stats, resolve_job_id
from embedfleet.store.collections import open_collection
from embedfleet.store.engine import get_engine
from embedfleet.store.ledger import create_job
from embedfleet.store.schema import jobs

IDS = ["abcd0000" + "0" * 24, "abcd1111" + "1" * 24, "ef012345" + "2" * 24]


def jobs_with_ids(engine, ids: list[str]) -> None:
    """Jobs whose ids are chosen (create_job draws uuid4s): prefixes collide only where the test wants."""
    version = open_collection(engine, "c1", "m", {}, {})
    for wanted in ids:
        drawn = create_job(engine, "c1", version.key, "m", "test", {}, records_read=0, skipped_invalid=0)
        with engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == drawn).values(id=wanted))


@pytest.fixture
def engine(db_url: str):
    engine = get_engine(db_url)
    jobs_with_ids(engine, IDS)
    return engine


def test_a_unique_prefix_or_the_full_id_finds_the_job(engine) -> None:
    """8 characters (what progress lines print), 5, 1 or all 32: the one job they start."""
    assert resolve_job_id(engine, "ef012345") == IDS[2]
    assert resolve_job_id(engine, "abcd1") == IDS[1]
    assert resolve_job_id(engine, "e") == IDS[2]
    assert resolve_job_id(engine, IDS[0]) == IDS[0]
    assert resolve_job_id(engine, " ABCD0 ") == IDS[0]  # pasted with spaces, or upper case
    assert job_stats(engine, resolve_job_id(engine, "abcd0")).job_id == IDS[0]


def test_an_ambiguous_prefix_lists_its_candidates(engine) -> None:
    """Two jobs start with 'abcd': refused, naming both."""
    with pytest.raises(AmbiguousJob) as caught:
        resolve_job_id(engine, "abcd")
    assert caught.value.candidates == IDS[:2]
    assert "ambiguous" in str(caught.value) and IDS[0] in str(caught.value) and IDS[1] in str(caught.value)


def test_an_unknown_prefix_or_a_wildcard_is_refused(engine) -> None:
    """No job starts with it: a LedgerError naming it. LIKE wildcards typed by a user match themselves only."""
    for prefix in ("9", "abcd2", "%", "_bcd", ""):
        with pytest.raises(LedgerError) as caught:
            resolve_job_id(engine, prefix)
        assert not isinstance(caught.value, AmbiguousJob), prefix


def test_many_candidates_are_cut_short(db_url: str) -> None:
    """A one-character prefix of many jobs lists CANDIDATES_SHOWN of them and says there are more."""
    engine = get_engine(db_url)
    jobs_with_ids(engine, [f"a{i:031x}" for i in range(CANDIDATES_SHOWN + 3)])
    with pytest.raises(AmbiguousJob) as caught:
        resolve_job_id(engine, "a")
    assert len(caught.value.candidates) == CANDIDATES_SHOWN and str(caught.value).endswith("give more characters")
    assert ", ..." in str(caught.value)


def test_a_fleet_job_with_open_chunks_and_no_live_embed_worker_says_so(db_url: str) -> None:
    """no_worker: open chunks, no heartbeat row seen within dead_after that consumes `embed`. A live
    worker on embed clears it; one on collect alone does not; an embedded run's job never has it."""
    from embedfleet.chunks.liveness import beat
    from embedfleet.fleet.queues import EMBED_QUEUE
    from embedfleet.jobs.stats import EMBED_QUEUE_NAME
    from embedfleet.store.ledger import add_chunk, close_submission

    assert EMBED_QUEUE_NAME == EMBED_QUEUE  # jobs/ names the fleet's queue without importing the fleet
    engine = get_engine(db_url)
    version = open_collection(engine, "nw", "m", {}, {})
    job_id = create_job(engine, "nw", version.key, "m", "test", {}, records_read=4, skipped_invalid=0)
    add_chunk(engine, job_id, 0, 4, b"payload")
    close_submission(engine, job_id, chunks_total=1, truncated=0)
    assert job_stats(engine, job_id).no_worker is False  # not asked
    assert job_stats(engine, job_id, dead_after=15).no_worker is True
    beat(engine, "inc-collect", "c1@h", "h", 1, 15, queues="collect,dead_letter")
    assert job_stats(engine, job_id, dead_after=15).no_worker is True
    beat(engine, "inc-embed", "w1@h", "h", 2, 15, queues="collect,dead_letter,embed")
    stats = job_stats(engine, job_id, dead_after=15)
    assert stats.no_worker is False and stats.as_dict()["no_worker"] is False
    embedded = create_job(engine, "nw", version.key, "m", "test", {}, records_read=4, skipped_invalid=0,
                          runner="embedded host 123")
    add_chunk(engine, embedded, 0, 4, b"payload")
    from embedfleet.store.schema import workers

    with engine.begin() as conn:
        conn.execute(workers.delete())  # every worker gone
    assert job_stats(engine, embedded, dead_after=15).no_worker is False
    assert job_stats(engine, job_id, dead_after=15).no_worker is True


def test_added_and_updated_count_what_was_stored(db_url: str) -> None:
    """added/updated count stored records: a cancelled chunk's records are neither; a dead letter of a new
    record (no row in the version) is not added; the planned counts stand only for ledgers without them."""
    from sqlalchemy import insert

    from embedfleet.store.ledger import add_chunk, close_submission
    from embedfleet.store.schema import chunks, dead_letters

    engine = get_engine(db_url)
    version = open_collection(engine, "cnt", "m", {}, {})
    job_id = create_job(engine, "cnt", version.key, "m", "test", {}, records_read=8, skipped_invalid=0)
    add_chunk(engine, job_id, 0, 4, b"p", added=3)  # 3 new records, 1 update
    add_chunk(engine, job_id, 1, 4, b"p", added=4)  # cancelled before it was stored
    close_submission(engine, job_id, chunks_total=2, truncated=0,
                     changes={"added": 7, "updated": 1, "unchanged": 0, "deleted": 0, "deduplicated": 0})
    with engine.begin() as conn:
        conn.execute(update(chunks).where(chunks.c.seq == 0).values(state="done", stored=3, dead=1))
        conn.execute(update(chunks).where(chunks.c.seq == 1).values(state="cancelled"))
        conn.execute(insert(dead_letters).values(job_id=job_id, chunk_seq=0, version_key=version.key,
                                                 record_id="new-one", position=2, text="t", content_hash="h",
                                                 error_type="E", message="m", attempts=1, created_at=0.0))
    stats = job_stats(engine, job_id)
    assert (stats.stored, stats.dead, stats.added, stats.updated) == (3, 1, 2, 1)
    # A ledger written before chunks counted their new records keeps the planned figures.
    with engine.begin() as conn:
        conn.execute(update(chunks).values(added=None))
    assert (job_stats(engine, job_id).added, job_stats(engine, job_id).updated) == (7, 1)


def test_the_recent_rate_and_eta_come_from_the_ledger(db_url: str) -> None:
    """recent_rate: records of the chunks finished in the last 30 s over that time (or since the first
    chunk started), so every follower of a job shows the same rate and ETA; chunks in flight are those
    started and not done; live workers are counted when asked."""
    import time

    from embedfleet.jobs.follow import view_of
    from embedfleet.store.ledger import add_chunk, close_submission
    from embedfleet.store.schema import chunks

    engine = get_engine(db_url)
    version = open_collection(engine, "rr", "m", {}, {})
    job_id = create_job(engine, "rr", version.key, "m", "test", {}, records_read=400, skipped_invalid=0)
    for seq in range(4):
        add_chunk(engine, job_id, seq, 100, b"p", added=100)
    close_submission(engine, job_id, chunks_total=4, truncated=0)
    now = time.time()
    with engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(state="running", created_at=now - 120))
        conn.execute(update(chunks).where(chunks.c.seq == 0).values(state="done", stored=100, started_at=now - 100,
                                                                     done_at=now - 90))  # before the window
        conn.execute(update(chunks).where(chunks.c.seq == 1).values(state="done", stored=100, started_at=now - 20,
                                                                     done_at=now - 10))
        conn.execute(update(chunks).where(chunks.c.seq == 2).values(started_at=now - 5))  # in flight
    first = job_stats(engine, job_id, dead_after=15)
    second = job_stats(engine, job_id, dead_after=15)
    assert first.recent_rate is not None and abs(first.recent_rate - 100 / 30) < 0.2
    assert abs(first.recent_rate - second.recent_rate) < 0.2  # any follower, any moment: the same source
    assert first.eta_seconds is not None and abs(first.eta_seconds - 200 / first.recent_rate) < 1
    assert (first.chunks_in_flight, first.live_workers) == (1, 0)
    line = view_of(first, first.records_done, first.recent_rate, time.time()).line()
    assert "200/400 records, 3.3 rec/s" in line and "1 chunks in flight, retries 0, workers 0" in line
    assert job_stats(engine, job_id).live_workers is None  # not asked
