"""The liveness ledger (heartbeats, holders, the sweep) and crash splits, on SQLite and PostgreSQL."""

from __future__ import annotations

import msgpack
import pytest
from sqlalchemy import create_engine, select, text, update

from embedfleet.config.messages import ChunkTexts
from embedfleet.config.settings import Settings
from embedfleet.storage.engine import get_engine, normalise_url
from embedfleet.storage.jobs import job_stats
from embedfleet.storage.ledger import add_chunk, close_submission, create_job
from embedfleet.storage.liveness import beat, claim_stranded, db_now, hold, retire
from embedfleet.storage.schema import chunks, workers
from embedfleet.storage.splits import halve, split_chunk
from embedfleet.workers.deliveries import crashed_too_often

DEAD_AFTER = 15.0


def _job(engine, n_chunks: int = 2) -> tuple[str, list[ChunkTexts]]:
    from embedfleet.storage.collections import open_collection

    version = open_collection(engine, "live", "m", source={}, options={})
    job_id = create_job(engine, "live", version.key, "m", "test", {}, records_read=4 * n_chunks, skipped_invalid=0)
    texts = []
    for seq in range(n_chunks):
        ids = [f"r{seq}-{i}" for i in range(4)]
        chunk = ChunkTexts(job_id, seq, version.key, "m", ids, [seq * 4 + i for i in range(4)], ids, ["h"] * 4)
        add_chunk(engine, job_id, seq, 4, msgpack.packb(chunk.to_wire()))
        texts.append(chunk)
    close_submission(engine, job_id, n_chunks, 0)
    return job_id, texts


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
    from embedfleet.storage.collections import open_collection  # noqa: F401  (imports the schema's users)

    return get_engine(db_url)


def test_dead_holder_is_swept_once(engine) -> None:
    """A chunk held by a node silent for dead_after is claimed by exactly one sweep, and the node is pruned."""
    job_id, _ = _job(engine)
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
    with engine.connect() as conn:
        assert sorted(conn.execute(select(workers.c.incarnation)).scalars()) == ["alive"]


def test_no_judgement_without_a_witness(engine) -> None:
    """After an outage every node is stale and none has beaten unbroken for dead_after: nobody is judged."""
    job_id, _ = _job(engine)
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
    job_id, _ = _job(engine)
    beat(engine, "w", "w", "h", 1, DEAD_AFTER)
    hold(engine, "w", [(job_id, 0), (job_id, 1)])
    retire(engine, "w")
    assert _holders(engine, job_id) == {0: None, 1: None}


def test_halve_keeps_order_and_aliases_ride_second() -> None:
    """Halves hold the records in order; aliases go with the second half."""
    chunk = ChunkTexts("j", 3, "v", "m", list("abcde"), [0, 1, 2, 3, 4], list("abcde"), list("hhhhh"),
                       aliases=[["z", 9, "h", "a"]])
    first, second = halve(chunk, -1, -2)
    assert (first.seq, first.ids, first.positions, first.aliases) == (-1, ["a", "b"], [0, 1], [])
    assert (second.seq, second.ids, second.positions, second.aliases) == (-2, ["c", "d", "e"], [2, 3, 4],
                                                                           [["z", 9, "h", "a"]])


def test_split_chunk_in_the_ledger(engine) -> None:
    """A split closes the parent as `split`, adds two open halves with fresh negative seqs, and grows the job."""
    job_id, texts = _job(engine)
    halves = split_chunk(engine, texts[0], holder="w")
    assert [h.seq for h in halves] == [-1, -2]
    assert split_chunk(engine, texts[0], holder="w") == ()  # no longer open
    again = split_chunk(engine, halves[1], holder="w")
    assert [h.seq for h in again] == [-3, -4]
    stats = job_stats(engine, job_id)
    assert (stats.chunks_total, stats.chunks_done) == (6, 2)
    with engine.connect() as conn:
        rows = {r.seq: r for r in conn.execute(select(chunks).where(chunks.c.job_id == job_id))}
    assert (rows[0].state, rows[-2].state, rows[-1].state, rows[-3].parent_seq) == ("split", "split", "queued", -2)
    assert rows[-1].records + rows[-3].records + rows[-4].records == 4


def test_crash_cap_arithmetic() -> None:
    """A producer's chunk splits after max_deliveries crashes, a split-born half after crash_split_deliveries;
    retries do not count as crashes."""
    settings = Settings(max_deliveries=5, crash_split_deliveries=2)
    assert not crashed_too_often(5, 0, 7, settings) and crashed_too_often(6, 0, 7, settings)
    assert not crashed_too_often(6, 2, 7, settings)
    assert not crashed_too_often(2, 0, -1, settings) and crashed_too_often(3, 0, -1, settings)


def test_old_database_gains_new_columns(tmp_path) -> None:
    """A database created before holder/parent_seq existed gets them (NULL) on first use."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    get_engine(url)
    raw = create_engine(normalise_url(url))
    with raw.begin() as conn:
        conn.execute(text("DROP INDEX ix_chunks_holder_state"))
        conn.execute(text("ALTER TABLE chunks DROP COLUMN holder"))
        conn.execute(text("ALTER TABLE chunks DROP COLUMN parent_seq"))
        conn.execute(text("DROP TABLE workers"))
    raw.dispose()
    from embedfleet.storage.engine import _build

    engine = _build(url)
    with engine.connect() as conn:
        names = {r[1] for r in conn.execute(text("PRAGMA table_info(chunks)"))}
        assert {"holder", "parent_seq"} <= names
        assert conn.execute(text("SELECT count(*) FROM workers")).scalar_one() == 0
