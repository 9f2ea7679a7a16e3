"""The workers' Celery tasks, called in-process (no broker, no worker): encode, collect and the
dead-letter notice, on a SQLite ledger with the model-free HashEncoder."""

from __future__ import annotations

import logging

import msgpack
import numpy as np
import pytest
from sqlalchemy import update

from embedfleet.config.messages import ChunkTexts, ChunkVectors, DeadRecord
from embedfleet.config.settings import Settings, set_settings
from embedfleet.storage import codec
from embedfleet.storage.engine import get_engine
from embedfleet.storage.jobs import job_stats
from embedfleet.storage.ledger import open_chunk_payloads
from embedfleet.storage.schema import chunks
from embedfleet.storage.vectors import iter_ordered
from embedfleet.workers import resident, tasks
from tests.storage.helpers import one_chunk_job

HASH_ENCODER = "tests.workers.fake_encoders:HashEncoder"


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
    """encode_chunk sends one vector per record, in the chunk's order; collect_chunk stores them and the job ends done."""
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
