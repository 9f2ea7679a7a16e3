"""What the bench sections share: the report rows and their arithmetic, the corpora it writes,
the latest job's figures. Pure or SQLite only: fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.common import SECTIONS, BenchReport, cli_env, latest_job, load_records, write_corpus
from embedfleet.corpus.records import FieldSpec, Record, content_hash
from embedfleet.store.engine import get_engine
from tests.conftest import SAMPLE
from tests.store.helpers import job_with_chunks


def records(n: int) -> list[Record]:
    return [Record(f"r{i}", i, f"text {i}", content_hash(f"text {i}"), i + 1) for i in range(n)]


def test_a_row_has_rounded_seconds_and_a_rate(capsys: pytest.CaptureFixture[str]) -> None:
    """add() rounds seconds to ms, derives records/s from the unrounded seconds, keeps extras
    (dropping None), and prints the row to stderr."""
    report = BenchReport(corpus="c.jsonl", records=10)
    row = report.add("run", "embedfleet run", 2.00049, 500, ratio=1.5, cosine=None)
    assert row == {"section": "run", "what": "embedfleet run", "seconds": 2.0, "records_per_s": 249.9, "ratio": 1.5}
    assert report.rows == [row]
    err = capsys.readouterr().err
    assert err.startswith("  run: embedfleet run: ") and json.loads(err.split(": ", 2)[2]) == {
        "seconds": 2.0, "records_per_s": 249.9, "ratio": 1.5}


def test_rows_without_time_or_records_have_no_rate() -> None:
    """No seconds (a ratio row), zero seconds or zero records: no records/s, and no division by zero."""
    report = BenchReport(corpus="c", records=0)
    assert report.add("memory", "ratio only", ratio=1.02) == {"section": "memory", "what": "ratio only",
                                                              "ratio": 1.02}
    assert "records_per_s" not in report.add("x", "zero seconds", 0.0, 10)
    assert "records_per_s" not in report.add("x", "zero records", 1.0, 0)


def test_sections_are_the_ones_the_cli_offers() -> None:
    """Every section run_bench knows is listed once."""
    assert len(set(SECTIONS)) == len(SECTIONS)
    assert {"direct", "run", "fleet"} <= set(SECTIONS)


def test_write_corpus_as_is(tmp_path: Path) -> None:
    """Without a total the records are written once, ids and texts unchanged, ids returned in order."""
    path = tmp_path / "c.jsonl"
    assert write_corpus(records(3), path) == ["r0", "r1", "r2"]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"id": f"r{i}", "text": f"text {i}"} for i in range(3)]


def test_write_corpus_cycles_to_a_total_without_repeats(tmp_path: Path) -> None:
    """Cycled up to total, every id and every text is new, so nothing is deduplicated away."""
    path = tmp_path / "c.jsonl"
    ids = write_corpus(records(3), path, total=8)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(ids) == len(lines) == 8 and [line["id"] for line in lines] == ids
    assert len(set(ids)) == 8 and len({line["text"] for line in lines}) == 8
    assert lines[4] == {"id": "r1-4", "text": "text 1 (4)"}


def test_load_records_reads_the_sample_with_a_limit() -> None:
    """Valid records of a corpus, the first `limit` of them."""
    spec = FieldSpec("id", ("title", "description", "files_touched"))
    loaded = load_records(str(SAMPLE), spec, 7)
    assert len(loaded) == 7 and all(isinstance(r, Record) for r in loaded)
    assert [r.position for r in loaded] == sorted(r.position for r in loaded)
    assert len(load_records(str(SAMPLE), spec, None)) > 7


def test_latest_job_is_the_newest(sqlite_url: str) -> None:
    """latest_job gives the figures of the most recently created job."""
    engine = get_engine(sqlite_url)
    job_with_chunks(engine, {0: [0]})
    newest = job_with_chunks(engine, {0: [0, 1], 1: [2]})
    stats = latest_job(sqlite_url)
    assert stats["job_id"] == newest and stats["records_read"] == 3


def test_latest_job_of_an_empty_database_says_so(sqlite_url: str) -> None:
    """No job at all: a RuntimeError naming the database, not an IndexError."""
    with pytest.raises(RuntimeError, match="no job in"):
        latest_job(sqlite_url)


def test_cli_env_keeps_the_environment_and_forces_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Subprocesses inherit the environment, never download, and get the extras given."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("SOME_VAR", "kept")
    env = cli_env(EMBEDFLEET_CHUNK_SIZE="8")
    assert (env["HF_HUB_OFFLINE"], env["SOME_VAR"], env["EMBEDFLEET_CHUNK_SIZE"]) == ("1", "kept", "8")
