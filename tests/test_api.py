"""The public Python API: real model, real SQLite/PostgreSQL, real Redis and worker processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

import embedfleet
from embedfleet import (
    BrokerUnavailable,
    InvalidInput,
    JobEnded,
    LedgerError,
    Settings,
    cancel,
    export,
    run,
    search,
    status,
    submit,
    wait,
)
from embedfleet.settings import get_settings
from embedfleet.store.export import read_ids
from tests.conftest import REPO, SAMPLE, assert_matches_reference, read_records

PUBLIC = {"run", "submit", "wait", "status", "cancel", "export", "search", "Settings", "JobStats", "Hit",
          "Exported", "InvalidInput", "JobEnded", "LedgerError", "CorpusError", "BrokerUnavailable", "QueryUnanswered",
          "ModelNotFound", "Started", "reindex", "migrate", "cutover", "rollback", "drop_version", "resume",
          "dead_letters", "redrive"}


@pytest.fixture(autouse=True)
def _no_embedfleet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the object each test passes, never from EMBEDFLEET_ variables."""
    for name in list(os.environ):
        if name.startswith("EMBEDFLEET_") and not name.startswith("EMBEDFLEET_TEST_"):
            monkeypatch.delenv(name)


def commits(n: int) -> list[dict]:
    """The first n records of the sample corpus, as id and text (title + description)."""
    records = read_records(SAMPLE)[:n]
    return [{"id": r["id"], "text": f"{r['title']}\n{r['description']}".strip()} for r in records]


def exported(collection: str, tmp_path: Path, settings: Settings) -> tuple[list[str], np.ndarray]:
    done = export(collection, tmp_path / f"{collection}.npy", settings=settings)
    assert (done.rows, done.dim) == (len(read_ids(done.ids_path)), 384)
    return read_ids(done.ids_path), np.load(done.path)


def test_public_names_and_a_cheap_torch_free_import() -> None:
    """__all__ is the documented surface; `import embedfleet` loads no SQLAlchemy or Celery, and
    importing every public name loads no torch, sentence-transformers or transformers."""
    assert set(embedfleet.__all__) == PUBLIC
    code = (
        "import sys\n"
        "import embedfleet\n"
        "heavy = [m for m in ('sqlalchemy', 'celery', 'numpy', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from embedfleet import *\n"
        "missing = [n for n in embedfleet.__all__ if n not in globals()]\n"
        "assert not missing, missing\n"
        "bad = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_run_on_a_list_stores_reference_vectors_exports_and_searches(tmp_path: Path, reference_model) -> None:
    """run() on a list of dicts: every vector matches a plain SentenceTransformer, the export
    holds them in list order, a record's own text finds it first; process settings untouched."""
    before = get_settings()
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'api.db'}")
    records = commits(30)
    stats = run(records, collection="commits", settings=settings)
    assert get_settings() is before
    assert (stats.state, stats.records_read, stats.stored, stats.dead) == ("done", 30, 30, 0)
    assert status(stats.job_id, settings=settings) == stats

    ids, matrix = exported("commits", tmp_path, settings)
    assert ids == [r["id"] for r in records]
    assert_matches_reference(reference_model, [r["text"] for r in records], matrix)

    probe = records[7]
    hits = search("commits", probe["text"], k=3, settings=settings)
    assert [type(h).__name__ for h in hits] == ["Hit"] * 3
    assert hits[0].id == probe["id"] and hits[0].score > 0.99
    assert hits[0].score >= hits[1].score >= hits[2].score
    batch = search("commits", [records[0]["text"], records[1]["text"]], k=1, settings=settings)
    assert [row[0].id for row in batch] == [records[0]["id"], records[1]["id"]]
    assert get_settings() is before


def test_run_on_a_generator_spools_it_and_matches_the_list(tmp_path: Path, reference_model) -> None:
    """A generator (read once) gives the same vectors, in the same order, as the list would."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'api.db'}")
    records = commits(25)
    consumed = []

    def stream() -> Iterator[dict]:
        for record in records:
            consumed.append(record["id"])
            yield {**record, "seen_at": datetime(2026, 12, 1)}  # any value: the spool keeps it as is

    stats = run(stream(), collection="streamed", settings=settings)
    assert consumed == [r["id"] for r in records]  # read once, then replayed from the spool
    assert (stats.state, stats.stored) == ("done", 25)
    ids, matrix = exported("streamed", tmp_path, settings)
    assert ids == consumed
    assert_matches_reference(reference_model, [r["text"] for r in records], matrix)


def test_invalid_records_are_named_by_number_and_nothing_is_written(tmp_path: Path) -> None:
    """A bad item raises InvalidInput naming its record number, from a list and from a
    generator alike; nothing is stored, and the process settings are back after the raise."""
    before = get_settings()
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'api.db'}")
    good = commits(4)
    items = [good[0], good[1], {"id": "no-text"}, good[2], "not a dict", good[3]]
    for given in (items, iter(items)):
        with pytest.raises(InvalidInput) as raised:
            run(given, collection="bad", settings=settings)
        message = str(raised.value)
        assert "2 of 6 records are invalid" in message and "skip_invalid=True" in message
        assert "record 3 (id 'no-text'): empty text" in message
        assert "record 5: expected a dict, found str" in message
        assert get_settings() is before
    with pytest.raises(LedgerError, match="no collection 'bad'"):
        search("bad", "anything", settings=settings)

    stats = run(iter(items), collection="bad", settings=settings, skip_invalid=True)
    assert (stats.state, stats.records_read, stats.stored) == ("done", 6, 4)


def test_an_unreachable_broker_fails_submit_before_anything_is_written(tmp_path: Path) -> None:
    """submit() checks settings.broker_url first: BrokerUnavailable, and no collection or job."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'api.db'}", broker_url="redis://127.0.0.1:1/0")
    with pytest.raises(BrokerUnavailable, match=re.escape("broker unreachable at redis://127.0.0.1:1/0")):
        submit(commits(3), collection="nobroker", settings=settings)
    with pytest.raises(LedgerError, match="no collection"):
        export("nobroker", tmp_path / "x.npy", settings=settings)


@pytest.mark.fleet
def test_submit_wait_status_cancel_on_the_real_fleet(pg_url: str, redis_url: str, make_fleet, tmp_path: Path,
                                                    reference_model) -> None:
    """On Redis and PostgreSQL with a real worker process, settings given only as an object: a
    job submitted with no worker up is cancelled and wait() raises JobEnded; then a worker
    stores a second job, which wait() and status() report done. An embedded run earlier in
    this process does not keep the Celery app on its in-memory broker."""
    before = get_settings()
    run(commits(3), collection="local", settings=Settings(database_url=f"sqlite:///{tmp_path / 'local.db'}"))
    fleet_settings = Settings(database_url=pg_url, broker_url=redis_url)
    records = commits(40)

    doomed = submit(records[:20], collection="fleet", settings=fleet_settings)
    assert status(doomed, settings=fleet_settings).state == "running"
    cancelled = cancel(doomed, settings=fleet_settings)
    assert cancelled.state == "cancelled" and cancelled.stored == 0
    with pytest.raises(JobEnded, match="cancelled"):
        wait(doomed, settings=fleet_settings, timeout=30)
    with pytest.raises(LedgerError, match="only a submitting or running job can be cancelled"):
        cancel(doomed, settings=fleet_settings)

    fleet = make_fleet(pg_url, EMBEDFLEET_TORCH_THREADS="1")
    fleet.start_worker("w1")
    fleet.wait_ready(["w1"])
    job_id = submit(records, collection="fleet", settings=fleet_settings)
    stats = wait(job_id, settings=fleet_settings, timeout=240)
    assert (stats.state, stats.records_read, stats.stored, stats.dead) == ("done", 40, 40, 0)
    assert status(job_id, settings=fleet_settings).state == "done"
    ids, matrix = exported("fleet", tmp_path, fleet_settings)
    assert ids == [r["id"] for r in records]
    assert_matches_reference(reference_model, [r["text"] for r in records], matrix)
    assert get_settings() is before


def test_the_docs_example_runs(tmp_path: Path) -> None:
    """The first Python block of docs/api.md that embeds runs as written, with no EMBEDFLEET_
    variable set, so the docs cannot go stale."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "api.md").read_text(), re.DOTALL)
    example = next(b for b in blocks if "run(" in b and "submit(" not in b)
    (tmp_path / "example.py").write_text(example)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDFLEET_")}
    result = subprocess.run([sys.executable, "example.py"], check=False, cwd=tmp_path, env={**env, "HF_HUB_OFFLINE": "1"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("done 4\nT-1 ")
    assert "record 2 (id 'T-6'): empty text" in result.stdout


@pytest.mark.slow
def test_the_docs_versions_example_runs(tmp_path: Path) -> None:
    """docs/api.md's example of reindex, migrate, rollback, cutover, drop_version and
    dead_letters runs as written (the real model, a fresh directory, no EMBEDFLEET_ variable)."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "api.md").read_text(), re.DOTALL)
    example = next(b for b in blocks if "api.migrate(" in b)
    (tmp_path / "example.py").write_text(example)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDFLEET_")}
    result = subprocess.run([sys.executable, "example.py"], check=False, cwd=tmp_path,
                            env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["reindex stored 1 unchanged 2", "migrate stored 3", "reads version 1",
                                          "reads version 2", "dropped 3 vectors", "open dead letters 0"]


def test_job_ids_may_be_prefixes_and_reads_create_no_database(db_url: str, tmp_path: Path) -> None:
    """status, cancel and resolve_job take any unique prefix (on SQLite and PostgreSQL); an ambiguous one raises
    AmbiguousJob with the candidates; a missing SQLite file raises NoDatabase and stays missing."""
    from embedfleet import api
    from embedfleet.jobs.stats import AmbiguousJob
    from embedfleet.store.engine import NoDatabase, get_engine
    from tests.jobs.test_stats import IDS, jobs_with_ids

    settings = Settings(database_url=db_url)
    jobs_with_ids(get_engine(db_url), IDS)
    assert api.resolve_job("ef01", settings=settings) == IDS[2]
    assert status("abcd1", settings=settings).job_id == IDS[1]
    assert cancel("ef01", settings=settings).state == "cancelled"
    with pytest.raises(AmbiguousJob) as caught:
        status("abcd", settings=settings)
    assert caught.value.candidates == IDS[:2]
    with pytest.raises(LedgerError, match="no job 'ffff'"):
        wait("ffff", settings=settings)
    missing = tmp_path / "none.db"
    for call in (lambda s: status("abcd", settings=s), lambda s: api.collections(settings=s),
                 lambda s: export("c", tmp_path / "x.npy", settings=s)):
        with pytest.raises(NoDatabase, match=f"no database at {missing}"):
            call(Settings(database_url=f"sqlite:///{missing}"))
    assert not missing.exists()


def test_run_keeps_texts_and_metadata_for_search_and_parquet(tmp_path: Path) -> None:
    """store_text and metadata_fields keep what a person reads beside each vector: search hits carry
    them, and the Parquet export has text and metadata columns; the text is still what was embedded."""
    import json

    import pyarrow.parquet as pq

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'kept.db'}")
    records = [{"id": "a", "text": "how to retry a celery task", "lang": "en", "n": 1},
               {"id": "b", "text": "postgres vector index", "lang": "en", "n": 2},
               {"id": "c", "text": "un texte en français", "lang": "fr", "n": 3}]
    run(records, collection="kept", settings=settings, store_text=True, metadata_fields=["lang", "n"])
    (hit, *_) = search("kept", "retrying celery tasks", k=3, settings=settings)
    assert (hit.id, hit.text, hit.metadata) == ("a", "how to retry a celery task", {"lang": "en", "n": 1})
    done = export("kept", tmp_path / "kept.parquet", settings=settings)
    table = pq.read_table(done.path)
    assert table.column("text").to_pylist() == [r["text"] for r in records]
    assert [json.loads(m) for m in table.column("metadata").to_pylist()] == [
        {"lang": r["lang"], "n": r["n"]} for r in records]
    with pytest.raises(TypeError, match="sequences of field names"):
        run(records, collection="kept", settings=settings, metadata_fields="lang")


def test_progress_false_leaves_stderr_empty(tmp_path: Path) -> None:
    """run(..., progress=False) prints nothing on stderr (no loading line, no progress lines) and the
    job still finishes; with the default, the loading line and a progress line are there."""
    code = ("import sys\n"
            "from embedfleet import Settings, run\n"
            "settings = Settings(database_url=sys.argv[1], encoder='tests.encode.fake_encoders:HashEncoder')\n"
            "records = [{'id': str(i), 'text': f'text {i}'} for i in range(50)]\n"
            "stats = run(records, collection='quiet', settings=settings, progress=sys.argv[2] == 'on')\n"
            "print(stats.state, stats.stored)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDFLEET_")}
    env = {**env, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    for mode, db in (("off", "q1"), ("on", "q2")):
        result = subprocess.run([sys.executable, "-c", code, f"sqlite:///{tmp_path / db}.db", mode], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "done 50"
        if mode == "off":
            assert result.stderr == "", result.stderr
        else:
            assert "loading encoder" in result.stderr and "job " in result.stderr, result.stderr


def test_a_missing_extra_is_one_line_naming_it(tmp_path: Path) -> None:
    """Without pyarrow (the `parquet` extra) a Parquet corpus or export is one line naming the extra,
    exit 2; without flower, `embedfleet flower` likewise. A sitecustomize hides the packages from the
    command's interpreter, as a host that installed `embedfleet` alone would have them."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "sitecustomize.py").write_text("import sys\nsys.modules['pyarrow'] = None\nsys.modules['flower'] = None\n")
    (tmp_path / "c.parquet").write_bytes(b"PAR1")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EMBEDFLEET_")}, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(hidden), str(REPO)])}
    bin_dir = Path(sys.executable).parent
    for args, words in (
        (["run", "c.parquet", "--collection", "p", "--db", f"sqlite:///{tmp_path / 'p.db'}"],
         ("error: reading a Parquet corpus needs the pyarrow package, which is not installed: "
         "pip install 'embedfleet[parquet]'")),
        (["flower", "--no-auth"], ("error: embedfleet flower needs the flower package, which is not installed: "
                                  "pip install 'embedfleet[flower]'")),
    ):
        done = subprocess.run([str(bin_dir / "embedfleet"), *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert words in done.stderr and "Traceback" not in done.stderr, done.stderr
