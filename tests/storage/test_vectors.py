"""Bulk idempotent upserts and ordered reads, on SQLite and on real PostgreSQL."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sqlalchemy import func, select

from embedfleet.config.messages import ChunkVectors
from embedfleet.storage import codec
from embedfleet.storage.collections import open_collection
from embedfleet.storage.engine import get_engine, redact
from embedfleet.storage.export import export_npy, ids_path_for, read_ids
from embedfleet.storage.jobs import job_stats
from embedfleet.storage.ledger import (
    LedgerError,
    add_chunk,
    check_collection_name,
    close_submission,
    create_job,
)
from embedfleet.storage.schema import vectors
from embedfleet.storage.vectors import iter_ordered, store_chunk

DIM = 4


def _chunk(job_id: str, seq: int, positions: list[int], model: str = "m") -> ChunkVectors:
    rng = np.random.default_rng(seq)
    matrix = rng.standard_normal((len(positions), DIM)).astype(np.float32)
    return ChunkVectors(
        job_id=job_id, seq=seq, version_key="c1", model=model, dim=DIM,
        ids=[f"r{p}" for p in positions], positions=positions, hashes=["h"] * len(positions),
        vectors=codec.pack(matrix),
    )


def _job(engine, chunks: dict[int, list[int]]) -> str:
    version = open_collection(engine, "c1", "m", {}, {})
    job_id = create_job(engine, "c1", version.key, "m", "test", {}, records_read=sum(map(len, chunks.values())),
                        skipped_invalid=0)
    for seq, positions in chunks.items():
        add_chunk(engine, job_id, seq, len(positions), b"payload")
    close_submission(engine, job_id, chunks_total=len(chunks), truncated=0)
    return job_id


def test_codec_round_trip() -> None:
    """Vectors survive pack/unpack bit for bit; a wrong dimension is refused."""
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(codec.unpack(codec.pack(matrix), 4), matrix)
    assert [codec.unpack(b, 4)[0, 0] for b in codec.rows(codec.pack(matrix), 4)] == [0.0, 4.0, 8.0]
    with pytest.raises(ValueError):
        codec.unpack(codec.pack(matrix), 5)


def test_store_is_idempotent_and_finishes_job(db_url: str) -> None:
    """Storing a chunk twice leaves one row per record; the last chunk marks the job done."""
    engine = get_engine(db_url)
    job_id = _job(engine, {0: [0, 1, 2], 1: [3, 4]})
    first = _chunk(job_id, 0, [0, 1, 2])
    assert store_chunk(engine, first) == 3
    assert store_chunk(engine, first) == 3
    assert job_stats(engine, job_id).state == "running"
    store_chunk(engine, _chunk(job_id, 1, [3, 4]))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(vectors)).scalar_one() == 5
    stats = job_stats(engine, job_id)
    assert (stats.state, stats.stored, stats.chunks_done) == ("done", 5, 2)


def test_reads_follow_corpus_order_not_arrival(db_url: str) -> None:
    """Chunks stored out of order read back ordered by position."""
    engine = get_engine(db_url)
    job_id = _job(engine, {0: [0, 1], 1: [2, 3], 2: [4, 5]})
    for seq in (2, 0, 1):
        store_chunk(engine, _chunk(job_id, seq, [2 * seq, 2 * seq + 1]))
    ids = [i for block_ids, _ in iter_ordered(engine, "c1", block=3) for i in block_ids]
    assert ids == [f"r{p}" for p in range(6)]


def test_export_writes_matrix_and_ids(sqlite_url: str, tmp_path) -> None:
    """export writes an (N, d) float32 .npy in corpus order and PATH.ids.jsonl beside it."""
    engine = get_engine(sqlite_url)
    job_id = _job(engine, {0: [0, 1], 1: [2]})
    c1, c0 = _chunk(job_id, 1, [2]), _chunk(job_id, 0, [0, 1])
    store_chunk(engine, c1)
    store_chunk(engine, c0)
    out = tmp_path / "v.npy"
    assert export_npy(engine, "c1", out) == (3, DIM)
    matrix = np.load(out)
    np.testing.assert_array_equal(matrix[:2], codec.unpack(c0.vectors, DIM))
    np.testing.assert_array_equal(matrix[2:], codec.unpack(c1.vectors, DIM))
    assert read_ids(ids_path_for(out)) == ["r0", "r1", "r2"]


def test_a_collection_holds_one_model(sqlite_url: str) -> None:
    """Vectors from another model than the collection's are refused."""
    engine = get_engine(sqlite_url)
    job_id = _job(engine, {0: [0]})
    with pytest.raises(LedgerError, match="encoded with"):
        store_chunk(engine, _chunk(job_id, 0, [0], model="other"))
    with pytest.raises(LedgerError, match="is on model 'm', not 'other'"):
        open_collection(engine, "c1", "other", {}, {})


@pytest.mark.parametrize("name", ["", "1abc", "a b", "x;drop table vectors", "a" * 65, "naïve"])
def test_collection_names_are_checked(name: str) -> None:
    """Collection names outside the strict pattern never reach SQL."""
    with pytest.raises(LedgerError, match="invalid collection name"):
        check_collection_name(name)


def test_redact_hides_passwords() -> None:
    """Database and broker URLs print without their passwords."""
    assert "s3cret" not in redact("postgresql://u:s3cret@db:5432/x")
    assert "s3cret" not in redact("rediss://:s3cret@cache:6380/0")


def _with_aliases(job_id: str, seq: int, positions: list[int], aliases: list[list], dead=()) -> ChunkVectors:
    return dataclasses.replace(_chunk(job_id, seq, positions), aliases=aliases, dead=list(dead))


def test_repeats_copy_vectors_or_follow_their_first_record_into_the_dead_letters(sqlite_url: str) -> None:
    """A repeat copies its first record's vector; a repeat of a dead record is dead; nothing is lost."""
    from embedfleet.config.messages import DeadRecord
    from embedfleet.storage.dead_letters import list_letters

    engine = get_engine(sqlite_url)
    job_id = _job(engine, {0: [0, 1, 2, 3, 4]})
    chunk = _chunk(job_id, 0, [0, 1])
    own_hash = "h"  # _chunk gives every record content hash "h"
    dead = [DeadRecord("r2", 2, "bad text", "bad", "ValueError", "poison")]
    chunk = dataclasses.replace(chunk, dead=dead, aliases=[["r3", 3, own_hash, "x"], ["r4", 4, "bad", "bad text"]])
    assert store_chunk(engine, chunk) == 3
    letters = {letter.record_id: letter.error_type for letter in list_letters(engine, job_id)}
    assert letters == {"r2": "ValueError", "r4": "RepeatOfDeadLetter"}
    stats = job_stats(engine, job_id)
    assert (stats.stored, stats.dead, stats.state) == (3, 2, "done")


def test_a_repeat_waits_for_its_first_record_then_gives_up_alone(sqlite_url: str) -> None:
    """An unstored first record makes the collector retry; on the last try only the repeat is dead-lettered."""
    from embedfleet.storage.dead_letters import list_letters
    from embedfleet.storage.errors import SourceNotStored

    engine = get_engine(sqlite_url)
    job_id = _job(engine, {0: [0, 1, 2]})
    chunk = _with_aliases(job_id, 0, [0, 1], [["r2", 2, "elsewhere", "text"]])
    with pytest.raises(SourceNotStored):
        store_chunk(engine, chunk, last_attempt=False)
    assert job_stats(engine, job_id).stored == 0  # rolled back whole
    assert store_chunk(engine, chunk, last_attempt=True) == 2
    (letter,) = list_letters(engine, job_id)
    assert (letter.record_id, letter.error_type, letter.text) == ("r2", "SourceNotStored", "text")


def test_a_wrong_model_first_does_not_poison_the_version_check(sqlite_url: str) -> None:
    """A chunk of the wrong model is refused without fixing the version's dimension; the right one then stores."""
    engine = get_engine(sqlite_url)
    job_id = _job(engine, {0: [0]})
    with pytest.raises(LedgerError, match="encoded with"):
        store_chunk(engine, _chunk(job_id, 0, [0], model="other"))
    assert store_chunk(engine, _chunk(job_id, 0, [0])) == 1


def test_stalled_jobs_are_found_after_their_lease(db_url: str) -> None:
    """A running job whose open chunks show no sign of life for the lease is stalled; a busy one is not."""
    from sqlalchemy import update as sql_update

    from embedfleet.storage.ledger import stalled_jobs
    from embedfleet.storage.schema import chunks

    engine = get_engine(db_url)
    quiet = _job(engine, {0: [0], 1: [1]})
    busy = _job(engine, {0: [0]})
    with engine.begin() as conn:
        conn.execute(sql_update(chunks).where(chunks.c.job_id == quiet).values(sent_at=1.0))
    store_chunk(engine, _chunk(quiet, 0, [0]))  # done long ago, by its clock
    with engine.begin() as conn:
        conn.execute(sql_update(chunks).where(chunks.c.job_id == quiet).values(done_at=2.0))
    assert stalled_jobs(engine, lease_seconds=60) == [quiet]
    assert stalled_jobs(engine, lease_seconds=10**10) == []
    assert busy not in stalled_jobs(engine, lease_seconds=60)


def test_a_submission_whose_producer_died_is_abandoned(sqlite_url: str) -> None:
    """A job left `submitting` with no sign of life past the lease becomes `abandoned`; waiting on it stops."""
    from sqlalchemy import update as sql_update

    from embedfleet.producers.progress import JobProgress
    from embedfleet.storage.ledger import abandon_stalled_submissions
    from embedfleet.storage.schema import chunks

    engine = get_engine(sqlite_url)
    version = open_collection(engine, "c1", "m", {}, {})
    job_id = create_job(engine, "c1", version.key, "m", "test", {}, records_read=10, skipped_invalid=0)
    add_chunk(engine, job_id, 0, 5, b"payload")  # the producer died before close_submission
    assert abandon_stalled_submissions(engine, lease_seconds=60) == []
    with engine.begin() as conn:
        conn.execute(sql_update(chunks).where(chunks.c.job_id == job_id).values(sent_at=1.0))
    assert abandon_stalled_submissions(engine, lease_seconds=60) == [job_id]
    assert job_stats(engine, job_id).state == "abandoned"
    with pytest.raises(LedgerError, match="abandoned"), JobProgress(engine, job_id) as progress:
        progress.wait_done(timeout=5)


@pytest.mark.parametrize("url", ["sqlite", "postgres"])
def test_export_ids_file_has_one_line_per_row_whatever_the_ids_hold(url: str, tmp_path, request) -> None:
    """Ids with a newline, carriage return, tab, quotes, backslash, NEL, line separator and non-ASCII
    letters (stored by older versions or SQL sources) each take one line: as many entries as rows,
    reading back exactly; str.splitlines() agrees; a stale PATH.ids.txt is removed."""
    db = request.getfixturevalue("sqlite_url" if url == "sqlite" else "pg_url")
    engine = get_engine(db)
    odd = ["plain", "new\nline", "cr\rlf\r\n", "tab\there", 'say "hi"', "back\\slash\\n", "nel\x85x",
           "ls\u2028ps\u2029", "héllo 世界 🙂", "'single'", "{\"json\": 1}"]
    job_id = _job(engine, {0: list(range(len(odd)))})
    chunk = dataclasses.replace(_chunk(job_id, 0, list(range(len(odd)))), ids=odd)
    store_chunk(engine, chunk)
    out = tmp_path / "odd.npy"
    (tmp_path / "odd.ids.txt").write_text("stale\n")
    assert export_npy(engine, "c1", out) == (len(odd), DIM)
    path = ids_path_for(out)
    assert path.name == "odd.ids.jsonl" and not (tmp_path / "odd.ids.txt").exists()
    assert read_ids(path) == odd
    assert len(path.read_text(encoding="utf-8").splitlines()) == len(np.load(out)) == len(odd)
    assert path.read_text(encoding="utf-8").splitlines()[8] == '"héllo 世界 🙂"'  # non-ASCII stays readable
