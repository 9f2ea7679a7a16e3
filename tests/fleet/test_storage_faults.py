"""Records storage refuses, on the real fleet: real Redis, a real worker process, the real model,
PostgreSQL. A refused row costs that row, the worker keeps its staging table, and neither its log
nor its tasks' exceptions show a record's text or SQL parameters."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import text

from embedfleet.chunks.dead_letters import list_letters
from embedfleet.corpus.records import Record, content_hash
from embedfleet.fleet.celeryconfig import celery_config
from embedfleet.fleet.sending import celery_sender
from embedfleet.jobs.stats import job_stats
from embedfleet.jobs.submit import send_chunks
from embedfleet.settings import DEFAULT_MODEL, Settings
from embedfleet.store.collections import open_collection
from embedfleet.store.engine import get_engine
from embedfleet.store.ledger import close_submission, create_job
from tests.conftest import SAMPLE
from tests.fleet.checks import assert_accounted, wait_done

pytestmark = pytest.mark.fleet
MARKER = "ZZ-CONFIDENTIAL-CORPUS-TEXT-ZZ"


def _send_unvalidated(fleet, collection: str, ids: list[str], texts: list[str]) -> str:
    """A one-chunk job written through the ledger and sent as a producer would, with validation
    bypassed (as for data from an older version): the ids go to the worker as they are."""
    engine = get_engine(fleet.database_url)
    version = open_collection(engine, collection, DEFAULT_MODEL, {}, {})
    job_id = create_job(engine, collection, version.key, version.model, "unvalidated", {},
                        records_read=len(ids), skipped_invalid=0)
    records = [Record(i, n, t, content_hash(t), n + 1) for n, (i, t) in enumerate(zip(ids, texts))]
    app = Celery("storage-faults")
    app.conf.update(celery_config(Settings(broker_url=fleet.broker_url)))
    try:
        chunks, _ = send_chunks(engine, celery_sender(app), job_id, version, [records], 256)
    finally:
        app.close()
    close_submission(engine, job_id, chunks_total=chunks, truncated=0)
    return job_id


def _corpus(tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    path = tmp_path / "corpus.jsonl"
    ids = []
    with SAMPLE.open() as src, path.open("w") as out:
        for _, line in zip(range(n), src):
            record = json.loads(line)
            out.write(json.dumps({"id": record["id"], "text": f"{record['title']}\n{record['description']}"}) + "\n")
            ids.append(record["id"])
    return path, ids


def test_refused_rows_become_letters_and_the_next_job_stores_everything(pg_url, make_fleet, tmp_path):
    """A chunk with an over-long id and a NUL in an id (and in its text) stores its other records;
    each refused one is one StorageRejected letter; the job is done and adds up. Then a job of 195
    valid records on the same worker process stores all of them (the staging table survived the
    failed transaction). The worker's log never shows the records' text."""
    fleet = make_fleet(pg_url)
    fleet.start_worker("w1")
    fleet.wait_ready(["w1"])
    ids = ["ok-0", "L" * 600, "ok-2", "nul\x00id", "ok-4", "ok-5"]
    texts = [f"{MARKER} record {n}" for n in range(6)]
    texts[3] = f"{MARKER} with a\x00NUL"
    job_id = _send_unvalidated(fleet, "rejects", ids, texts)
    stats = wait_done(pg_url, job_id, timeout=180)
    assert (stats.stored, stats.dead, stats.records_read) == (4, 2, 6), stats.as_dict()
    assert stats.stored + stats.skipped + stats.dead == stats.records_read
    letters = sorted(list_letters(get_engine(pg_url), job_id), key=lambda letter: letter.position)
    assert [(letter.position, letter.error_type) for letter in letters] == [(1, "StorageRejected"),
                                                                          (3, "StorageRejected")]
    assert letters[0].record_id.endswith("...[600 chars]") and letters[1].record_id == "nul\\x00id"
    assert letters[1].text == f"{MARKER} with aNUL"
    assert all(MARKER not in letter.message for letter in letters)

    corpus, corpus_ids = _corpus(tmp_path, 195)
    second = fleet.cli("submit", str(corpus), "--collection", "after").stdout.split()[0]
    stats = wait_done(pg_url, second, timeout=240)
    assert (stats.stored, stats.dead) == (195, 0), stats.as_dict()
    assert_accounted(pg_url, second, "after", corpus_ids, tmp_path / "v.npy")

    log = fleet.log("w1")
    assert "isolating the rows it refuses" in log
    assert MARKER not in log


def test_a_failed_collector_task_shows_no_text_or_parameters(pg_url, make_fleet, tmp_path):
    """When the collector fails for good (here a constraint refuses every dead letter, so neither the
    chunk nor its letters can be written), the exception it raises (what Flower shows) and the
    worker's ERROR lines name the error type, never the record's text or the SQL parameters."""
    engine = get_engine(pg_url)
    with engine.begin() as conn:  # a database that refuses to keep this text, with the row in DETAIL
        conn.execute(text(f"ALTER TABLE dead_letters ADD CONSTRAINT no_marker CHECK (text NOT LIKE '%{MARKER}%')"))
    fleet = make_fleet(pg_url)
    fleet.start_worker("w1")
    fleet.wait_ready(["w1"])
    job_id = _send_unvalidated(fleet, "leaks", ["ok-0", "L" * 600], [f"{MARKER} zero", f"{MARKER} one"])
    log = ""
    deadline = time.monotonic() + 180
    while "could not dead-letter" not in log:
        assert time.monotonic() < deadline, log
        time.sleep(0.5)
        log = fleet.log("w1")
    assert MARKER not in log
    assert "parameters" not in log.lower()
    assert "raised unexpected: RedactedError('CheckViolation: new row for relation \"dead_letters\"" in log
    assert "giving up on job=" in log and "CheckViolation" in log
    assert job_stats(engine, job_id).state == "running"  # the chunk stays open for resume
