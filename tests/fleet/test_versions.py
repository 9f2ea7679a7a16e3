"""Migration with cutover and rollback, search, and the scheduled reindex: real fleet, real models."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from celery import Celery

from embedfleet.fleet.beat import beat_schedule
from embedfleet.fleet.celeryconfig import celery_config
from embedfleet.jobs.stats import job_stats
from embedfleet.settings import Settings
from embedfleet.store.engine import get_engine
from tests.conftest import SAMPLE
from tests.fleet.checks import wait_done

pytestmark = pytest.mark.fleet
SLOW = {"EMBEDFLEET_ENCODER": "tests.encode.fault_encoders:SlowEncoder", "EMBEDFLEET_TEST_DELAY": "0.3"}


def _titles(tmp_path: Path, n: int) -> tuple[Path, list[dict]]:
    records = [{"id": r["id"], "text": r["title"]} for r in map(json.loads, SAMPLE.read_text().splitlines()[:n])]
    path = tmp_path / "titles.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, records


def _top(fleet, query: str) -> tuple[str, float]:
    _rank, score, record_id = fleet.cli("search", "--collection", "docs", query, "-k", "3").stdout.splitlines()[0].split("\t")
    return record_id, float(score)


def test_migration_search_cutover_rollback(sqlite_url, make_fleet, tmp_path, small_model_dir) -> None:
    """Reads stay on the current version while a migration fills the next; cutover and rollback switch them."""
    fleet = make_fleet(sqlite_url, EMBEDFLEET_TORCH_THREADS="1")
    fleet.start_worker("w1", **SLOW)
    fleet.wait_ready(["w1"])
    corpus, records = _titles(tmp_path, 60)
    fleet.cli("submit", str(corpus), "--collection", "docs", "--chunk-size", "6", "--wait")

    job_id = fleet.cli("migrate", "--collection", "docs", "--model", small_model_dir, "--no-cutover").stdout.split()[0]
    during = fleet.cli("status", "--collection", "docs", "--json").stdout
    assert '"state": "building"' in during
    record_id, score = _top(fleet, records[17]["text"])  # searched while version 2 is being filled
    assert record_id == records[17]["id"] and score > 0.99
    stats = wait_done(sqlite_url, job_id)
    assert (stats.stored, stats.dead, stats.version_key) == (60, 0, "docs__v2")

    out = tmp_path / "current.npy"
    fleet.cli("export", "--collection", "docs", "--out", str(out))
    assert np.load(out).shape == (60, 384)  # --no-cutover: still version 1
    assert "now reads version 2" in fleet.cli("cutover", "--collection", "docs").stdout
    fleet.cli("export", "--collection", "docs", "--out", str(out))
    assert np.load(out).shape == (60, 128)
    record_id, score = _top(fleet, records[42]["text"])
    assert record_id == records[42]["id"] and score > 0.99
    versions = json.loads(fleet.cli("status", "--collection", "docs", "--json").stdout)["versions"]
    assert [(v["version"], v["role"], v["rows"], v["dim"]) for v in versions] == [
        (1, "previous", 60, 384), (2, "current", 60, 128)]

    assert "now reads version 1" in fleet.cli("rollback", "--collection", "docs").stdout
    fleet.cli("export", "--collection", "docs", "--out", str(out))
    assert np.load(out).shape == (60, 384)
    assert "current" in fleet.cli("drop-version", "--collection", "docs", "--collection-version", "1", check=False).stderr
    fleet.cli("drop-version", "--collection", "docs", "--collection-version", "2")
    assert "no previous version" in fleet.cli("rollback", "--collection", "docs", check=False).stderr


def test_migration_cuts_over_when_complete(pg_url, make_fleet, tmp_path, small_model_dir) -> None:
    """Without --no-cutover the new version becomes current in the transaction that completes it."""
    fleet = make_fleet(pg_url, EMBEDFLEET_TORCH_THREADS="1")
    fleet.start_worker("w1")
    fleet.wait_ready(["w1"])
    corpus, records = _titles(tmp_path, 30)
    fleet.cli("submit", str(corpus), "--collection", "docs", "--wait")
    result = fleet.cli("migrate", "--collection", "docs", "--model", small_model_dir, "--wait")
    assert "stored 30" in result.stdout
    versions = json.loads(fleet.cli("status", "--collection", "docs", "--json").stdout)["versions"]
    assert [(v["role"], v["dim"]) for v in versions] == [("previous", 384), ("current", 128)]
    record_id, _ = _top(fleet, records[5]["text"])
    assert record_id == records[5]["id"]


def test_batch_search_answers_in_query_order(sqlite_url, make_fleet, tmp_path) -> None:
    """--batch-query prints one JSON line per query, in order; each record's own text finds it first."""
    fleet = make_fleet(sqlite_url)
    corpus, records = _titles(tmp_path, 40)
    fleet.cli("run", str(corpus), "--collection", "docs")
    queries = tmp_path / "queries.txt"
    picks = [3, 31, 0, 19]
    queries.write_text("".join(records[i]["text"] + "\n" for i in picks))
    lines = [json.loads(line) for line in fleet.cli("search", "--collection", "docs", "--batch-query", str(queries),
                                                    "-k", "5").stdout.splitlines()]
    assert [line["query"] for line in lines] == [records[i]["text"] for i in picks]
    assert [line["results"][0]["id"] for line in lines] == [records[i]["id"] for i in picks]
    assert all(len(line["results"]) == 5 for line in lines)
    scores = [r["score"] for r in lines[0]["results"]]
    assert scores == sorted(scores, reverse=True)


def test_scheduled_reindex_runs_once_and_embeds_only_changes(pg_url, make_fleet, tmp_path) -> None:
    """The beat task fired twice at once starts one reindex, which re-embeds only the changed record."""
    schedule = beat_schedule(Settings(reindex_collections="docs, other", reindex_cron="0 2 * * *"))
    assert schedule["reindex-docs"]["kwargs"] == {"collection": "docs"}
    assert schedule["reindex-docs"]["schedule"].hour == {2} and schedule["reindex-docs"]["schedule"].minute == {0}

    fleet = make_fleet(pg_url)
    fleet.start_worker("w1")
    fleet.wait_ready(["w1"])
    corpus, records = _titles(tmp_path, 40)
    fleet.cli("submit", str(corpus), "--collection", "docs", "--wait")
    records[9]["text"] = "a title that changed overnight"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))

    app = Celery("beat-under-test")
    app.conf.update(celery_config(Settings(broker_url=fleet.broker_url)))
    first = app.send_task("embed.reindex", kwargs={"collection": "docs"}, queue="collect")
    second = app.send_task("embed.reindex", kwargs={"collection": "docs"}, queue="collect")
    assert first.id != second.id
    engine = get_engine(pg_url)
    from sqlalchemy import select

    from embedfleet.store.schema import jobs

    deadline = time.monotonic() + 60
    while True:
        with engine.connect() as conn:
            ids = list(conn.execute(select(jobs.c.id).where(jobs.c.collection == "docs").order_by(jobs.c.created_at))
                       .scalars())
        if len(ids) >= 2 and job_stats(engine, ids[-1]).state == "done":
            break
        assert time.monotonic() < deadline, ids
        time.sleep(0.3)
    time.sleep(2)  # the second task has run by now; it must not have made a job
    with engine.connect() as conn:
        assert conn.execute(select(jobs.c.id).where(jobs.c.collection == "docs")).all().__len__() == 2
    stats = job_stats(engine, ids[-1])
    assert (stats.updated, stats.unchanged, stats.stored, stats.added) == (1, 39, 1, 0)
    assert "already started" in fleet.log("w1")
    app.close()
