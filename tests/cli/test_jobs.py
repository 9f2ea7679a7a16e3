"""The job commands (`run`, `submit`, `status`) as processes: following a job, and refusing a corpus storage cannot hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from embedfleet.corpus.readers import Corpus
from embedfleet.store.engine import get_engine
from tests.cli.conftest import hash_cli
from tests.cli.encoders import POISON
from tests.conftest import TEST_REDIS_URL, embedfleet
from tests.jobs.test_stats import IDS, jobs_with_ids


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
    from embedfleet.store.engine import get_engine
    from embedfleet.store.schema import jobs

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
    from embedfleet.jobs.stats import job_stats
    from embedfleet.jobs.submit import JobRequest, submit
    from embedfleet.store.engine import get_engine

    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"id": "a", "text": "x"}, {"id": "b\x00", "text": "y"},
                                                            {"id": "c", "text": "z"}]))
    sent = []
    engine = get_engine(pg_url)
    submission = submit(engine, JobRequest(Corpus(str(path)), "docs", "m", skip_invalid=True), sent.append)
    assert [i for chunk in sent for i in chunk.ids] == ["a", "c"]
    stats = job_stats(engine, submission.job_id)
    assert (stats.state, stats.records_read, stats.skipped) == ("running", 3, 1)


# Conventions: job id prefixes, --json, --strict, flags over the environment.

@pytest.mark.parametrize("command", [["status", "{job}"], ["cancel", "{job}"], ["resume", "{job}"],
                                     ["dlq", "list", "--job", "{job}"], ["dlq", "redrive", "--job", "{job}"]])
def test_ambiguous_and_unknown_job_prefixes_are_refused(db_url: str, tmp_path: Path, command: list[str]) -> None:
    """On SQLite and PostgreSQL: a prefix two jobs share exits 2 listing both; one no job has exits 2 naming it
    (dlq list no longer answers "no dead letters" to a typo). Neither reaches the broker."""
    jobs_with_ids(get_engine(db_url), IDS)
    env = {"EMBEDFLEET_DATABASE_URL": db_url, "EMBEDFLEET_BROKER_URL": "redis://127.0.0.1:1/0"}
    ambiguous = embedfleet(*[a.format(job="abcd") for a in command], cwd=tmp_path, check=False, **env)
    assert ambiguous.returncode == 2, ambiguous.stderr
    expected = f"error: job id 'abcd' is ambiguous: it starts {IDS[0]}, {IDS[1]}; give more characters"
    assert ambiguous.stderr.strip() == expected
    unknown = embedfleet(*[a.format(job="abcd9") for a in command], cwd=tmp_path, check=False, **env)
    assert (unknown.returncode, unknown.stderr.strip()) == (2, "error: no job 'abcd9'")


def test_status_cancel_and_dlq_take_the_8_characters_progress_prints(finished_job: str, sqlite_url: str) -> None:
    """status and dlq list --job with the job's first 8 characters find the job; --json is one document."""
    short = finished_job[:8]
    assert f"job {finished_job} done: read 16" in hash_cli("status", short, "--db", sqlite_url).stdout
    figures = json.loads(hash_cli("status", short, "--json", "--db", sqlite_url).stdout)
    assert (figures["job_id"], figures["stored"], figures["condition"]) == (finished_job, 16, None)
    letters = hash_cli("dlq", "list", "--job", short, "--json", "--db", sqlite_url)
    assert json.loads(letters.stdout) == []
    refused = hash_cli("cancel", short, "--db", sqlite_url, check=False)  # found, and refused for being done
    assert refused.returncode == 2 and finished_job in refused.stderr and "no job" not in refused.stderr


def test_cancel_by_prefix_with_json(redis_url: str, pg_url: str, tmp_path: Path) -> None:
    """On PostgreSQL: cancel takes a prefix and --json prints the cancelled job's figures and chunk count."""
    env = {"EMBEDFLEET_DATABASE_URL": pg_url, "EMBEDFLEET_BROKER_URL": redis_url}
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"r{i}", "text": f"text {i}"}) + "\n" for i in range(9)))
    submitted = json.loads(embedfleet("submit", str(corpus), "--collection", "c", "--chunk-size", "3", "--json",
                                      cwd=tmp_path, **env).stdout)
    assert (submitted["records_read"], submitted["chunks"]) == (9, 3)
    cancelled = json.loads(embedfleet("cancel", submitted["job_id"][:6], "--json", cwd=tmp_path, **env).stdout)
    assert (cancelled["job_id"], cancelled["state"], cancelled["cancelled_chunks"]) == \
        (submitted["job_id"], "cancelled", 3)


def test_run_json_and_strict_with_dead_letters(tmp_path: Path, sqlite_url: str) -> None:
    """run --json prints the finished job's figures as one document; a poison record is a dead letter: exit 0,
    exit 3 under --strict (the summary still printed), and status --watch --strict says the same."""
    corpus = tmp_path / "c.jsonl"
    rows = [{"id": f"r{i}", "text": f"text {i}" + (f" {POISON}" if i == 5 else "")} for i in range(8)]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {"EMBEDFLEET_ENCODER": "tests.cli.encoders:HashPoison", "EMBEDFLEET_DATABASE_URL": sqlite_url}
    ok = embedfleet("run", str(corpus), "--collection", "c", "--json", cwd=tmp_path, **env)
    figures = json.loads(ok.stdout)
    assert (figures["stored"], figures["dead"], figures["state"]) == (7, 1, "done")
    strict = embedfleet("run", str(corpus), "--collection", "d", "--strict", cwd=tmp_path, check=False, **env)
    assert strict.returncode == 3, strict.stderr
    assert "dead 1" in strict.stdout and "finished with 1 dead letters" in strict.stderr
    watched = embedfleet("status", figures["job_id"][:8], "--watch", "--strict", cwd=tmp_path, check=False, **env)
    assert watched.returncode == 3 and "dead 1" in watched.stdout
    assert embedfleet("status", figures["job_id"][:8], "--watch", cwd=tmp_path, **env).returncode == 0


def test_flags_win_over_the_environment(tmp_path: Path, sqlite_url: str) -> None:
    """EMBEDFLEET_CHUNK_SIZE is read (through click's envvar) and --chunk-size overrides it; --db overrides
    EMBEDFLEET_DATABASE_URL."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"r{i}", "text": f"text {i}"}) + "\n" for i in range(12)))
    env = {"EMBEDFLEET_ENCODER": "tests.encode.fake_encoders:HashEncoder", "EMBEDFLEET_CHUNK_SIZE": "3",
           "EMBEDFLEET_DATABASE_URL": f"sqlite:///{tmp_path}/env.db"}
    by_env = json.loads(embedfleet("run", str(corpus), "--collection", "a", "--json", cwd=tmp_path, **env).stdout)
    assert by_env["chunks_total"] == 4 and (tmp_path / "env.db").exists()
    by_flag = json.loads(embedfleet("run", str(corpus), "--collection", "a", "--json", "--chunk-size", "6",
                                    "--db", sqlite_url, cwd=tmp_path, **env).stdout)
    assert by_flag["chunks_total"] == 2
    assert json.loads(embedfleet("jobs", "--json", "--db", sqlite_url, cwd=tmp_path).stdout)[0]["job_id"] == \
        by_flag["job_id"]
