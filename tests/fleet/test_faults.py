"""Fault injection on the real fleet: real Redis, real worker processes, the real model.

Every test ends with the same accounting: stored + skipped + dead = records read, no record
stored twice, export in corpus order.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import time

import pytest
import redis
from kombu import Connection, Exchange, Producer

from embedfleet.chunks.dead_letters import list_letters
from embedfleet.jobs.stats import job_stats
from embedfleet.store.engine import get_engine
from embedfleet.store.export import read_ids
from tests.encode.fault_encoders import NAN_MARKER, POISON_MARKER
from tests.fleet.checks import (
    BOTH_BROKERS,
    FAULTS,
    assert_accounted,
    fault_corpus,
    start_workers,
    submit_corpus,
    wait_done,
    wait_started,
)

pytestmark = pytest.mark.fleet


def test_kill_9_worker_mid_job_then_restart(sqlite_url, make_fleet, tmp_path, kill_env, recovery) -> None:
    """kill -9 one of two workers (parent and pool) mid-job and start it again: the job completes."""
    fleet = make_fleet(sqlite_url, **kill_env)
    start_workers(fleet, "w1", "w2")
    corpus, ids = fault_corpus(tmp_path, 120)
    job_id = submit_corpus(fleet, corpus)
    wait_started(sqlite_url, job_id)
    victims = [fleet.procs["w1"].pid, *fleet.pool_children("w1")]
    killed_at = time.monotonic()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    fleet.procs["w1"].wait()
    fleet.start_worker("w1")
    stats = wait_done(sqlite_url, job_id)
    recovery("kill -9 worker, restart", time.monotonic() - killed_at, 120)
    assert_accounted(sqlite_url, job_id, "faults", ids, tmp_path / "out.npy")
    assert stats.stored == 120 and stats.dead == 0


def test_kill_9_parent_holding_a_chunk(sqlite_url, make_fleet, tmp_path, kill_env, recovery) -> None:
    """kill -9 a worker's parent while its pool holds a reserved chunk: the other worker finishes the job."""
    fleet = make_fleet(sqlite_url, **kill_env)
    start_workers(fleet, "w1", "w2")
    corpus, ids = fault_corpus(tmp_path, 120)
    job_id = submit_corpus(fleet, corpus)
    wait_started(sqlite_url, job_id)
    killed_at = time.monotonic()
    os.kill(fleet.procs["w1"].pid, signal.SIGKILL)
    stats = wait_done(sqlite_url, job_id)
    recovery("kill -9 parent holding a chunk", time.monotonic() - killed_at, 120)
    assert_accounted(sqlite_url, job_id, "faults", ids, tmp_path / "out.npy")
    assert stats.stored == 120 and stats.dead == 0


def test_redis_flushed_mid_job_then_resume(pg_url, make_fleet, tmp_path, kill_env, recovery) -> None:
    """The broker loses every queue mid-job; `resume` re-sends the open chunks and the job completes."""
    fleet = make_fleet(pg_url, **kill_env)
    start_workers(fleet, "w1", "w2")
    corpus, ids = fault_corpus(tmp_path, 120)
    job_id = submit_corpus(fleet, corpus)
    wait_started(pg_url, job_id)
    redis.Redis.from_url(fleet.broker_url).flushdb()
    flushed_at = time.monotonic()
    time.sleep(1.0)
    assert job_stats(get_engine(pg_url), job_id).state == "running"
    resumed = fleet.cli("resume", job_id)
    assert "re-sent" in resumed.stdout
    stats = wait_done(pg_url, job_id)
    recovery("redis flushed, resume", time.monotonic() - flushed_at, 120)
    assert_accounted(pg_url, job_id, "faults", ids, tmp_path / "out.npy")
    assert stats.stored == 120 and stats.resends > 0


def test_reconciler_resends_after_broker_loss(pg_url, make_fleet, tmp_path, kill_env, recovery) -> None:
    """Redis flushed mid-job and nobody runs resume: beat's reconciler re-sends the stalled chunks."""
    fleet = make_fleet(pg_url, **kill_env, EMBEDFLEET_LEASE_SECONDS="3", EMBEDFLEET_RECONCILE_EVERY_SECONDS="1")
    start_workers(fleet, "w1")
    corpus, ids = fault_corpus(tmp_path, 64)
    job_id = submit_corpus(fleet, corpus)
    wait_started(pg_url, job_id)
    redis.Redis.from_url(fleet.broker_url).flushdb()
    flushed_at = time.monotonic()
    fleet.start("beat", "beat", "-s", str(tmp_path / "beat-schedule"))
    stats = wait_done(pg_url, job_id)
    recovery("redis flushed, reconciler", time.monotonic() - flushed_at, 120)
    assert_accounted(pg_url, job_id, "faults", ids, tmp_path / "out.npy")
    assert stats.stored == 64 and stats.resends > 0
    assert "re-sent" in fleet.log("w1")


def test_poison_records_are_isolated_then_redriven(sqlite_url, make_fleet, tmp_path) -> None:
    """Exactly the marked records become dead letters; redrive with the normal encoder stores them."""
    fleet = make_fleet(sqlite_url)
    start_workers(fleet, "poison", EMBEDFLEET_ENCODER=f"{FAULTS}:PoisonEncoder")
    marked = {3: POISON_MARKER, 17: POISON_MARKER, 18: POISON_MARKER}
    corpus, ids = fault_corpus(tmp_path, 40, marked)
    job_id = submit_corpus(fleet, corpus)
    stats = wait_done(sqlite_url, job_id)
    assert_accounted(sqlite_url, job_id, "faults", ids, tmp_path / "out.npy")
    letters = list_letters(get_engine(sqlite_url), job_id)
    assert sorted(letter.position for letter in letters) == [3, 17, 18]
    assert {letter.error_type for letter in letters} == {"ValueError"}
    assert (stats.stored, stats.dead) == (37, 3)
    assert "3" in fleet.cli("dlq", "list", "--job", job_id).stdout
    # The dead_letter queue's notices (what Flower shows) count the same three records.
    deadline = time.monotonic() + 20
    while (noticed := sum(int(m) for m in re.findall(rf"dead letters job={job_id} chunk=\d+ count=(\d+)",
                                                     fleet.log("poison")))) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert noticed == 3

    fleet.stop()
    fleet.procs.clear()
    start_workers(fleet, "normal")
    redrive_job = fleet.cli("dlq", "redrive", "--job", job_id).stdout.split()[0]
    wait_done(sqlite_url, redrive_job)
    assert list_letters(get_engine(sqlite_url), job_id) == []
    assert "no dead letters" in fleet.cli("dlq", "list", "--job", job_id).stderr
    assert_accounted(sqlite_url, redrive_job, "faults", ids, tmp_path / "after.npy")
    assert len(read_ids(tmp_path / "after.ids.jsonl")) == 40


@BOTH_BROKERS
def test_transient_failures_retry_and_are_counted(sqlite_url, make_fleet, tmp_path) -> None:
    """Two transient failures, then success: every record stored, two retries on the job."""
    state = tmp_path / "state"
    state.mkdir()
    fleet = make_fleet(sqlite_url, EMBEDFLEET_TEST_STATE_DIR=str(state))
    start_workers(fleet, "flaky", EMBEDFLEET_ENCODER=f"{FAULTS}:FlakyEncoder")
    corpus, ids = fault_corpus(tmp_path, 24)
    job_id = submit_corpus(fleet, corpus)
    stats = wait_done(sqlite_url, job_id)
    assert_accounted(sqlite_url, job_id, "faults", ids, tmp_path / "out.npy")
    assert (stats.stored, stats.dead, stats.retries, stats.giveups) == (24, 0, 2, 0)


def test_out_of_memory_splits_the_chunk(sqlite_url, make_fleet, tmp_path) -> None:
    """An encoder that runs out of memory above 4 texts: the job completes by halving, splits counted."""
    fleet = make_fleet(sqlite_url)
    start_workers(fleet, "oom", EMBEDFLEET_ENCODER=f"{FAULTS}:OutOfMemoryEncoder")
    corpus, ids = fault_corpus(tmp_path, 32)
    job_id = submit_corpus(fleet, corpus)
    stats = wait_done(sqlite_url, job_id)
    assert_accounted(sqlite_url, job_id, "faults", ids, tmp_path / "out.npy")
    assert (stats.stored, stats.dead) == (32, 0)
    assert stats.splits >= 4  # each chunk of 8 halved at least once


def test_nan_vector_is_a_dead_letter(pg_url, make_fleet, tmp_path) -> None:
    """A record whose vector comes back NaN is never stored: it is a dead letter, the rest are stored."""
    fleet = make_fleet(pg_url)
    start_workers(fleet, "nan", EMBEDFLEET_ENCODER=f"{FAULTS}:NaNEncoder")
    corpus, ids = fault_corpus(tmp_path, 20, {5: NAN_MARKER})
    job_id = submit_corpus(fleet, corpus)
    stats = wait_done(pg_url, job_id)
    assert_accounted(pg_url, job_id, "faults", ids, tmp_path / "out.npy")
    (letter,) = list_letters(get_engine(pg_url), job_id)
    assert (letter.position, letter.error_type) == (5, "InvalidVector")
    assert (stats.stored, stats.dead) == (19, 1)


def test_bad_input_on_the_fleet(sqlite_url, make_fleet, tmp_path) -> None:
    """A bad corpus is refused with line-numbered errors before anything is queued; --skip-invalid sends the rest."""
    fleet = make_fleet(sqlite_url)
    corpus = tmp_path / "bad.jsonl"
    corpus.write_bytes(
        b'{"id": "a", "text": "fine"}\n{"id": "a", "text": "dup"}\n{"id": "c", "text": 7}\n'
        b'{"id": "d", "text": "   "}\n{"id": "e", "text": "bad \xff byte"}\n{oops\n{"id": "g", "text": "also fine"}\n'
    )
    refused = fleet.cli("submit", str(corpus), "--collection", "bad", check=False)
    assert refused.returncode == 2
    for expected in ("line 2 (id 'a'): duplicate id (first at line 1)", "line 3 (id 'c'): field 'text' is int",
                     "line 4 (id 'd'): empty text", "line 5: invalid UTF-8", "line 6: malformed JSON"):
        assert expected in refused.stderr, refused.stderr
    assert redis.Redis.from_url(fleet.broker_url).llen("embed") == 0

    start_workers(fleet, "w1")
    job_id = fleet.cli("submit", str(corpus), "--collection", "bad", "--skip-invalid").stdout.split()[0]
    stats = wait_done(sqlite_url, job_id)
    assert (stats.records_read, stats.stored, stats.skipped, stats.dead) == (7, 2, 5, 0)
    assert_accounted(sqlite_url, job_id, "bad", ["a", "g"], tmp_path / "out.npy")


class _Trap:
    """Unpickling this would create a file: proof that a pickled message ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def test_pickled_message_is_refused(sqlite_url, make_fleet, tmp_path) -> None:
    """A pickled message on the embed queue is refused and nothing of it runs; the worker lives on."""
    fleet = make_fleet(sqlite_url)
    start_workers(fleet, "w1")
    trap = tmp_path / "pickle-ran"
    with Connection(fleet.broker_url) as conn:
        producer = Producer(conn.channel(), exchange=Exchange("embed", type="direct"), routing_key="embed")
        producer.publish(
            pickle.dumps({"chunk": _Trap(str(trap))}), content_type="application/x-python-serialize",
            content_encoding="binary", headers={"task": "embed.encode_chunk", "id": "trap-1", "argsrepr": "()"},
        )
    deadline = time.monotonic() + 20
    while "untrusted content" not in fleet.log("w1").lower() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "untrusted content" in fleet.log("w1").lower()
    assert not trap.exists()
    assert fleet.procs["w1"].poll() is None
    corpus, _ids = fault_corpus(tmp_path, 8)
    stats = wait_done(sqlite_url, submit_corpus(fleet, corpus))
    assert stats.stored == 8


def test_no_password_in_logs_or_status(make_fleet, tmp_path, pg_url) -> None:
    """A database password in the URL never shows in the worker's log or in status output."""
    with_password = pg_url.replace("postgres@", "postgres:s3cret-pw@")
    fleet = make_fleet(with_password)
    fleet.start_worker("w1", "-l", "DEBUG")
    fleet.wait_ready(["w1"])
    corpus, _ = fault_corpus(tmp_path, 8)
    job_id = submit_corpus(fleet, corpus)
    wait_done(pg_url, job_id)
    status = fleet.cli("status", job_id, "--json")
    assert "s3cret-pw" not in status.stdout + status.stderr
    assert "s3cret-pw" not in fleet.log("w1")

