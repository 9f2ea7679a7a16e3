"""What the fleet tests share: a marked corpus, starting workers, submitting, and the checks
every fault-injection test makes of a finished job."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from sqlalchemy import func, select

from embedfleet.jobs.stats import JobStats, job_stats
from embedfleet.store.collections import get_collection
from embedfleet.store.engine import get_engine
from embedfleet.store.export import export_npy, ids_path_for, read_ids
from embedfleet.store.schema import dead_letters, vectors
from tests.conftest import SAMPLE

FAULTS = "tests.encode.fault_encoders"
# A fleet test marked with this runs twice, on Redis and on RabbitMQ (the broker_url fixture,
# tests/conftest.py). Not every fleet test: the suite's time would double.
BOTH_BROKERS = pytest.mark.parametrize("broker_url", ["redis", "rabbitmq"], indirect=True)


def queued_messages(broker_url: str, queues: tuple[str, ...] = ("embed", "collect")) -> int:
    """Messages waiting or delivered-but-unacked on these queues of the test's broker."""
    if broker_url.startswith("amqp"):
        listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", broker_url.rsplit("/", 1)[1],
                                 "--no-table-headers", "name", "messages"],
                                capture_output=True, text=True, timeout=60, check=True).stdout
        counts = dict(line.split("\t") for line in listed.splitlines() if line.strip())
        return sum(int(counts.get(name, 0)) for name in queues)
    client = redis.Redis.from_url(broker_url)
    try:
        return sum(client.llen(name) for name in queues) + client.hlen("unacked")
    finally:
        client.close()


def wait_done(db_url: str, job_id: str, timeout: float = 240) -> JobStats:
    import time

    engine = get_engine(db_url)
    deadline = time.monotonic() + timeout
    while True:
        stats = job_stats(engine, job_id)
        if stats.state == "done":
            return stats
        assert time.monotonic() < deadline, f"job not done after {timeout}s: {stats.as_dict()}"
        time.sleep(0.25)


def assert_accounted(db_url: str, job_id: str, collection: str, corpus_ids: list[str], out: Path) -> JobStats:
    """stored + skipped + dead = records read; one row per record; export in corpus order."""
    engine = get_engine(db_url)
    stats = job_stats(engine, job_id)
    assert stats.state == "done", stats.as_dict()
    key = get_collection(engine, collection).current_key
    assert stats.stored + stats.skipped + stats.dead == stats.records_read, stats.as_dict()
    with engine.connect() as conn:
        rows = conn.execute(
            select(vectors.c.record_id, func.count()).where(vectors.c.version_key == key)
            .group_by(vectors.c.record_id).having(func.count() > 1)
        ).all()
        letters = conn.execute(
            select(dead_letters.c.record_id, func.count()).where(dead_letters.c.job_id == job_id)
            .group_by(dead_letters.c.record_id).having(func.count() > 1)
        ).all()
    assert rows == [] and letters == [], (rows, letters)
    export_npy(engine, key, out)
    exported = read_ids(ids_path_for(out))
    assert exported == [i for i in corpus_ids if i in set(exported)]
    assert np.isfinite(np.load(out)).all()
    return stats


def fault_corpus(tmp_path: Path, n: int, marked: dict[int, str] | None = None) -> tuple[Path, list[str]]:
    """The first n records of the real sample, one text field, some records marked."""
    path = tmp_path / "corpus.jsonl"
    ids = []
    with SAMPLE.open() as src, path.open("w") as out:
        for i, line in zip(range(n), src):
            record = json.loads(line)
            text = f"{record['title']}\n{record['description']}"[:600]
            if marked and i in marked:
                text = f"{text} {marked[i]}"
            out.write(json.dumps({"id": record["id"], "text": text}) + "\n")
            ids.append(record["id"])
    return path, ids


def start_workers(fleet, *names: str, **env: str) -> None:
    for name in names:
        fleet.start_worker(name, **env)
    fleet.wait_ready(list(names))


def submit_corpus(fleet, corpus: Path, *extra: str) -> str:
    return fleet.cli("submit", str(corpus), "--collection", "faults", "--chunk-size", "8", *extra).stdout.split()[0]


def wait_started(db_url: str, job_id: str, chunks: int = 2) -> None:
    deadline = time.monotonic() + 60
    while job_stats(get_engine(db_url), job_id).chunks_done < chunks:
        assert time.monotonic() < deadline
        time.sleep(0.1)
