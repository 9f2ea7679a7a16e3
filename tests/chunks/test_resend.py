"""Re-sending from the ledger's copy: a job's open chunks, chunks held by dead nodes, and the
reconciler that does both, on SQLite and PostgreSQL. The sender is a list: storage hands it
ledger payloads and never decodes them."""

from __future__ import annotations

import logging

import msgpack
import pytest
from sqlalchemy import select, update

from embedfleet.chunks.liveness import beat, db_now, hold
from embedfleet.chunks.messages import ChunkTexts
from embedfleet.chunks.resend import reconcile, resend_open_chunks, resend_stranded
from embedfleet.jobs.stats import job_stats
from embedfleet.store.collections import open_collection
from embedfleet.store.engine import get_engine
from embedfleet.store.ledger import add_chunk, create_job, job_state
from embedfleet.store.schema import chunks, workers
from tests.store.helpers import live_job

DEAD_AFTER = 15.0


@pytest.fixture
def engine(db_url: str):
    return get_engine(db_url)


def _seqs(payloads: list[bytes]) -> list[int]:
    return [ChunkTexts.from_wire(msgpack.unpackb(p)).seq for p in payloads]


def _set_chunk(engine, job_id: str, seq: int, **values) -> None:
    with engine.begin() as conn:
        conn.execute(update(chunks).where(chunks.c.job_id == job_id, chunks.c.seq == seq).values(**values))


def _sent_at(engine, job_id: str) -> dict[int, float]:
    with engine.connect() as conn:
        return dict(conn.execute(select(chunks.c.seq, chunks.c.sent_at).where(chunks.c.job_id == job_id)).all())


def _dead_and_witness(engine, job_id: str, seq: int) -> None:
    """Node `dead` holds the chunk and stopped beating 20 s ago; node `alive` has beaten for 100 s."""
    for node in ("dead", "alive"):
        beat(engine, node, node, "h", 1, DEAD_AFTER)
    hold(engine, "dead", [(job_id, seq)])
    with engine.begin() as conn:
        now = conn.execute(select(db_now(conn.dialect.name))).scalar_one()
        for node, last_seen_ago in (("dead", 20), ("alive", 1)):
            conn.execute(update(workers).where(workers.c.incarnation == node)
                         .values(last_seen=now - last_seen_ago, up_since=now - 100))


def test_open_chunks_are_resent_in_order_and_done_ones_are_not(engine) -> None:
    """resend_open_chunks sends each open chunk's stored message (seq order), skips done chunks,
    counts the resends on the job and stamps the chunks as sent now."""
    job_id, texts = live_job(engine, n_chunks=3)
    _set_chunk(engine, job_id, 1, state="done")
    for seq in range(3):
        _set_chunk(engine, job_id, seq, sent_at=1.0)
    sent: list[bytes] = []
    assert resend_open_chunks(engine, sent.append, job_id) == 2
    assert sent == [msgpack.packb(texts[0].to_wire()), msgpack.packb(texts[2].to_wire())]
    assert job_stats(engine, job_id).resends == 2
    stamps = _sent_at(engine, job_id)
    assert stamps[1] == 1.0 and stamps[0] > 1.0 and stamps[2] > 1.0


def test_a_job_with_nothing_open_resends_nothing(engine) -> None:
    """No open chunk: nothing sent, no resend counted."""
    job_id, _ = live_job(engine, n_chunks=2)
    for seq in range(2):
        _set_chunk(engine, job_id, seq, state="done")
    sent: list[bytes] = []
    assert resend_open_chunks(engine, sent.append, job_id) == 0
    assert sent == [] and job_stats(engine, job_id).resends == 0


def test_chunks_of_a_dead_node_are_resent_once(engine) -> None:
    """A chunk held by a node that stopped beating is sent again, and claimed by the sweeper so a
    second sweep does not send it again."""
    job_id, _ = live_job(engine, n_chunks=2)
    _dead_and_witness(engine, job_id, 0)
    sent: list[bytes] = []
    assert resend_stranded(engine, sent.append, DEAD_AFTER, claimant="alive") == 1
    assert _seqs(sent) == [0]
    assert resend_stranded(engine, sent.append, DEAD_AFTER, claimant="alive") == 0
    assert len(sent) == 1


def _failed_then_retried(engine, job_id: str | None) -> list[bytes]:
    """A sweep whose send fails, then a second sweep that can send: what the second one sends."""
    owner, _ = live_job(engine, n_chunks=1)
    _dead_and_witness(engine, owner, 0)

    def broken(payload: bytes) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        resend_stranded(engine, broken, DEAD_AFTER, job_id=owner if job_id else None, claimant="alive")
    with engine.connect() as conn:
        assert conn.execute(select(chunks.c.holder).where(chunks.c.job_id == owner)).scalar_one() == "dead"
    sent: list[bytes] = []
    resend_stranded(engine, sent.append, DEAD_AFTER, job_id=owner if job_id else None, claimant="alive")
    return sent


def test_a_failed_send_gives_the_chunk_back_for_the_next_sweep_of_its_job(engine) -> None:
    """If sending fails (broker down), the claim is undone: the error surfaces, the chunk is held
    by the dead node again, and the next sweep of the job (a waiting producer's) re-sends it."""
    assert _seqs(_failed_then_retried(engine, job_id="this job")) == [0]


def test_a_failed_send_gives_the_chunk_back_for_the_next_full_sweep(engine) -> None:
    """The same after a full sweep (a worker's heartbeat): the dead node is not pruned while its chunk
    could not be sent, so the next full sweep re-sends it."""
    assert _seqs(_failed_then_retried(engine, job_id=None)) == [0]


def test_stranded_resend_can_be_limited_to_one_job(engine) -> None:
    """With job_id, only that job's stranded chunks are sent (what a waiting producer does)."""
    mine, _ = live_job(engine, n_chunks=1)
    version = open_collection(engine, "other", "m", {}, {})
    theirs = create_job(engine, "other", version.key, "m", "t", {}, 4, 0)
    add_chunk(engine, theirs, 0, 4, b"theirs")
    _dead_and_witness(engine, mine, 0)
    hold(engine, "dead", [(theirs, 0)])
    sent: list[bytes] = []
    assert resend_stranded(engine, sent.append, DEAD_AFTER, job_id=mine, claimant="alive") == 1
    assert _seqs(sent) == [0]


def test_reconcile_abandons_dead_submissions_and_resends_stalled_jobs(engine, caplog) -> None:
    """One reconcile: a submission whose producer went quiet becomes abandoned; a running job with
    no sign of life for a lease gets its open chunks re-sent; a lively job is left alone."""
    stalled, _ = live_job(engine, n_chunks=2)
    for seq in range(2):
        _set_chunk(engine, stalled, seq, sent_at=1.0)
    lively, _ = live_job(engine, n_chunks=1)
    version = open_collection(engine, "sub", "m", {}, {})
    submitting = create_job(engine, "sub", version.key, "m", "t", {}, 4, 0)
    add_chunk(engine, submitting, 0, 4, b"sub")
    _set_chunk(engine, submitting, 0, sent_at=1.0)
    sent: list[bytes] = []
    with caplog.at_level(logging.WARNING, logger="embedfleet.chunks.resend"):
        assert reconcile(engine, sent.append, lease_seconds=60, dead_after=DEAD_AFTER) == {stalled: 2}
    assert _seqs(sent) == [0, 1]
    assert job_state(engine, submitting) == "abandoned"
    assert job_state(engine, lively) == "running"
    assert f"job {submitting} abandoned" in caplog.text and f"open chunks of job {stalled}" in caplog.text


def test_reconcile_with_nothing_lost_sends_nothing(engine) -> None:
    """Healthy jobs and live nodes: the reconciler is a no-op."""
    job_id, _ = live_job(engine, n_chunks=2)
    beat(engine, "w", "w", "h", 1, DEAD_AFTER)
    hold(engine, "w", [(job_id, 0)])
    sent: list[bytes] = []
    assert reconcile(engine, sent.append, lease_seconds=60, dead_after=DEAD_AFTER) == {}
    assert sent == []


def test_a_failed_send_gives_back_every_chunk_not_sent_yet(engine) -> None:
    """Two chunks of a dead node, the broker fails on the first: neither stays with the sweeper (alive,
    so never swept), both go back to the dead node, and the next sweep sends both."""
    job_id, _ = live_job(engine, n_chunks=2)
    _dead_and_witness(engine, job_id, 0)
    hold(engine, "dead", [(job_id, 1)])

    def broken(payload: bytes) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        resend_stranded(engine, broken, DEAD_AFTER, claimant="alive")
    with engine.connect() as conn:
        holders = set(conn.execute(select(chunks.c.holder).where(chunks.c.job_id == job_id)).scalars())
    assert holders == {"dead"}
    sent: list[bytes] = []
    assert resend_stranded(engine, sent.append, DEAD_AFTER, claimant="alive") == 2
    assert _seqs(sent) == [0, 1]
