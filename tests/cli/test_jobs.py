"""The job commands (`run`, `submit`, `status`) as processes: following a job, and refusing a corpus storage cannot hold."""

from __future__ import annotations

import json

from sqlalchemy import select

from embedfleet.producers.readers import Corpus
from tests.cli.conftest import hash_cli
from tests.conftest import TEST_REDIS_URL, embedfleet


def test_status_watch_prints_the_summary_of_a_done_job(finished_job: str, sqlite_url: str) -> None:
    """`status --watch` follows the job to done and prints the same summary line as `run`."""
    result = hash_cli("status", finished_job, "--watch", "--db", sqlite_url)
    assert f"job {finished_job} done: read 16, stored 16, skipped 0, dead 0" in result.stdout


def test_status_watch_of_an_unknown_job_is_an_error(sqlite_url: str) -> None:
    """An unknown job exits 2 with `error: ...`."""
    result = hash_cli("status", "0" * 32, "--watch", "--db", sqlite_url, check=False)
    assert result.returncode == 2 and "error:" in result.stderr


def test_cli_refuses_unstorable_ids_on_postgres_without_a_job(tmp_path, pg_url):
    """On PostgreSQL, `submit` of a corpus with a long id, NUL in an id and NUL in a text exits 2 with
    line numbers and reasons, no traceback, and leaves no job row behind (nothing `submitting`)."""
    from embedfleet.storage.engine import get_engine
    from embedfleet.storage.schema import jobs

    path = tmp_path / "bad.jsonl"
    rows = [{"id": "good", "text": "fine"}, {"id": "x" * 513, "text": "x"}, {"id": "nul\x00id", "text": "x"},
            {"id": "nul-text", "text": "a\x00b"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = embedfleet("submit", str(path), "--collection", "docs", "--db", pg_url, cwd=tmp_path, check=False,
                        EMBEDFLEET_BROKER_URL=TEST_REDIS_URL)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "line 2 (id 'xxx" in result.stderr and "id too long: 513 characters" in result.stderr
    assert "line 3 (id 'nul\\x00id'): id contains a control character: U+0000 (NUL)" in result.stderr
    assert "2 of 4 records are invalid" in result.stderr  # the NUL in a text is removed, not refused
    with get_engine(pg_url).connect() as conn:
        assert conn.execute(select(jobs.c.id, jobs.c.state)).all() == []


def test_skip_invalid_on_postgres_skips_a_nul_id_and_the_job_runs(tmp_path, pg_url):
    """With skip_invalid, a NUL in an id is counted as skipped invalid; the job is written, sent and
    closed (running), never left `submitting` with a traceback."""
    from embedfleet.producers.submit import JobRequest, submit
    from embedfleet.storage.engine import get_engine
    from embedfleet.storage.jobs import job_stats

    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"id": "a", "text": "x"}, {"id": "b\x00", "text": "y"},
                                                            {"id": "c", "text": "z"}]))
    sent = []
    engine = get_engine(pg_url)
    submission = submit(engine, JobRequest(Corpus(str(path)), "docs", "m", skip_invalid=True), sent.append)
    assert [i for chunk in sent for i in chunk.ids] == ["a", "c"]
    stats = job_stats(engine, submission.job_id)
    assert (stats.state, stats.records_read, stats.skipped) == ("running", 3, 1)
