"""embedfleet/jobs/metrics.py on a SQLite ledger holding hand-made job and chunk rows."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from prometheus_client import generate_latest
from sqlalchemy import JSON, Float, Integer, Table, insert

from embedfleet.jobs.metrics import collect_registry, job_metrics, recent_job_ids
from embedfleet.store.engine import get_engine
from embedfleet.store.ledger import LedgerError
from embedfleet.store.schema import chunks, dead_letters, jobs


def _row(table: Table, **given: Any) -> dict[str, Any]:
    """`given`, plus a filler for every other required column, so the rows survive schema additions."""
    row = dict(given)
    for column in table.c:
        if column.name in row or column.nullable or column.default is not None or column.autoincrement is True:
            continue
        if isinstance(column.type, JSON):
            row[column.name] = {}
        elif isinstance(column.type, Float):
            row[column.name] = 0.0
        elif isinstance(column.type, Integer):
            row[column.name] = 0
        else:
            row[column.name] = "x"
    return row


def _job(engine, job_id: str, created_at: float, finished_at: float | None, state: str = "done",
         records_read: int = 0, **extra: Any) -> None:
    with engine.begin() as conn:
        conn.execute(insert(jobs).values(_row(
            jobs, id=job_id, collection="docs", model="m", state=state, records_read=records_read,
            created_at=created_at, finished_at=finished_at, **extra,
        )))


def _chunk(engine, job_id: str, seq: int, stored: int, seconds: float | None, worker: str | None,
           state: str = "done") -> None:
    with engine.begin() as conn:
        conn.execute(insert(chunks).values(_row(
            chunks, job_id=job_id, seq=seq, state=state, records=stored, stored=stored,
            encode_seconds=seconds, worker=worker,
        )))


def _dead(engine, job_id: str, n: int) -> None:
    with engine.begin() as conn:
        for i in range(n):
            conn.execute(insert(dead_letters).values(_row(
                dead_letters, job_id=job_id, chunk_seq=0, record_id=f"dead-{i}", position=i, text="t",
                content_hash="h", error_type="ValueError", message="bad", created_at=time.time(),
            )))


@pytest.fixture
def engine(sqlite_url: str):
    return get_engine(sqlite_url)


def test_latency_percentiles_utilisation_and_error_rate(engine) -> None:
    """p50/p95 over done chunks only, busy seconds over wall time per worker, dead / (stored + dead)."""
    _job(engine, "a" * 32, created_at=1000.0, finished_at=1100.0, records_read=100)
    # Ten done chunks taking 1..10 s: w1 took the odd ones, w2 the even ones.
    for seq in range(10):
        _chunk(engine, "a" * 32, seq, stored=9, seconds=float(seq + 1), worker="w1@h" if seq % 2 == 0 else "w2@h")
    # An open chunk has no encode time yet and must not count.
    _chunk(engine, "a" * 32, 10, stored=0, seconds=None, worker=None, state="queued")
    _dead(engine, "a" * 32, 10)

    m = job_metrics(engine, "a" * 32)

    assert m["encode_p50_s"] == pytest.approx(5.5)
    assert m["encode_p95_s"] == pytest.approx(9.55)
    # w1: 1+3+5+7+9 = 25 s, w2: 2+4+6+8+10 = 30 s, over 100 s of wall time.
    assert m["worker_utilisation"] == {"w1@h": 0.25, "w2@h": 0.30}
    # 90 stored, 10 dead.
    assert m["error_rate"] == pytest.approx(0.1)
    json.dumps(m)  # flat and JSON-able, to merge into `status --json`


def test_cache_hit_rate_reads_the_unchanged_count_when_the_ledger_has_one(engine) -> None:
    """Records skipped as unchanged over records read; 0 on a ledger without such a column."""
    unchanged = next((c for c in ("skipped_unchanged", "unchanged") if c in jobs.c), None)
    extra = {unchanged: 30} if unchanged else {}
    _job(engine, "b" * 32, created_at=time.time() - 10, finished_at=None, state="running", records_read=120, **extra)

    m = job_metrics(engine, "b" * 32)

    assert m["cache_hit_rate"] == (pytest.approx(0.25) if unchanged else 0.0)
    assert m["encode_p50_s"] is None and m["encode_p95_s"] is None
    assert m["worker_utilisation"] == {} and m["error_rate"] == 0.0


def test_unknown_job_is_a_ledger_error(engine) -> None:
    """An unknown job id is refused like `status` refuses it."""
    with pytest.raises(LedgerError):
        job_metrics(engine, "f" * 32)


def test_recent_jobs_are_the_newest_plus_every_running_one(engine) -> None:
    """The newest N jobs, newest first, and an older job still running is not dropped."""
    _job(engine, "0" * 32, created_at=1.0, finished_at=None, state="running")
    for i in range(1, 5):
        _job(engine, str(i) * 32, created_at=float(i + 10), finished_at=float(i + 20))

    assert recent_job_ids(engine, limit=2) == ["4" * 32, "3" * 32, "0" * 32]


def test_the_collector_exports_each_job_with_job_and_collection_labels(engine) -> None:
    """The exposition text carries the ledger's figures per job, and the ledger's health."""
    _job(engine, "c" * 32, created_at=1000.0, finished_at=1010.0, records_read=20)
    _chunk(engine, "c" * 32, 0, stored=12, seconds=2.0, worker="w1@h")
    _chunk(engine, "c" * 32, 1, stored=8, seconds=4.0, worker="w1@h")

    text = generate_latest(collect_registry(engine)).decode()

    labels = f'collection="docs",job="{"c" * 32}"'
    assert "embedfleet_ledger_up 1.0" in text
    assert f"embedfleet_job_records_stored{{{labels}}} 20.0" in text
    assert f"embedfleet_job_records_read{{{labels}}} 20.0" in text
    assert f"embedfleet_job_chunks_done{{{labels}}} 2.0" in text
    assert f"embedfleet_job_encode_p50_seconds{{{labels}}} 3.0" in text
    assert f"embedfleet_job_records_per_second{{{labels}}} 2.0" in text
    assert f'embedfleet_job_worker_utilisation{{{labels},worker="w1@h"}} 0.6' in text


def test_the_series_stay_bounded_after_three_jobs(engine) -> None:
    """Three finished jobs under --limit 2: the per-job series are the two newest jobs' alone, and the
    fleet's gauges are one series each, with no job label, however many jobs ran."""
    import re

    for i, job_id in enumerate(("a" * 32, "b" * 32, "d" * 32)):
        _job(engine, job_id, created_at=1000.0 + i, finished_at=1010.0 + i, records_read=4)
        _chunk(engine, job_id, 0, stored=4, seconds=1.0, worker="w1@h")
    text = generate_latest(collect_registry(engine, limit=2)).decode()
    jobs_seen = set(re.findall(r'job="([0-9a-f]{32})"', text))
    assert jobs_seen == {"b" * 32, "d" * 32}
    for gauge in ("embedfleet_chunks_queued", "embedfleet_chunks_in_flight", "embedfleet_jobs_running"):
        assert len(re.findall(rf"^{gauge}(\{{.*\}})? ", text, re.MULTILINE)) == 1, gauge
    assert len(re.findall(r"^embedfleet_live_workers\{", text, re.MULTILINE)) == 4  # embed, collect, dead_letter, query


def test_the_collector_answers_when_the_ledger_is_unreadable(tmp_path) -> None:
    """A scrape with the database away reports embedfleet_ledger_up 0 instead of failing."""
    from sqlalchemy import create_engine

    broken = create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    text = generate_latest(collect_registry(broken)).decode()
    assert "embedfleet_ledger_up 0.0" in text
