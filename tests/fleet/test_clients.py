"""Clients on the real fleet (real Redis, PostgreSQL, worker processes, the real model):
`submit --wait` through database drops, and cancelling a job mid-way."""

from __future__ import annotations

import subprocess
import time

import psycopg
import pytest
import redis
from sqlalchemy import func, select

from embedfleet.fleet.queues import COLLECT_QUEUE, EMBED_QUEUE
from embedfleet.jobs.stats import job_stats
from embedfleet.store.collections import get_collection
from embedfleet.store.engine import get_engine
from embedfleet.store.schema import chunks, vectors
from tests.conftest import BIN
from tests.fleet.checks import assert_accounted, fault_corpus, start_workers, submit_corpus, wait_done

pytestmark = pytest.mark.fleet


def _psql(url: str, sql: str) -> list[tuple]:
    """A connection of its own per statement: the test's side survives the terminations."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def test_wait_rides_out_terminated_database_connections(pg_url, make_fleet, tmp_path, kill_env) -> None:
    """Every other connection to the database is terminated four times mid-job: `submit --wait` keeps waiting, exits 0, no traceback."""
    fleet = make_fleet(pg_url, **kill_env)
    get_engine(pg_url)  # the schema, before anyone polls it
    start_workers(fleet, "w1")
    corpus, ids = fault_corpus(tmp_path, 96)
    proc = subprocess.Popen([str(BIN / "embedfleet"), "submit", str(corpus), "--collection", "faults", "--chunk-size",
                             "8", "--wait"], env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _psql(pg_url, "SELECT 1 FROM chunks WHERE state = 'done' LIMIT 1"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    terminated = 0
    for _ in range(4):
        terminated += len(_psql(pg_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        time.sleep(1.0)
    out, err = proc.communicate(timeout=300)
    get_engine(pg_url).dispose()  # this process's pooled connections were terminated too
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "lost the database connection" in err, err
    assert terminated >= 4
    job_id = out.split()[0]
    stats = assert_accounted(pg_url, job_id, "faults", ids, tmp_path / "out.npy")
    assert stats.stored == 96 and stats.dead == 0
    assert f"job {job_id} done" in out


def _queues_drained(broker_url: str) -> bool:
    client = redis.Redis.from_url(broker_url)
    try:
        return client.llen(EMBED_QUEUE) == 0 and client.llen(COLLECT_QUEUE) == 0 and not client.hlen("unacked")
    finally:
        client.close()


def test_cancel_a_migration_mid_job_then_drop_its_version(pg_url, make_fleet, tmp_path, kill_env) -> None:
    """cancel mid-job: later chunks are skipped by the worker, only committed chunks count, --wait stops, the version drops."""
    fleet = make_fleet(pg_url, **kill_env)
    start_workers(fleet, "w1")
    corpus, _ids = fault_corpus(tmp_path, 96)
    wait_done(pg_url, submit_corpus(fleet, corpus))
    engine = get_engine(pg_url)
    model = get_collection(engine, "faults").current.model
    migration = fleet.cli("migrate", "--collection", "faults", "--model", model, "--no-cutover")
    job_id = migration.stdout.split()[0]
    deadline = time.monotonic() + 120
    while job_stats(engine, job_id).chunks_done < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    cancelled = fleet.cli("cancel", job_id)
    assert f"cancelled job {job_id}" in cancelled.stdout
    deadline = time.monotonic() + 120
    while not (_queues_drained(fleet.broker_url) and f"skipping job={job_id}" in fleet.log("w1")):
        assert time.monotonic() < deadline, fleet.log("w1")[-3000:]
        time.sleep(0.2)
    time.sleep(3.0)  # a chunk encoded at the moment of cancel reaches the collector

    stats = job_stats(engine, job_id)
    key = "faults__v2"
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(vectors).where(vectors.c.version_key == key)).scalar_one()
        states = dict(conn.execute(select(chunks.c.state, func.count()).where(chunks.c.job_id == job_id)
                                   .group_by(chunks.c.state)).all())
    assert stats.state == "cancelled", stats.as_dict()
    assert stats.stored == rows and 0 < rows < 96, (stats.as_dict(), rows)
    assert states.get("cancelled", 0) > 0 and set(states) <= {"done", "cancelled"}, states
    assert stats.chunks_done == sum(states.values())

    watched = fleet.cli("status", job_id, "--watch", check=False)
    assert watched.returncode == 1 and "Traceback" not in watched.stderr
    assert watched.stderr.strip().splitlines()[-1].startswith(f"error: job {job_id} was cancelled")
    dropped = fleet.cli("drop-version", "--collection", "faults", "--collection-version", "2")
    assert f"{rows} vectors deleted" in dropped.stdout
    assert [v.state for v in get_collection(engine, "faults").versions] == ["ready", "dropped"]
