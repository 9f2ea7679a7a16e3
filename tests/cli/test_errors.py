"""The CLI as a user meets it when things go wrong: one line and an exit code, never a traceback.
Real CLI subprocesses, real Redis and PostgreSQL; no workers (no job here needs to run)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from embedfleet.store.engine import get_engine
from embedfleet.store.ledger import abandon_stalled_submissions
from embedfleet.store.schema import chunks, collections, jobs, versions
from tests.conftest import BIN, Fleet

DEAD_DB = "postgresql://postgres:s3cret@127.0.0.1:1/x"
DEAD_BROKER = "redis://:s3cret@127.0.0.1:1/0"


def _one_line_error(result: subprocess.CompletedProcess, code: int, *words: str, follows: bool = False) -> str:
    """One `error:` line on stderr (after the progress lines of a command that follows a job)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and lines and (follows or len(lines) == 1), result.stderr
    assert all(line.startswith("job ") for line in lines[:-1]), result.stderr
    err = lines[-1]
    assert err.startswith("error: ") and "s3cret" not in err, err
    for word in words:
        assert word in err, err
    return err


def _counts(url: str) -> dict[str, int]:
    with get_engine(url).connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in (collections, versions, jobs)}


def _corpus(tmp_path: Path, n: int, name: str = "corpus.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": f"record number {i} about topic {i % 7}"}) + "\n"
                            for i in range(n)))
    return path


@pytest.mark.parametrize("command", [
    ["submit", "{corpus}", "--collection", "c"],
    ["status", "0123456789abcdef"],
    ["export", "--collection", "c", "--out", "{out}"],
    ["resume", "0123456789abcdef"],
    ["dlq", "list"],
])
def test_an_unreachable_database_is_one_line_and_exit_1(redis_url: str, tmp_path: Path, command: list[str]) -> None:
    """Every command against a database nobody listens on: one line naming it (password hidden), exit 1."""
    fleet = Fleet(redis_url, DEAD_DB, tmp_path)
    args = [a.format(corpus=_corpus(tmp_path, 3), out=tmp_path / "out.npy") for a in command]
    _one_line_error(fleet.cli(*args, check=False), 1, "database unreachable", "postgresql://postgres:***@127.0.0.1:1/x")


def _job_nobody_works_on(tmp_path: Path, url: str) -> str:
    """A running job of 3 open chunks, its messages sent nowhere (a broker that lost them)."""
    from embedfleet.corpus.readers import Corpus
    from embedfleet.jobs.submit import JobRequest, submit

    request = JobRequest(Corpus(str(_corpus(tmp_path, 6, "open.jsonl"))), "c", "m", chunk_size=2)
    return submit(get_engine(url), request, lambda _chunk: None).job_id


@pytest.mark.parametrize("command", [
    ["submit", "{corpus}", "--collection", "c"],
    ["resume", "{job}"],
    ["dlq", "redrive", "--job", "{job}"],
])
def test_an_unreachable_broker_fails_fast_and_writes_nothing(sqlite_url: str, tmp_path: Path, command: list[str]) -> None:
    """Commands that send, against a broker nobody listens on: one line, exit 1, no job row added (none left submitting)."""
    fleet = Fleet(DEAD_BROKER, sqlite_url, tmp_path)
    job = _job_nobody_works_on(tmp_path, sqlite_url)[:8]  # resume and redrive take a prefix too
    args = [a.format(corpus=_corpus(tmp_path, 3), job=job) for a in command]
    started = time.monotonic()
    _one_line_error(fleet.cli(*args, check=False), 1, "broker unreachable", "redis://:***@127.0.0.1:1/0")
    assert time.monotonic() - started < 30
    assert _counts(sqlite_url)["jobs"] == 1
    # Commands that only read the database need no broker.
    assert fleet.cli("dlq", "list", check=False).returncode == 0


def test_an_empty_corpus_is_refused_and_writes_nothing(redis_url: str, sqlite_url: str, tmp_path: Path) -> None:
    """Zero records, or zero valid ones with --skip-invalid: exit 2, no collection, version or job."""
    fleet = Fleet(redis_url, sqlite_url, tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    invalid = tmp_path / "invalid.jsonl"
    invalid.write_text('{"id": "a"}\n{"text": "no id"}\n')
    _one_line_error(fleet.cli("submit", str(empty), "--collection", "c", check=False), 2, "no valid records")
    result = fleet.cli("submit", str(invalid), "--collection", "c", "--skip-invalid", check=False)
    assert result.returncode == 2 and "no valid records" in result.stderr and "Traceback" not in result.stderr
    assert _counts(sqlite_url) == {"collections": 0, "versions": 0, "jobs": 0}


@pytest.mark.parametrize("name", ["c7\n", "c7__v2"])
def test_collection_names_that_would_break_version_keys_are_refused(redis_url: str, sqlite_url: str,
                                                                    tmp_path: Path, name: str) -> None:
    """A trailing newline, or a name in the version key scheme (c7__v2 is c7's version 2): exit 2."""
    fleet = Fleet(redis_url, sqlite_url, tmp_path)
    _one_line_error(fleet.cli("submit", str(_corpus(tmp_path, 3)), "--collection", name, check=False), 2,
                    "invalid collection name")


def _submit_together(fleet: Fleet, corpus: Path, collection: str) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([str(BIN / "embedfleet"), "submit", str(corpus), "--collection", collection],
                              env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in procs]


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_two_first_submits_into_a_new_collection_both_succeed(redis_url: str, tmp_path: Path, request,
                                                               database: str) -> None:
    """Two CLIs submit into a collection that does not exist yet (a fresh SQLite file each round): both exit 0, one version."""
    rounds = 3 if database == "sqlite" else 2
    for attempt in range(rounds):
        url = f"sqlite:///{tmp_path}/fresh{attempt}.db" if database == "sqlite" else request.getfixturevalue("pg_url")
        collection = f"race{attempt}"
        fleet = Fleet(redis_url, url, tmp_path)
        results = _submit_together(fleet, _corpus(tmp_path, 20), collection)
        for result in results:
            assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
        with get_engine(url).connect() as conn:
            assert conn.execute(select(versions.c.key).where(versions.c.collection == collection)).scalars().all() \
                == [collection]
            keys = conn.execute(select(jobs.c.version_key).where(jobs.c.collection == collection)).scalars().all()
        assert keys == [collection, collection]


def test_a_producer_killed_mid_submission_printed_its_job_id(redis_url: str, pg_url: str, tmp_path: Path) -> None:
    """The job id is on stdout before the first chunk is sent; status then calls the job stalled, later abandoned, without an ETA."""
    fleet = Fleet(redis_url, pg_url, tmp_path)
    corpus = _corpus(tmp_path, 6000)
    proc = subprocess.Popen([str(BIN / "embedfleet"), "submit", str(corpus), "--collection", "killed", "--chunk-size",
                             "1"], env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    engine = get_engine(pg_url)
    deadline = time.monotonic() + 120
    while True:
        with engine.connect() as conn:
            sent = conn.execute(select(func.count()).select_from(chunks)).scalar_one()
        if sent >= 3:
            break
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    with engine.connect() as conn:
        (job_id, state), = conn.execute(select(jobs.c.id, jobs.c.state)).all()
    assert state == "submitting" and out.split() == [job_id]

    time.sleep(1.5)
    stalled = Fleet(redis_url, pg_url, tmp_path, {"EMBEDFLEET_LEASE_SECONDS": "1"}).cli("status", job_id)
    assert "is stalled" in stalled.stdout and "ETA -" in stalled.stdout, stalled.stdout

    assert abandon_stalled_submissions(engine, lease_seconds=1) == [job_id]
    shown = fleet.cli("status", job_id)
    assert "abandoned" in shown.stdout and "ETA -" in shown.stdout and "submit the corpus again" in shown.stdout
    figures = json.loads(fleet.cli("status", job_id, "--json").stdout)
    assert (figures["state"], figures["eta_seconds"]) == ("abandoned", None) and "abandoned" in figures["condition"]
    _one_line_error(fleet.cli("status", job_id, "--watch", check=False), 1, "abandoned", follows=True)


def test_cancel_a_job_nobody_works_on(redis_url: str, sqlite_url: str, tmp_path: Path) -> None:
    """cancel: the job and its open chunks become cancelled; status says so; --watch stops with exit 1; twice is refused."""
    fleet = Fleet(redis_url, sqlite_url, tmp_path)
    job_id = fleet.cli("submit", str(_corpus(tmp_path, 40)), "--collection", "c", "--chunk-size", "8").stdout.split()[0]
    cancelled = fleet.cli("cancel", job_id)
    assert f"cancelled job {job_id}: 5 open chunks" in cancelled.stdout
    with get_engine(sqlite_url).connect() as conn:
        assert set(conn.execute(select(chunks.c.state)).scalars()) == {"cancelled"}
    shown = fleet.cli("status", job_id)
    assert f"job {job_id} cancelled" in shown.stdout and "ETA -" in shown.stdout and "is cancelled" in shown.stdout
    _one_line_error(fleet.cli("status", job_id, "--watch", check=False), 1, "was cancelled", follows=True)
    _one_line_error(fleet.cli("cancel", job_id, check=False), 2, "is cancelled")


@pytest.mark.parametrize(("db", "env", "words"), [
    ("embedfleet.db", {}, ("EMBEDFLEET_DATABASE_URL='embedfleet.db': 'embedfleet.db' is not a database URL: a SQLite "
                          "file is sqlite:///embedfleet.db")),
    ("postgresql://u@h:notaport/db", {}, "invalid database URL"),
    ("sqlite:///{tmp}/t.db", {"EMBEDFLEET_CHUNK_SIZE": "abc"}, "EMBEDFLEET_CHUNK_SIZE"),
    ("sqlite:///{tmp}/t.db", {"EMBEDFLEET_LEASE_SECONDS": "abc"}, ("invalid setting: EMBEDFLEET_LEASE_SECONDS='abc': "
                                                                  "Input should be a valid integer")),
])
def test_a_bad_database_url_or_setting_is_one_line_and_exit_2(redis_url: str, tmp_path: Path, db: str, env: dict,
                                                              words: str) -> None:
    """Configuration mistakes are usage errors: one line, exit 2, naming the variable (or flag) and what to write."""
    fleet = Fleet(redis_url, db.format(tmp=tmp_path), tmp_path, env)
    _one_line_error(fleet.cli("status", "0123456789abcdef", check=False), 2, words)
