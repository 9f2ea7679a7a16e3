"""The fleet: real Redis (and RabbitMQ), two real worker processes, the real model, SQLite and PostgreSQL."""

from __future__ import annotations

import re
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
from celery import Celery
from sqlalchemy import func, select

from embedfleet.chunks.messages import ChunkTexts
from embedfleet.corpus.readers import Corpus
from embedfleet.corpus.records import FieldSpec
from embedfleet.fleet.celeryconfig import celery_config
from embedfleet.fleet.sending import celery_sender
from embedfleet.jobs.stats import job_stats
from embedfleet.jobs.submit import JobRequest, submit
from embedfleet.settings import Settings
from embedfleet.store.engine import get_engine
from embedfleet.store.export import read_ids
from embedfleet.store.schema import vectors
from tests.conftest import COMMIT_FIELDS, assert_matches_reference, commit_text, read_records
from tests.fleet.checks import BOTH_BROKERS, queued_messages

pytestmark = pytest.mark.fleet


def _wait_drained(broker_url: str, timeout: float = 120) -> None:
    """Until no message is waiting or unacked on the test's broker. RabbitMQ reports a quorum
    queue's counts every 5 s, so there the count must stay 0 for longer than that."""
    settle = 6.0 if broker_url.startswith("amqp") else 0.0
    deadline = time.monotonic() + timeout
    empty_since = None
    while time.monotonic() < deadline:
        if queued_messages(broker_url) != 0:
            empty_since = None
        elif empty_since is None:
            empty_since = time.monotonic()
        if empty_since is not None and time.monotonic() - empty_since >= settle:
            return
        time.sleep(0.2)
    raise AssertionError("queues not drained")


# Both databases on Redis, and PostgreSQL (what a multi-host fleet uses) on RabbitMQ: the four
# combinations would add a minute for little more coverage.
@pytest.mark.parametrize(("db_url", "broker_url"), [("sqlite", "redis"), ("postgres", "redis"),
                                                    ("postgres", "rabbitmq")], indirect=True)
def test_two_workers_store_every_record_once(db_url: str, make_fleet, small_corpus: Path, tmp_path: Path,
                                             reference_model) -> None:
    """submit --wait on two worker processes: every record stored once, in corpus order, right vectors."""
    fleet = make_fleet(db_url, EMBEDFLEET_TORCH_THREADS="1")
    fleet.start_worker("w1")
    fleet.start_worker("w2")
    fleet.wait_ready(["w1", "w2"])

    result = fleet.cli("submit", str(small_corpus), "--collection", "commits", "--fields", ",".join(COMMIT_FIELDS),
                       "--chunk-size", "8", "--wait")
    job_id = result.stdout.split()[0]
    assert "stored 150, skipped 0, dead 0" in result.stdout

    status = fleet.cli("status", job_id, "--json")
    assert '"state": "done"' in status.stdout and '"chunks_done": 19' in status.stdout

    out = tmp_path / "fleet.npy"
    fleet.cli("export", "--collection", "commits", "--out", str(out))
    records = read_records(small_corpus)
    assert read_ids(tmp_path / "fleet.ids.jsonl") == [r["id"] for r in records]
    assert_matches_reference(reference_model, [commit_text(r) for r in records], np.load(out))
    # Both processes took chunks: the work was shared, not done by one. Each stored what it encoded.
    assert "encoded job=" in fleet.log("w1") and "encoded job=" in fleet.log("w2")
    assert "collected=queue" not in fleet.log("w1") + fleet.log("w2")
    # What a person reads: progress lines naming the job, the summary once, a worker log with
    # the time on every line, routine events at INFO and no third-party bar.
    assert f"job {job_id[:8]} running: " in result.stderr
    assert len(re.findall(r"job [0-9a-f]+ done", result.stdout + result.stderr)) == 1
    log = fleet.log("w1")
    assert re.search(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}: INFO/ForkPoolWorker-\d+\] "
                     r"embedfleet\.fleet\.tasks: encoded job=", log, re.MULTILINE), log
    assert re.search(r"INFO/ForkPoolWorker-\d+\] embedfleet\.encode\.(openvino|encoder): loaded .* in [\d.]+ s", log), log
    assert "Loading weights" not in log and "it/s]" not in log
    assert not re.search(r"(WARNING|ERROR|CRITICAL)/", log), log


def test_an_encode_only_worker_leaves_storing_to_a_collector_node(sqlite_url: str, make_fleet, small_corpus: Path,
                                                                 tmp_path: Path, reference_model) -> None:
    """A worker started with -Q embed (a GPU node beside collector nodes) does not store the chunks it encodes: their
    vectors wait on the collect queue until a collector node (-Q collect) stores them, every record once, right.
    (The default worker, consuming every queue, stores its own: test_two_workers_store_every_record_once.)"""
    fleet = make_fleet(sqlite_url, EMBEDFLEET_TORCH_THREADS="1")
    fleet.start_worker("enc", "-Q", "embed,dead_letter")
    fleet.wait_ready(["enc"])
    job_id = fleet.cli("submit", str(small_corpus), "--collection", "split", "--fields", ",".join(COMMIT_FIELDS),
                       "--chunk-size", "8").stdout.split()[0]
    engine = get_engine(sqlite_url)
    deadline = time.monotonic() + 180
    while queued_messages(fleet.broker_url, ("collect",)) < 19:  # every chunk encoded, its vectors waiting
        assert time.monotonic() < deadline, (queued_messages(fleet.broker_url, ("collect",)), fleet.tail("enc"))
        time.sleep(0.3)
    assert job_stats(engine, job_id).stored == 0
    assert "collected=queue" in fleet.log("enc") and "collected=here" not in fleet.log("enc")

    fleet.start_worker("col", "-Q", "collect")
    while job_stats(engine, job_id).state != "done":
        assert time.monotonic() < deadline + 120, job_stats(engine, job_id)
        time.sleep(0.3)
    assert job_stats(engine, job_id).stored == 150
    out = tmp_path / "split.npy"
    fleet.cli("export", "--collection", "split", "--out", str(out))
    records = read_records(small_corpus)
    assert read_ids(tmp_path / "split.ids.jsonl") == [r["id"] for r in records]
    assert_matches_reference(reference_model, [commit_text(r) for r in records], np.load(out))


@BOTH_BROKERS
def test_redelivered_chunks_leave_one_row_per_record(sqlite_url: str, make_fleet, small_corpus: Path) -> None:
    """Every chunk sent twice (as after a redelivery): one row per record, stored counted once."""
    fleet = make_fleet(sqlite_url, EMBEDFLEET_TORCH_THREADS="1")
    fleet.start_worker("w1")
    fleet.start_worker("w2")
    fleet.wait_ready(["w1", "w2"])

    app = Celery("producer-under-test")
    app.conf.update(celery_config(Settings(broker_url=fleet.broker_url)))
    send_once = celery_sender(app)

    def send_twice(chunk: ChunkTexts) -> None:
        send_once(chunk)
        send_once(ChunkTexts.from_wire(msgpack.unpackb(msgpack.packb(chunk.to_wire()))))

    engine = get_engine(sqlite_url)
    request = JobRequest(Corpus(str(small_corpus)), "commits", Settings().model,
                         FieldSpec(text_fields=COMMIT_FIELDS), chunk_size=10)
    submission = submit(engine, request, send_twice)
    deadline = time.monotonic() + 300
    while job_stats(engine, submission.job_id).state != "done":
        assert time.monotonic() < deadline, job_stats(engine, submission.job_id)
        time.sleep(0.3)
    _wait_drained(fleet.broker_url)
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(vectors)).scalar_one()
        distinct = conn.execute(select(func.count(func.distinct(vectors.c.record_id)))).scalar_one()
    assert rows == distinct == 150
    assert job_stats(engine, submission.job_id).stored == 150
    app.close()
