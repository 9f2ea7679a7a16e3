"""A worker node's heartbeat thread, in-process on a real database: its beats, the chunks it
marks held, its sweep for chunks of dead nodes (only with a witness), its reconcile, and a clean
retire. The sender is a list in place of the broker; tests/fleet/test_liveness.py covers real
worker processes."""

from __future__ import annotations

import logging
import os
import socket
import time
from types import SimpleNamespace

import msgpack
import pytest
from sqlalchemy import select, update

from embedfleet.chunks.liveness import beat, db_now, hold
from embedfleet.chunks.messages import ChunkTexts
from embedfleet.fleet import heartbeat
from embedfleet.fleet.heartbeat import Heartbeat
from embedfleet.fleet.queues import COLLECT_TASK, DEAD_LETTER_TASK, ENCODE_TASK
from embedfleet.settings import Settings, set_settings
from embedfleet.store.schema import chunks, workers
from tests.store.helpers import live_job

DEAD_AFTER = 15.0


@pytest.fixture
def sent() -> list[bytes]:
    """What the node sent, in place of the broker."""
    return []


@pytest.fixture
def node(db_url: str, sent: list[bytes]) -> Heartbeat:
    """A heartbeat on a fresh database whose sends go to `sent`."""
    set_settings(Settings(database_url=db_url, heartbeat_seconds=0.05, dead_after_seconds=DEAD_AFTER,
                          lease_seconds=60, reconcile_every_seconds=3600))
    hb = Heartbeat("w1@host")
    hb.send = sent.append
    return hb


def _age(engine, incarnation: str, last_seen_ago: float, up_since_ago: float) -> None:
    with engine.begin() as conn:
        now = conn.execute(select(db_now(conn.dialect.name))).scalar_one()
        conn.execute(update(workers).where(workers.c.incarnation == incarnation)
                     .values(last_seen=now - last_seen_ago, up_since=now - up_since_ago))


def _holders(engine, job_id: str) -> dict[int, str | None]:
    with engine.connect() as conn:
        return dict(conn.execute(select(chunks.c.seq, chunks.c.holder).where(chunks.c.job_id == job_id)).all())


def _worker_rows(engine) -> list:
    with engine.connect() as conn:
        return list(conn.execute(select(workers)).all())


def _seqs(payloads: list[bytes]) -> list[int]:
    return [ChunkTexts.from_wire(msgpack.unpackb(p)).seq for p in payloads]


def test_settings_and_identity(node: Heartbeat) -> None:
    """The node takes its timings from settings and a fresh incarnation per start."""
    assert (node.interval, node.dead_after, node.lease, node.reconcile_every) == (0.05, DEAD_AFTER, 60, 3600)
    assert len(node.incarnation) == 32 and node.incarnation != Heartbeat("w1@host").incarnation
    assert node.daemon


def test_a_beat_writes_the_nodes_row(node: Heartbeat) -> None:
    """beat() writes one row: incarnation, name, host and pid; a second beat updates it, adds none."""
    assert node.beat() is True
    [row] = _worker_rows(node.engine)
    assert (row.incarnation, row.name, row.host, row.pid) == (node.incarnation, "w1@host", socket.gethostname(),
                                                              os.getpid())
    first = row
    time.sleep(0.02)
    assert node.beat() is True
    [row] = _worker_rows(node.engine)
    # A beat soon after the last one moves last_seen and keeps the run of beats going.
    assert row.last_seen > first.last_seen and row.up_since == first.up_since


def test_a_beat_on_an_unreachable_database_fails_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """With the database down the node keeps working: beat() logs a warning and answers False."""
    set_settings(Settings(database_url="postgresql://postgres@127.0.0.1:1/nowhere"))
    node = Heartbeat("w1@host")
    with caplog.at_level(logging.WARNING, logger="embedfleet.fleet.heartbeat"):
        assert node.beat() is False
    assert "heartbeat of w1@host failed" in caplog.text


def test_received_chunks_are_marked_held(node: Heartbeat) -> None:
    """received() queues (job, seq) without touching the database; the thread then marks them held."""
    job_id, _ = live_job(node.engine, n_chunks=2)
    node.received(job_id, 1)
    assert _holders(node.engine, job_id) == {0: None, 1: None}
    node._hold_received()
    assert _holders(node.engine, job_id) == {0: None, 1: node.incarnation}
    assert node._received == []


def test_the_task_received_signal_marks_encode_and_collect_messages_only(node: Heartbeat,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The task_received handler hands encode and collect chunks to the node; other tasks and
    messages without a chunk are ignored."""
    monkeypatch.setattr(heartbeat, "_heartbeat", node)
    for name, kwargs in ((ENCODE_TASK, {"chunk": {"job_id": "j", "seq": 3}}),
                         (COLLECT_TASK, {"chunk": {"job_id": "j", "seq": "4"}}),
                         (DEAD_LETTER_TASK, {"chunk": {"job_id": "j", "seq": 5}}),
                         (ENCODE_TASK, {}), (ENCODE_TASK, None)):
        heartbeat._received(request=SimpleNamespace(name=name, kwargs=kwargs))
    heartbeat._received(request=None)
    assert node._received == [("j", 3), ("j", 4)]


def test_sweep_resends_a_dead_nodes_chunks_when_this_node_is_a_witness(node: Heartbeat, sent: list[bytes]) -> None:
    """A node that has beaten without a break for dead_after re-sends the chunk of a node gone
    silent, and holds it itself from then on."""
    engine = node.engine
    job_id, texts = live_job(engine, n_chunks=2)
    node.beat()
    beat(engine, "gone", "w2@host", "h", 1, DEAD_AFTER)
    hold(engine, "gone", [(job_id, 0)])
    _age(engine, "gone", 20, 100)
    _age(engine, node.incarnation, 1, DEAD_AFTER + 1)
    node.sweep()
    assert sent == [msgpack.packb(texts[0].to_wire())]
    assert _holders(engine, job_id)[0] == node.incarnation


def test_no_sweep_judgement_without_a_witness(node: Heartbeat, sent: list[bytes]) -> None:
    """Just after an outage (no node has beaten unbroken for dead_after) nobody is judged dead."""
    engine = node.engine
    job_id, _ = live_job(engine, n_chunks=1)
    beat(engine, "gone", "w2@host", "h", 1, DEAD_AFTER)
    hold(engine, "gone", [(job_id, 0)])
    _age(engine, "gone", 20, 100)
    node.beat()  # a fresh run of beats: not a witness yet
    node.sweep()
    assert sent == []
    assert _holders(engine, job_id)[0] == "gone"


def test_a_failing_sweep_is_logged_not_raised(node: Heartbeat, caplog: pytest.LogCaptureFixture) -> None:
    """A send that fails inside the sweep never kills the heartbeat thread: it is logged."""
    engine = node.engine
    job_id, _ = live_job(engine, n_chunks=1)
    node.beat()
    beat(engine, "gone", "w2@host", "h", 1, DEAD_AFTER)
    hold(engine, "gone", [(job_id, 0)])
    _age(engine, "gone", 20, 100)
    _age(engine, node.incarnation, 1, DEAD_AFTER + 1)

    def broken(payload: bytes) -> None:
        raise ConnectionError("broker down")

    node.send = broken
    with caplog.at_level(logging.WARNING, logger="embedfleet.fleet.heartbeat"):
        node.sweep()
    assert "sweep for stranded chunks failed: ConnectionError: broker down" in caplog.text


def test_reconcile_resends_a_stalled_job(node: Heartbeat, sent: list[bytes]) -> None:
    """The node's reconcile re-sends the open chunks of a job with no sign of life for a lease."""
    engine = node.engine
    job_id, _ = live_job(engine, n_chunks=2)
    with engine.begin() as conn:
        conn.execute(update(chunks).where(chunks.c.job_id == job_id).values(sent_at=1.0))
    node.reconcile()
    assert _seqs(sent) == [0, 1]


def test_the_thread_beats_and_retires_cleanly(node: Heartbeat) -> None:
    """Started, the thread beats every interval and marks received chunks; stop() ends it, releases
    its chunks (Celery returned their messages) and removes its row."""
    engine = node.engine
    job_id, _ = live_job(engine, n_chunks=1)
    node.start()
    try:
        node.received(job_id, 0)
        deadline = time.monotonic() + 20

        def beaten_twice() -> bool:
            rows = _worker_rows(engine)
            return bool(rows) and rows[0].last_seen > rows[0].started_at

        while time.monotonic() < deadline and (not beaten_twice() or not _holders(engine, job_id)[0]):
            time.sleep(0.05)
        assert _holders(engine, job_id) == {0: node.incarnation}
        assert beaten_twice()  # more than one beat (waited for: a loaded machine may be slow to beat again)
    finally:
        node.stop()
    assert not node.is_alive()
    assert _worker_rows(engine) == [] and _holders(engine, job_id) == {0: None}


def test_a_broker_that_came_back_empty_is_seen_once_by_one_node(redis_url: str) -> None:
    """Two nodes watch the broker's epoch key on a real Redis: nothing is lost while it stays; after the
    database is emptied (a restart with nothing on disk) exactly one node claims the new epoch, once."""
    import redis

    from embedfleet.fleet.broker_epoch import BrokerEpoch, redis_client

    client = redis_client(redis_url)
    assert client is not None and redis_client("amqp://guest@localhost//") is None
    first, second = BrokerEpoch(), BrokerEpoch()
    assert not first.lost(client) and not second.lost(client)  # first sight: the epoch each knows
    assert not first.lost(client) and not second.lost(client)  # unchanged
    redis.Redis.from_url(redis_url).flushdb()
    claims = [first.lost(client), second.lost(client)]
    assert sorted(claims) == [False, True]
    assert not first.lost(client) and not second.lost(client)  # the new epoch is known to both now
