"""`embedfleet run`: the embedded default, through the real CLI, the real model and SQLite."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from embedfleet.store.export import read_ids
from tests.conftest import BIN, OPENVINO_CACHE, REPO, assert_matches_reference, commit_text, read_records

# The tests that check no vector use the model-free encoder: the same pipeline, seconds sooner.
HASH = {"EMBEDFLEET_ENCODER": "tests.encode.fake_encoders:HashEncoder"}


def _run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "embedfleet"), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": str(BIN), "HOME": str(cwd), "PYTHONPATH": str(REPO),
             "EMBEDFLEET_OPENVINO_CACHE": str(OPENVINO_CACHE), **env},
    )


@pytest.mark.slow
def test_run_stores_every_record_in_corpus_order(small_corpus: Path, tmp_path: Path, reference_model) -> None:
    """run embeds every record once, export gives corpus order, vectors match SentenceTransformer;
    on stderr it says it loads the model, leaks no third-party bar, and prints the summary once."""
    db = f"sqlite:///{tmp_path / 'e.db'}"
    run = _run("run", str(small_corpus), "--collection", "commits", "--fields", "title,description,files_touched",
               "--chunk-size", "16", "--db", db, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "read 150, stored 150, skipped 0, dead 0" in run.stdout
    job_id = run.stdout.split()[1]
    assert run.stderr.startswith("loading model sentence-transformers/all-MiniLM-L6-v2...\nmodel loaded in "), run.stderr
    assert "Loading weights" not in run.stderr and "it/s]" not in run.stderr and "%|" not in run.stderr
    # Off a terminal: plain lines naming the job (first poll, then every 10 s), no redrawn bar.
    assert re.search(rf"job {job_id[:8]} (submitting|running): ", run.stderr) and "\r" not in run.stderr
    assert len(re.findall(r"job [0-9a-f]+ done", run.stdout + run.stderr)) == 1

    out = tmp_path / "v.npy"
    export = _run("export", "--collection", "commits", "--out", str(out), "--db", db, cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    records = read_records(small_corpus)
    assert read_ids(tmp_path / "v.ids.jsonl") == [r["id"] for r in records]
    assert_matches_reference(reference_model, [commit_text(r) for r in records], np.load(out))


def test_run_uses_default_database_file(tmp_path: Path) -> None:
    """Without --db, run writes ./embedfleet.db and prints the summary."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "hello world"}\n{"id": "b", "text": "goodbye"}\n')
    run = _run("run", str(corpus), "--collection", "tiny", cwd=tmp_path, **HASH)
    assert run.returncode == 0, run.stderr
    assert "read 2, stored 2" in run.stdout and "records/s" in run.stdout
    assert (tmp_path / "embedfleet.db").exists()


def test_run_refuses_bad_input_before_sending(tmp_path: Path) -> None:
    """Invalid records stop the run with line-numbered reasons; --skip-invalid stores the rest."""
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": ""}\nnot json\n{"text": "no id"}\n')
    db = f"sqlite:///{tmp_path / 'b.db'}"
    refused = _run("run", str(corpus), "--collection", "bad", "--db", db, cwd=tmp_path, **HASH)
    assert refused.returncode == 2
    for expected in ("line 2 (id 'b'): empty text", "line 3: malformed JSON", "line 4: missing id field 'id'"):
        assert expected in refused.stderr
    skipped = _run("run", str(corpus), "--collection", "bad", "--skip-invalid", "--db", db, cwd=tmp_path, **HASH)
    assert skipped.returncode == 0, skipped.stderr
    assert "read 4, stored 1, skipped 3, dead 0" in skipped.stdout


@pytest.mark.slow
def test_a_rerun_with_nothing_to_encode_never_imports_torch(small_corpus: Path, tmp_path: Path) -> None:
    """The model is loaded only when a chunk needs it: rerunning an unchanged corpus reads, compares
    and finishes without importing torch (seconds saved on every nightly rerun); a first run loads it
    while the corpus is validated, before its job starts."""
    import sys

    db = f"sqlite:///{tmp_path / 'rerun.db'}"
    script = ("import sys\nfrom embedfleet import Settings, run\n"
              f"stats = run({str(small_corpus)!r}, collection='c', fields=['title', 'description'], "
              f"settings=Settings(database_url={db!r}))\n"
              "print(stats.state, stats.stored, stats.skipped, 'torch' in sys.modules)\n")
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    # A first run loads the model (on OpenVINO, where auto picks it, torch is not even imported).
    assert first.stdout.split()[:3] == ["done", "150", "0"]
    assert first.stderr.index("model loaded in") < first.stderr.index("job ")  # loaded before its job
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == ["done", "0", "150", "False"]
    assert "loading model" not in again.stderr


def test_run_keeps_at_most_its_window_of_chunks_ahead_of_the_worker(tmp_path: Path) -> None:
    """The producer writes a chunk only while fewer than EMBEDFLEET_EMBEDDED_WINDOW are open
    (so memory stays flat on any corpus), and is woken when the in-process worker ends a
    task: 40 chunks of 0.05 s each end in seconds, never more than the window open."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(f'{{"id": "r{i}", "text": "text number {i}"}}\n' for i in range(160)))
    watch = tmp_path / "watch.txt"
    db = tmp_path / "e.db"
    run = _run("run", str(corpus), "--collection", "c", "--chunk-size", "4", "--db", f"sqlite:///{db}", cwd=tmp_path,
               EMBEDFLEET_ENCODER="tests.encode.fake_encoders:LedgerWatchingEncoder", WATCH_FILE=str(watch),
               WATCH_DELAY="0.05", EMBEDFLEET_EMBEDDED_WINDOW="2", EMBEDFLEET_DATABASE_URL=f"sqlite:///{db}")
    assert run.returncode == 0, run.stderr
    assert "read 160, stored 160, skipped 0, dead 0" in run.stdout
    open_at_each_encode = [int(n) for n in watch.read_text().split()]
    assert len(open_at_each_encode) == 40
    # The chunk being encoded is open, and so is at most one more (window 2).
    assert 1 <= max(open_at_each_encode) <= 2, open_at_each_encode


def _children(pid: int) -> set[int]:
    """The pids of a process's children, from /proc (its encoder processes)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


@pytest.mark.slow
def test_ctrl_c_stops_run_and_its_encoder_processes_and_a_rerun_resumes(tmp_path: Path) -> None:
    """SIGINT mid-job (the real model, the default encoder processes): exit 130 within seconds,
    no encoder process left behind, and the same command again stores only the rest."""
    import os
    import signal
    import sqlite3
    import time

    from tests.conftest import SAMPLE

    db_file = tmp_path / "e.db"
    args = [str(BIN / "embedfleet"), "run", str(SAMPLE), "--collection", "c", "--fields",
            "title,description,files_touched", "--chunk-size", "16", "--db", f"sqlite:///{db_file}"]
    env = {"HF_HUB_OFFLINE": "1", "PATH": str(BIN), "HOME": str(tmp_path), "PYTHONPATH": str(REPO),
           "EMBEDFLEET_OPENVINO_CACHE": str(OPENVINO_CACHE)}
    run = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stored() -> int:
        try:
            with sqlite3.connect(db_file, timeout=5) as conn:
                return conn.execute("select count(*) from vectors").fetchone()[0]
        except sqlite3.OperationalError:  # the schema is not made yet
            return 0

    deadline = time.monotonic() + 120
    while stored() == 0 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run.poll() is None, run.communicate()
    children = _children(run.pid)
    assert children, "the run encodes in processes of its own"
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=30)
    assert run.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    time.sleep(1)
    assert [pid for pid in children if os.path.exists(f"/proc/{pid}")] == []
    before = stored()
    assert 0 < before < 500

    again = _run("run", str(SAMPLE), "--collection", "c", "--fields", "title,description,files_touched",
                 "--chunk-size", "16", "--db", f"sqlite:///{db_file}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    read, stored_now, skipped = (int(n) for n in re.search(r"read (\d+), stored (\d+), skipped (\d+)",
                                                           again.stdout).groups())
    assert read == 500 and stored_now + skipped == 500 and skipped >= before
    assert stored() == 500


def test_a_misspelt_field_is_refused_before_the_model_loads_or_anything_is_written(tmp_path: Path) -> None:
    """`run --fields title,descripton` exits 2 naming the field and the fields there are, without
    loading the model or creating the database."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "title": "t", "description": "d"}\n')
    db = tmp_path / "e.db"
    run = _run("run", str(corpus), "--collection", "x", "--fields", "title,descripton", "--db", f"sqlite:///{db}",
               cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "error: the text field 'descripton' (did you mean 'description'?) is in none of the records" in run.stderr
    assert "their fields: id, title, description" in run.stderr
    assert "loading model" not in run.stderr and not db.exists()


def test_a_vector_type_the_database_cannot_store_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    """`run --vector-type vector` on SQLite (no pgvector) exits 2 with the reason, without loading the model."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "hello"}\n')
    run = _run("run", str(corpus), "--collection", "x", "--vector-type", "vector", "--db",
               f"sqlite:///{tmp_path / 'e.db'}", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "--vector-type vector needs the pgvector extension, which SQLite does not have" in run.stderr
    assert "loading model" not in run.stderr


def test_a_killed_embedded_run_is_taken_over_and_never_holds_its_collection(tmp_path: Path) -> None:
    """kill -9 of `embedfleet run` mid-job leaves its job open with no process behind it. The next
    run of the collection abandons it (saying so) and stores the rest; `status` of such a job says
    the run is gone and what to do (not `resume`, a fleet command); `delete-collection` is not
    refused by it."""
    import json
    import os
    import signal
    import sqlite3
    import time

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"r{i}", "text": f"text {i}"}) + "\n" for i in range(200)))
    db_file = tmp_path / "e.db"
    env = {"HF_HUB_OFFLINE": "1", "PATH": str(BIN), "HOME": str(tmp_path), "PYTHONPATH": str(REPO),
           "EMBEDFLEET_ENCODER": "tests.encode.fake_encoders:SlowHashEncoder", "SLOW_HASH_DELAY": "0.3"}

    def stored() -> int:
        try:
            with sqlite3.connect(db_file, timeout=5) as conn:
                return conn.execute("select count(*) from vectors").fetchone()[0]
        except sqlite3.OperationalError:
            return 0

    def killed_mid_job(collection: str) -> str:
        run = subprocess.Popen([str(BIN / "embedfleet"), "run", str(corpus), "--collection", collection,
                                "--chunk-size", "10", "--db", f"sqlite:///{db_file}"], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = stored()
        deadline = time.monotonic() + 60
        while stored() == before:
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        with sqlite3.connect(db_file) as conn:
            job_id, state = conn.execute("select id, state from jobs where collection = ? order by created_at desc",
                                         (collection,)).fetchone()
        assert state in ("submitting", "running")  # killed while it still sends chunks, or after
        return job_id

    killed_mid_job("taken")
    again = _run("run", str(corpus), "--collection", "taken", "--chunk-size", "10", "--db", f"sqlite:///{db_file}",
                 cwd=tmp_path, EMBEDFLEET_ENCODER=env["EMBEDFLEET_ENCODER"], SLOW_HASH_DELAY="0")
    assert again.returncode == 0, again.stderr
    assert "was left open by an embedded run that is gone: abandoned, this run takes over" in again.stderr
    read, stored_now, skipped = (int(n) for n in re.search(r"read (\d+), stored (\d+), skipped (\d+)",
                                                           again.stdout).groups())
    assert read == 200 and stored_now + skipped == 200 and skipped > 0

    job_id = killed_mid_job("held")
    shown = _run("status", job_id, "--db", f"sqlite:///{db_file}", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"job {job_id} abandoned" in shown.stdout and "the embedded run that ran it (pid" in shown.stdout
    assert "run the same `embedfleet run` again" in shown.stdout and "resume" not in shown.stdout
    deleted = _run("delete-collection", "held", "--yes", "--db", f"sqlite:///{db_file}", cwd=tmp_path)
    assert deleted.returncode == 0, deleted.stderr


def test_run_into_pgvector_leaves_an_hnsw_index(pgvector_url: str, tmp_path: Path) -> None:
    """`run` on a pgvector server stores a vector column and builds its HNSW index before it reports
    done (the fleet's collector asks for it through the collect queue); a rerun builds nothing more."""
    import json

    from sqlalchemy import create_engine, text

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"r{i}", "text": f"text {i}"}) + "\n" for i in range(300)))
    run = _run("run", str(corpus), "--collection", "indexed", "--db", pgvector_url, cwd=tmp_path, **HASH)
    assert run.returncode == 0, run.stderr
    assert "stored 300" in run.stdout and "built the HNSW index of indexed in" in run.stderr
    engine = create_engine(pgvector_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        indexes = conn.execute(text("SELECT indexdef FROM pg_indexes WHERE tablename = 'vectors'")).scalars().all()
    engine.dispose()
    assert [d for d in indexes if "USING hnsw" in d and "'indexed'" in d], indexes
    again = _run("run", str(corpus), "--collection", "indexed", "--db", pgvector_url, cwd=tmp_path, **HASH)
    assert again.returncode == 0 and "built the HNSW index" not in again.stderr, again.stderr


def test_a_schema_of_its_own_leaves_an_applications_tables_alone(pg_url: str, tmp_path: Path) -> None:
    """EMBEDFLEET_DATABASE_SCHEMA=ef on a database whose application already has a `vectors` and a `jobs`
    table in public: embedfleet's tables are made in ef, the run, status and export work there, and the
    application's tables and rows are untouched."""
    import json

    from sqlalchemy import create_engine, text

    admin = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text("CREATE TABLE public.vectors (id int primary key, note text)"))
        conn.execute(text("CREATE TABLE public.jobs (id int primary key)"))
        conn.execute(text("INSERT INTO public.vectors VALUES (1, 'the application''s row')"))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"r{i}", "text": f"text {i}"}) + "\n" for i in range(20)))
    env = {**HASH, "EMBEDFLEET_DATABASE_SCHEMA": "ef"}
    run = _run("run", str(corpus), "--collection", "shared", "--db", pg_url, cwd=tmp_path, **env)
    assert run.returncode == 0, run.stderr
    job_id = run.stdout.split()[1]
    assert _run("status", job_id, "--db", pg_url, cwd=tmp_path, **env).returncode == 0
    out = tmp_path / "v.npy"
    exported = _run("export", "--collection", "shared", "--out", str(out), "--db", pg_url, cwd=tmp_path, **env)
    assert exported.returncode == 0, exported.stderr
    assert np.load(out).shape == (20, 8)
    with admin.connect() as conn:
        ours = set(conn.execute(text("SELECT table_name FROM information_schema.tables WHERE table_schema = 'ef'"))
                   .scalars())
        assert {"collections", "versions", "vectors", "jobs", "chunks", "dead_letters", "workers"} <= ours
        assert conn.execute(text("SELECT note FROM public.vectors")).scalars().all() == ["the application's row"]
        assert conn.execute(text("SELECT count(*) FROM ef.vectors")).scalar_one() == 20
    admin.dispose()


def test_the_summary_counts_changes_that_were_stored(tmp_path: Path) -> None:
    """One record that cannot be encoded (a dead letter): `changes: added` counts the two stored, not the
    three planned; editing one record and fixing nothing gives updated 1 and added 0 for the dead one again."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "one"}\n{"id": "b", "text": "two RAISE"}\n{"id": "c", "text": "three"}\n')
    probe = {"EMBEDFLEET_ENCODER": "tests.encode.fake_encoders:PoolProbeEncoder"}
    db = f"sqlite:///{tmp_path / 'e.db'}"
    first = _run("run", str(corpus), "--collection", "cnt", "--db", db, cwd=tmp_path, **probe)
    assert first.returncode == 0, first.stderr
    assert "stored 2, skipped 0, dead 1" in first.stdout and "changes: added 2, updated 0," in first.stdout
    corpus.write_text('{"id": "a", "text": "one, edited"}\n{"id": "b", "text": "two RAISE"}\n'
                      '{"id": "c", "text": "three"}\n')
    second = _run("run", str(corpus), "--collection", "cnt", "--db", db, cwd=tmp_path, **probe)
    assert "stored 1, skipped 1, dead 1" in second.stdout and "changes: added 0, updated 1, unchanged 1" in second.stdout


def test_off_a_terminal_the_lines_end_where_the_job_did(tmp_path: Path) -> None:
    """Plain progress lines (stderr not a terminal) end with one of the final figures, marked
    finished, so the last line before the summary is not up to 10 s stale; the summary alone says done."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(f'{{"id": "r{i}", "text": "text {i}"}}\n' for i in range(150)))
    run = _run("run", str(corpus), "--collection", "lines", "--chunk-size", "10", "--db",
               f"sqlite:///{tmp_path / 'e.db'}", cwd=tmp_path, **HASH)
    assert run.returncode == 0, run.stderr
    job_lines = [line for line in run.stderr.splitlines() if line.startswith("job ")]
    assert re.fullmatch(r"job [0-9a-f]{8} finished: 150/150 records, .*", job_lines[-1]), run.stderr
    assert len(re.findall(r"job [0-9a-f]+ done", run.stdout + run.stderr)) == 1
