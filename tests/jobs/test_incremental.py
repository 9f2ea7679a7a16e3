"""Incremental reindex on the embedded default: only new and changed records are embedded."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import numpy as np

from embedfleet.jobs.stats import job_stats
from embedfleet.store.engine import get_engine
from embedfleet.store.export import ids_path_for, read_ids
from tests.conftest import embedfleet

HASH = {"EMBEDFLEET_ENCODER": "tests.encode.fake_encoders:HashEncoder"}


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _stats(db: str, output: str):
    job_id = output.split()[1]
    return job_stats(get_engine(db), job_id)


def _ids(out: Path) -> list[str]:
    return read_ids(ids_path_for(out))


def test_unchanged_corpus_is_skipped_and_changes_are_applied(tmp_path: Path) -> None:
    """A second run skips everything (cache hits); edits, additions and --sync full deletions are exact."""
    db = f"sqlite:///{tmp_path / 'i.db'}"
    records = [{"id": f"r{i}", "text": f"record number {i}"} for i in range(50)]
    corpus = _write(tmp_path / "c.jsonl", records)
    first = _stats(db, embedfleet("run", str(corpus), "--collection", "inc", "--db", db, cwd=tmp_path, **HASH).stdout)
    assert (first.added, first.stored, first.unchanged) == (50, 50, 0)

    second = _stats(db, embedfleet("run", str(corpus), "--collection", "inc", "--db", db, cwd=tmp_path, **HASH).stdout)
    assert (second.added, second.updated, second.unchanged, second.stored, second.chunks_total) == (0, 0, 50, 0, 0)
    assert second.skipped == 50 and second.state == "done"

    records[3]["text"] = "an edited text"
    records[7]["text"] = "another edited text"
    del records[10]
    records.append({"id": "new", "text": "a new record"})
    _write(corpus, records)
    third = _stats(db, embedfleet("run", str(corpus), "--collection", "inc", "--sync", "full", "--db", db,
                                  cwd=tmp_path, **HASH).stdout)
    assert (third.added, third.updated, third.unchanged, third.deleted, third.stored) == (1, 2, 47, 1, 3)
    out = tmp_path / "v.npy"
    embedfleet("export", "--collection", "inc", "--out", str(out), "--db", db, cwd=tmp_path)
    assert _ids(out) == [r["id"] for r in records]


def test_without_sync_full_nothing_is_deleted(tmp_path: Path) -> None:
    """The default sync leaves vectors of records that left the source."""
    db = f"sqlite:///{tmp_path / 'i.db'}"
    corpus = _write(tmp_path / "c.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}])
    embedfleet("run", str(corpus), "--collection", "keep", "--db", db, cwd=tmp_path, **HASH)
    _write(corpus, [{"id": "a", "text": "x"}])
    stats = _stats(db, embedfleet("run", str(corpus), "--collection", "keep", "--db", db, cwd=tmp_path, **HASH).stdout)
    assert stats.deleted == 0
    out = tmp_path / "v.npy"
    embedfleet("export", "--collection", "keep", "--out", str(out), "--db", db, cwd=tmp_path)
    assert _ids(out) == ["a", "b"]


def test_identical_texts_are_embedded_once(tmp_path: Path) -> None:
    """Records repeating a text in one job are stored with the first one's vector, counted as deduplicated."""
    db = f"sqlite:///{tmp_path / 'd.db'}"
    records = [{"id": f"r{i}", "text": "same text" if i % 3 == 0 else f"text {i}"} for i in range(30)]
    corpus = _write(tmp_path / "c.jsonl", records)
    stats = _stats(db, embedfleet("run", str(corpus), "--collection", "dup", "--chunk-size", "4", "--db", db,
                                  cwd=tmp_path, **HASH).stdout)
    assert (stats.stored, stats.deduplicated, stats.dead) == (30, 9, 0)
    out = tmp_path / "v.npy"
    embedfleet("export", "--collection", "dup", "--out", str(out), "--db", db, cwd=tmp_path)
    matrix, ids = np.load(out), _ids(out)
    same = [ids.index(f"r{i}") for i in range(0, 30, 3)]
    assert all(np.array_equal(matrix[same[0]], matrix[i]) for i in same)


def test_sql_source_and_registered_reindex(tmp_path: Path) -> None:
    """A SQL table is read in pages; `reindex` re-runs it (the registered source) and embeds only the change."""
    source = tmp_path / "source.db"
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE tickets (id INTEGER PRIMARY KEY, title TEXT, body TEXT)")
        conn.executemany("INSERT INTO tickets VALUES (?, ?, ?)", [(i, f"title {i}", f"body {i}") for i in range(1, 2501)])
    db = f"sqlite:///{tmp_path / 'v.db'}"
    url = f"sqlite:///{source}"
    first = _stats(db, embedfleet("run", "--source-url", url, "--table", "tickets", "--fields", "title,body",
                                  "--collection", "tickets", "--db", db, cwd=tmp_path, **HASH).stdout)
    assert (first.records_read, first.stored) == (2500, 2500)
    with sqlite3.connect(source) as conn:
        conn.execute("UPDATE tickets SET body = 'changed' WHERE id = 1234")
    again = _stats(db, embedfleet("reindex", "--collection", "tickets", "--local", "--db", db, cwd=tmp_path,
                                  **HASH).stdout)
    assert (again.updated, again.unchanged, again.stored) == (1, 2499, 1)
    query = _stats(db, embedfleet("run", "--source-url", url, "--query", "SELECT id, title FROM tickets WHERE id <= 10 "
                                  "ORDER BY id", "--text-field", "title", "--collection", "titles", "--db", db,
                                  cwd=tmp_path, **HASH).stdout)
    assert query.stored == 10


def test_reindex_of_stdin_collection_is_refused(tmp_path: Path) -> None:
    """A collection made from stdin has no source to re-read: reindex says so."""
    db = f"sqlite:///{tmp_path / 's.db'}"
    import subprocess

    from tests.conftest import BIN, REPO
    subprocess.run([str(BIN / "embedfleet"), "run", "-", "--collection", "piped", "--db", db],
                   input='{"id": "a", "text": "x"}\n', text=True, check=True, capture_output=True,
                   env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **HASH})
    refused = embedfleet("reindex", "--collection", "piped", "--local", "--db", db, cwd=tmp_path, check=False, **HASH)
    assert refused.returncode == 2 and "stdin" in refused.stderr


def test_reindex_wait_prints_its_final_line_once(tmp_path: Path, redis_url: str) -> None:
    """`reindex --wait` of an unchanged source: the job is done before the first poll, and its
    done line is the summary, printed once (the progress display printed it twice)."""
    db = f"sqlite:///{tmp_path / 'w.db'}"
    corpus = _write(tmp_path / "c.jsonl", [{"id": f"r{i}", "text": f"record number {i}"} for i in range(20)])
    embedfleet("run", str(corpus), "--collection", "waited", "--db", db, cwd=tmp_path, **HASH)
    again = embedfleet("reindex", "--collection", "waited", "--wait", "--db", db, cwd=tmp_path,
                       EMBEDFLEET_BROKER_URL=redis_url, **HASH)
    job_id = again.stdout.split()[0]
    assert len(re.findall(r"job [0-9a-f]+ done", again.stdout + again.stderr)) == 1, again
    assert f"job {job_id} done: read 20, stored 0, skipped 20" in again.stdout


def test_a_version_storing_nothing_is_not_asked_about_each_batch(tmp_path: Path, monkeypatch) -> None:
    """A first load adds every record without a stored-state query per batch (the query
    PostgreSQL plans as a scan while the table is unanalyzed); a version that stores
    something is asked again, and its unchanged records are still found."""
    from embedfleet.corpus.records import Record, content_hash
    from embedfleet.corpus.validation import Scan
    from embedfleet.jobs import incremental
    from embedfleet.jobs.incremental import Changes, detect_changes
    from embedfleet.store.bulk import upsert_rows
    from embedfleet.store.codec import pack
    from embedfleet.store.collections import open_collection
    from embedfleet.store.vectors import bulk_write

    engine = get_engine(f"sqlite:///{tmp_path / 'd.db'}")
    key = open_collection(engine, "c", "m", {}, {}).key
    records = [Record(f"r{i}", i, f"text {i}", content_hash(f"text {i}"), line=i + 1) for i in range(1200)]
    asked: list[int] = []
    real_stored_state = incremental.stored_state

    def counting_stored_state(engine, version_key, record_ids):  # type: ignore[no-untyped-def]
        asked.append(1)
        return real_stored_state(engine, version_key, record_ids)

    monkeypatch.setattr(incremental, "stored_state", counting_stored_state)
    changes = Changes()
    assert [r.record_id for r in detect_changes(engine, key, records, Scan(), changes)] == [r.record_id for r in records]
    assert (asked, changes.added) == ([], 1200)

    with bulk_write(engine) as conn:
        upsert_rows(conn, [(key, "r0", 0, records[0].content_hash, "m", pack([[1.0]]), 0.0, None, None)])
    changes = Changes()
    assert len(list(detect_changes(engine, key, records, Scan(), changes))) == 1199
    assert (len(asked), changes.unchanged, changes.added) == (3, 1, 1199)  # 1,200 records: 3 batches of 512
