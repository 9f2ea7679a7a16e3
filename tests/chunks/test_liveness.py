"""The liveness ledger (heartbeats, holders, the sweep), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from embedfleet.chunks.liveness import beat, claim_stranded, db_now, hold, prune_dead_nodes, retire
from embedfleet.jobs.stats import job_stats
from embedfleet.store.engine import get_engine
from embedfleet.store.schema import chunks, workers
from tests.store.helpers import live_job

DEAD_AFTER = 15.0


def _age(engine, incarnation: str, last_seen_ago: float, up_since_ago: float) -> None:
    with engine.begin() as conn:
        now = conn.execute(select(db_now(conn.dialect.name))).scalar_one()
        conn.execute(update(workers).where(workers.c.incarnation == incarnation)
                     .values(last_seen=now - last_seen_ago, up_since=now - up_since_ago))


def _holders(engine, job_id: str) -> dict[int, str | None]:
    with engine.connect() as conn:
        return dict(conn.execute(select(chunks.c.seq, chunks.c.holder).where(chunks.c.job_id == job_id)).all())


@pytest.fixture
def engine(db_url):
    from embedfleet.store.collections import open_collection  # noqa: F401  (imports the schema's users)

    return get_engine(db_url)


def test_dead_holder_is_swept_once(engine) -> None:
    """A chunk held by a node silent for dead_after is claimed by exactly one sweep, and the node is pruned."""
    job_id, _ = live_job(engine)
    for node in ("dead", "alive"):
        beat(engine, node, node, "h", 1, DEAD_AFTER)
    hold(engine, "dead", [(job_id, 0)])
    hold(engine, "alive", [(job_id, 1)])
    _age(engine, "dead", 20, 100)
    _age(engine, "alive", 1, 100)
    claimed = claim_stranded(engine, DEAD_AFTER, claimant="alive")
    assert [(c.job_id, c.seq, c.holder) for c in claimed] == [(job_id, 0, "dead")]
    assert claim_stranded(engine, DEAD_AFTER) == []
    assert _holders(engine, job_id) == {0: "alive", 1: "alive"}
    assert job_stats(engine, job_id).resends == 1
    assert prune_dead_nodes(engine, DEAD_AFTER) == 1  # holding nothing now, the dead node is forgotten
    with engine.connect() as conn:
        assert sorted(conn.execute(select(workers.c.incarnation)).scalars()) == ["alive"]


def test_hold_marks_every_open_chunk_it_is_given_and_no_other(engine) -> None:
    """Several chunks received at once are held in one statement; a done chunk, a chunk of another job and one not
    named keep their holder."""
    job_id, _ = live_job(engine, n_chunks=4)
    other_job, _ = live_job(engine, n_chunks=1)
    with engine.begin() as conn:
        conn.execute(update(chunks).where(chunks.c.job_id == job_id, chunks.c.seq == 2).values(state="done"))
    hold(engine, "node", [(job_id, 0), (job_id, 1), (job_id, 2), (other_job, 5)])
    assert _holders(engine, job_id) == {0: "node", 1: "node", 2: None, 3: None}
    assert _holders(engine, other_job) == {0: None}


def test_no_judgement_without_a_witness(engine) -> None:
    """After an outage every node is stale and none has beaten unbroken for dead_after: nobody is judged."""
    job_id, _ = live_job(engine)
    beat(engine, "dead", "dead", "h", 1, DEAD_AFTER)
    beat(engine, "back", "back", "h", 1, DEAD_AFTER)
    hold(engine, "dead", [(job_id, 0)])
    _age(engine, "dead", 40, 100)
    _age(engine, "back", 40, 100)
    beat(engine, "back", "back", "h", 1, DEAD_AFTER)  # the first beat after the outage restarts its run
    assert claim_stranded(engine, DEAD_AFTER) == []
    _age(engine, "back", 1, DEAD_AFTER + 1)  # ... and once it has beaten for dead_after, it judges
    assert [c.seq for c in claim_stranded(engine, DEAD_AFTER, job_id=job_id)] == [0]


def test_retire_releases_held_chunks(engine) -> None:
    """A node shutting down cleanly releases its chunks (Celery returned their messages) and its row."""
    job_id, _ = live_job(engine)
    beat(engine, "w", "w", "h", 1, DEAD_AFTER)
    hold(engine, "w", [(job_id, 0), (job_id, 1)])
    retire(engine, "w")
    assert _holders(engine, job_id) == {0: None, 1: None}
