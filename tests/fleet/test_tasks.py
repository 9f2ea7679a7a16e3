"""The workers' Celery tasks, called in-process (no broker, no worker): encode, collect and the
dead-letter notice, on a SQLite ledger with the model-free HashEncoder."""

from __future__ import annotations

import dataclasses
import logging

import msgpack
import numpy as np
import pytest
from sqlalchemy import select, update

from embedfleet.chunks.messages import ChunkTexts, ChunkVectors, DeadRecord
from embedfleet.fleet import resident, tasks
from embedfleet.fleet.queues import EMBED_QUEUE
from embedfleet.jobs.stats import job_stats
from embedfleet.settings import Settings, set_settings
from embedfleet.store import codec
from embedfleet.store.engine import get_engine
from embedfleet.store.ledger import open_chunk_payloads
from embedfleet.store.schema import chunks, versions
from embedfleet.store.vectors import iter_ordered
from tests.store.helpers import one_chunk_job

HASH_ENCODER = "tests.encode.fake_encoders:HashEncoder"


@pytest.fixture
def ledger(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Settings pointing the tasks at a fresh SQLite ledger and the HashEncoder, loaded afresh."""
    set_settings(Settings(database_url=sqlite_url, encoder=HASH_ENCODER))
    monkeypatch.setattr(resident, "_encoders", {})
    return sqlite_url


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """What the tasks would have put on the broker: vectors for the collector, chunks, notices."""
    out: dict[str, list] = {"vectors": [], "chunks": [], "notices": []}
    monkeypatch.setattr(tasks, "_send_vectors", out["vectors"].append)
    monkeypatch.setattr(tasks, "celery_sender", lambda app: out["chunks"].append)
    monkeypatch.setattr(tasks, "notify_dead_letters", lambda *args: out["notices"].append(args))
    return out


def _texts(engine, job_id: str) -> ChunkTexts:
    [(_, payload)] = open_chunk_payloads(engine, job_id)
    return ChunkTexts.from_wire(msgpack.unpackb(payload))


def test_encode_then_collect_stores_the_chunk_and_finishes_the_job(ledger: str, sent: dict[str, list]) -> None:
    """encode_chunk sends one vector per record, in the chunk's order; collect_chunk stores them and the job ends done
    (collect_in_place off: every chunk goes through the collect queue)."""
    set_settings(Settings(database_url=ledger, encoder=HASH_ENCODER, collect_in_place=False))
    engine = get_engine(ledger)
    job_id, _ = one_chunk_job(engine, ["a", "b", "c"])
    tasks.encode_chunk(chunk=_texts(engine, job_id).to_wire())
    [vectors] = sent["vectors"]
    assert (vectors.ids, vectors.positions, vectors.dim, vectors.dead) == (["a", "b", "c"], [0, 1, 2], 8, [])
    assert tasks.collect_chunk(chunk=vectors.to_wire()) == "stored 3, dead 0"
    stats = job_stats(engine, job_id)
    assert (stats.state, stats.stored, stats.dead) == ("done", 3, 0)
    [(ids, matrix)] = list(iter_ordered(engine, vectors.version_key))
    assert ids == ["a", "b", "c"]
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-5)
    assert sent["notices"] == []


def test_a_chunk_that_is_already_done_is_not_encoded_again(ledger: str, sent: dict[str, list]) -> None:
    """A redelivered chunk whose ledger row is done is skipped: nothing is sent to the collector."""
    engine = get_engine(ledger)
    job_id, _ = one_chunk_job(engine, ["a"])
    texts = _texts(engine, job_id)
    with engine.begin() as conn:
        conn.execute(update(chunks).where(chunks.c.job_id == job_id).values(state="done"))
    tasks.encode_chunk(chunk=texts.to_wire())
    assert sent["vectors"] == []


def _collects(engine, job_id: str) -> tuple[str, int | None]:
    with engine.connect() as conn:
        return tuple(conn.execute(select(chunks.c.state, chunks.c.collects).where(chunks.c.job_id == job_id)).one())


def test_a_worker_that_consumes_the_collect_queue_stores_its_chunk_itself(ledger: str, sent: dict[str, list]) -> None:
    """By default the encode task stores the chunk it encoded (one collect, counted in the ledger), sends nothing to
    the collect queue, and its result says what was stored; the job ends done."""
    engine = get_engine(ledger)
    job_id, _ = one_chunk_job(engine, ["a", "b", "c"])
    assert tasks.encode_chunk(chunk=_texts(engine, job_id).to_wire()) == "encoded 3, stored 3, dead 0"
    assert sent["vectors"] == [] and sent["notices"] == []
    assert _collects(engine, job_id) == ("done", 1)
    stats = job_stats(engine, job_id)
    assert (stats.state, stats.stored, stats.dead) == ("done", 3, 0)
    [(ids, _)] = list(iter_ordered(engine, stats.version_key))
    assert ids == ["a", "b", "c"]


def test_a_worker_left_out_of_the_collect_queue_sends_the_vectors(ledger: str, sent: dict[str, list],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker started with -Q embed (beside collector nodes) leaves storing to the collect queue."""
    queues = tasks.app.amqp.queues
    monkeypatch.setattr(queues, "_consume_from", None)  # restored after the test: select() below sets it
    queues.select([EMBED_QUEUE])
    engine = get_engine(ledger)
    job_id, _ = one_chunk_job(engine, ["a", "b"])
    assert tasks.encode_chunk(chunk=_texts(engine, job_id).to_wire()) == "encoded 2, dead 0"
    [vectors] = sent["vectors"]
    assert vectors.ids == ["a", "b"]
    assert _collects(engine, job_id) == ("queued", None)


def test_a_chunk_that_lost_a_process_is_collected_by_the_collect_task(ledger: str, sent: dict[str, list]) -> None:
    """A redelivery after its process died (perhaps in the store here) sends the vectors to the collect queue, whose
    task caps collects that kill their process."""
    engine = get_engine(ledger)
    job_id, _ = one_chunk_job(engine, ["a"])
    with engine.begin() as conn:
        conn.execute(update(chunks).where(chunks.c.job_id == job_id).values(deliveries=1, collects=1))
    assert tasks.encode_chunk(chunk=_texts(engine, job_id).to_wire()) == "encoded 1, dead 0"
    assert len(sent["vectors"]) == 1
    assert _collects(engine, job_id) == ("queued", 1)


def test_a_repeat_waiting_for_its_first_record_goes_to_the_collect_queue(ledger: str, sent: dict[str, list]) -> None:
    """A repeated text whose first record is not stored yet cannot be stored here: nothing of the chunk is, and its
    vectors go to the collect queue, whose task waits for the first record by retrying."""
    engine = get_engine(ledger)
    job_id, _ = one_chunk_job(engine, ["a"])
    texts = dataclasses.replace(_texts(engine, job_id), aliases=[["b", 1, "h-elsewhere", "a text of another chunk"]])
    assert tasks.encode_chunk(chunk=texts.to_wire()) == "encoded 1, dead 0"
    [vectors] = sent["vectors"]
    assert vectors.aliases == [["b", 1, "h-elsewhere", "a text of another chunk"]]
    assert _collects(engine, job_id) == ("queued", 1)
    assert job_stats(engine, job_id).stored == 0


def test_a_store_here_that_fails_hands_the_vectors_to_the_collect_queue(ledger: str, sent: dict[str, list],
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Any failure of the store here (a version of another dimension, say) rolls back and sends the vectors to the
    collect queue, where the collect task's rules decide (a retry, dead letters); a warning says why."""
    engine = get_engine(ledger)
    job_id, _ = one_chunk_job(engine, ["a", "b"])
    with engine.begin() as conn:
        conn.execute(update(versions).values(dim=4))
    with caplog.at_level(logging.WARNING, logger=tasks.__name__):
        assert tasks.encode_chunk(chunk=_texts(engine, job_id).to_wire()) == "encoded 2, dead 0"
    assert len(sent["vectors"]) == 1
    assert "not stored here" in caplog.text and "dimension 4" in caplog.text
    assert job_stats(engine, job_id).stored == 0


def test_a_chunk_stored_here_with_a_dead_record_sends_one_notice(ledger: str, sent: dict[str, list]) -> None:
    """The store here writes the encoder's dead letters and sends the notice, as the collect task does."""
    set_settings(Settings(database_url=ledger, encoder="tests.cli.encoders:HashPoison"))
    engine = get_engine(ledger)
    job_id, _ = one_chunk_job(engine, ["a", "b"], texts=["fine", "POISON-RECORD here"])
    assert tasks.encode_chunk(chunk=_texts(engine, job_id).to_wire()) == "encoded 1, stored 1, dead 1"
    assert sent["vectors"] == []
    assert sent["notices"] == [(job_id, 0, 1, "ValueError")]
    stats = job_stats(engine, job_id)
    assert (stats.state, stats.stored, stats.dead) == ("done", 1, 1)


def test_collecting_a_chunk_with_dead_records_sends_one_notice(ledger: str, sent: dict[str, list]) -> None:
    """The collector stores the good records, writes the dead ones as letters and sends a notice counting them."""
    engine = get_engine(ledger)
    job_id, vectors = one_chunk_job(engine, ["a", "b"])
    first_row = codec.pack(codec.unpack(vectors.vectors, vectors.dim)[:1])
    good = ChunkVectors(job_id=job_id, seq=0, version_key=vectors.version_key, model="m", dim=vectors.dim,
                        ids=["a"], positions=[0], hashes=["h0"], vectors=first_row,
                        dead=[DeadRecord("b", 1, "t", "h1", "InvalidVector", "NaN")])
    assert tasks.collect_chunk(chunk=good.to_wire()) == "stored 1, dead 1"
    assert sent["notices"] == [(job_id, 0, 1, "InvalidVector")]
    stats = job_stats(engine, job_id)
    assert (stats.state, stats.stored, stats.dead) == ("done", 1, 1)


def test_the_dead_letter_notice_logs_and_fails_as_expected(caplog: pytest.LogCaptureFixture) -> None:
    """The dead_letter task is a notice for Flower: it logs the job, chunk, count and error types, and
    ends with DeadLetters (an expected error, never retried) so Flower shows the row as FAILURE."""
    with caplog.at_level(logging.WARNING, logger=tasks.__name__), \
            pytest.raises(tasks.DeadLetters, match=r"2 records of chunk 3 are dead letters .ValueError.: "
                                                   "embedfleet dlq list --job j1"):
        tasks.dead_letter(job_id="j1", seq=3, count=2, error_types="ValueError")
    assert "job=j1 chunk=3 count=2 errors=ValueError" in caplog.text
    assert tasks.DeadLetters in tasks.dead_letter.throws and tasks.dead_letter.max_retries == 0
    assert not getattr(tasks.dead_letter, "autoretry_for", ())


def test_a_database_outage_is_retried_every_few_seconds_for_minutes() -> None:
    """What ChunkTask.retry waits out: a lost or refused connection (not a refused row), at 1, 2, 4 s,
    then every 5 s at most, never under 1 s, for ten minutes of attempts."""
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.exc import OperationalError as SAOperationalError

    from embedfleet.fleet.tasks import OUTAGE_RETRIES, OUTAGE_RETRY_SECONDS, database_away, outage_countdown

    assert database_away(SAOperationalError("SELECT 1", {}, Exception("connection refused")))
    assert not database_away(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not database_away(ValueError("no"))
    waits = [outage_countdown(n) for n in range(8)]
    assert all(1.0 <= w <= OUTAGE_RETRY_SECONDS for w in waits) and waits[0] == 1.0
    assert OUTAGE_RETRIES * OUTAGE_RETRY_SECONDS >= 600
