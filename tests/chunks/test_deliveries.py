"""Delivery counting and crash isolation: when a chunk has crashed its process too often, and
how it is halved in the ledger down to the one record that kills its process."""

from __future__ import annotations

import msgpack

from embedfleet.chunks.deliveries import (
    WORKER_CRASHED,
    crashed_too_often,
    halve,
    isolate_crash,
    model_backoff,
    repeat_backoff,
    repeat_wait_retries,
    split_chunk,
)
from embedfleet.chunks.messages import ChunkTexts
from embedfleet.settings import Settings
from embedfleet.store.engine import get_engine
from embedfleet.store.ledger import unstarted_halves
from tests.store.helpers import live_job


def test_crash_cap_arithmetic() -> None:
    """A producer's chunk splits after max_deliveries crashes, a split-born half after crash_split_deliveries;
    retries do not count as crashes."""
    settings = Settings(max_deliveries=5, crash_split_deliveries=2)
    assert not crashed_too_often(5, 0, 7, settings) and crashed_too_often(6, 0, 7, settings)
    assert not crashed_too_often(6, 2, 7, settings)
    assert not crashed_too_often(2, 0, -1, settings) and crashed_too_often(3, 0, -1, settings)


def test_halve_keeps_order_and_aliases_ride_second() -> None:
    """Halves hold the records in order; aliases go with the second half."""
    chunk = ChunkTexts("j", 3, "v", "m", list("abcde"), [0, 1, 2, 3, 4], list("abcde"), list("hhhhh"),
                       aliases=[["z", 9, "h", "a"]])
    first, second = halve(chunk, -1, -2)
    assert (first.seq, first.ids, first.positions, first.aliases) == (-1, ["a", "b"], [0, 1], [])
    assert (second.seq, second.ids, second.positions, second.aliases) == (-2, ["c", "d", "e"], [2, 3, 4],
                                                                           [["z", 9, "h", "a"]])


def test_split_chunk_stores_the_halves_messages(db_url) -> None:
    """The halves returned are the messages the ledger keeps (re-sent as they are if the splitter dies);
    a chunk no longer open gives none."""
    engine = get_engine(db_url)
    job_id, texts = live_job(engine)
    halves = split_chunk(engine, texts[0], holder="w")
    assert [(h.seq, h.ids) for h in halves] == [(-1, texts[0].ids[:2]), (-2, texts[0].ids[2:])]
    kept = [ChunkTexts.from_wire(msgpack.unpackb(p)) for p in unstarted_halves(engine, job_id, 0)]
    assert sorted(kept, key=lambda h: -h.seq) == list(halves)
    assert split_chunk(engine, texts[0], holder="w") == ()


def test_isolate_crash_splits_a_chunk_and_letters_a_lone_record(sqlite_url) -> None:
    """Several records: halves, no letters. One record left: one WorkerCrashed letter, no halves."""
    engine = get_engine(sqlite_url)
    _, texts = live_job(engine)
    dead, halves = isolate_crash(engine, texts[0], deliveries=3, holder="w")
    assert dead == [] and len(halves) == 2
    lone = halve(halves[0], 0, 0)[1]  # one record of the first half
    dead, halves = isolate_crash(engine, lone, deliveries=3, holder="w")
    assert halves == () and [(d.record_id, d.error_type) for d in dead] == [(lone.ids[0], WORKER_CRASHED)]
    assert "died in 2 deliveries" in dead[0].message


def test_model_backoff_is_whole_seconds_at_least() -> None:
    """RabbitMQ's native delayed delivery refuses a countdown under 1 s (int(countdown) == 0):
    the first backoff, 1 s with jitter, must not fall below it or the retry is rejected."""
    assert min(model_backoff(1) for _ in range(500)) >= 1.0
    assert max(model_backoff(30) for _ in range(500)) <= 60.0 * 1.2


def test_repeats_wait_two_leases_for_their_first_record() -> None:
    """A collect whose repeated texts wait for their first record backs off 1, 2, 4 ... 60 s and
    gives up (SourceNotStored letters) only after two leases of waiting, never before the
    transient errors' retries."""
    assert [repeat_backoff(r) for r in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    settings = Settings()
    retries = repeat_wait_retries(settings)
    waited = sum(repeat_backoff(r) for r in range(retries))
    assert waited >= 2 * settings.lease_seconds > sum(repeat_backoff(r) for r in range(retries - 1))
    assert (retries, waited) == (9, 243.0)  # the defaults: lease 120 s
    assert repeat_wait_retries(Settings(lease_seconds=1)) == settings.max_retries
