"""The collector: idempotent one-transaction stores of a chunk, its repeats and its refused rows as
letters, and a failed chunk's letters from the ledger's copy of its message, on SQLite and real PostgreSQL."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import func, select, text

from embedfleet.chunks.collect import store_chunk
from embedfleet.chunks.dead_letters import dead_letter_chunk, list_letters
from embedfleet.chunks.messages import DeadRecord, read_payload
from embedfleet.jobs.stats import job_stats
from embedfleet.store.engine import get_engine
from embedfleet.store.ledger import LedgerError
from embedfleet.store.schema import vectors
from embedfleet.store.vectors import iter_ordered
from tests.store.helpers import (
    SECRET,
    chunk_vectors,
    job_with_chunks,
    one_chunk_job,
    refuse_ids_starting_bad,
    stored_ids,
    with_aliases,
)


def test_store_is_idempotent_and_finishes_job(db_url: str) -> None:
    """Storing a chunk twice leaves one row per record; the last chunk marks the job done."""
    engine = get_engine(db_url)
    job_id = job_with_chunks(engine, {0: [0, 1, 2], 1: [3, 4]})
    first = chunk_vectors(job_id, 0, [0, 1, 2])
    assert store_chunk(engine, first) == 3
    assert store_chunk(engine, first) == 3
    assert job_stats(engine, job_id).state == "running"
    store_chunk(engine, chunk_vectors(job_id, 1, [3, 4]))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(vectors)).scalar_one() == 5
    stats = job_stats(engine, job_id)
    assert (stats.state, stats.stored, stats.chunks_done) == ("done", 5, 2)


def test_postgres_statistics_are_refreshed_early_in_a_load(pg_url: str) -> None:
    """Storing one of the first chunks of a job analyzes the vectors table (see
    ANALYZE_AFTER_SEQS), so the version's look-ups are planned on its real size; other
    chunks do not."""
    engine = get_engine(pg_url)
    job_id = job_with_chunks(engine, {seq: [2 * seq, 2 * seq + 1] for seq in range(5)})

    def analyzed_rows() -> float:
        with engine.connect() as conn:
            return float(conn.execute(text("SELECT reltuples FROM pg_class WHERE relname = 'vectors'")).scalar_one())

    for seq in range(4):
        store_chunk(engine, chunk_vectors(job_id, seq, [2 * seq, 2 * seq + 1]))
    assert analyzed_rows() == -1  # never analyzed (PostgreSQL 14 and newer)
    store_chunk(engine, chunk_vectors(job_id, 4, [8, 9]))
    assert analyzed_rows() == 10


def test_reads_follow_corpus_order_not_arrival(db_url: str) -> None:
    """Chunks stored out of order read back ordered by position."""
    engine = get_engine(db_url)
    job_id = job_with_chunks(engine, {0: [0, 1], 1: [2, 3], 2: [4, 5]})
    for seq in (2, 0, 1):
        store_chunk(engine, chunk_vectors(job_id, seq, [2 * seq, 2 * seq + 1]))
    ids = [i for block_ids, _ in iter_ordered(engine, "c1", block=3) for i in block_ids]
    assert ids == [f"r{p}" for p in range(6)]


def test_repeats_copy_vectors_or_follow_their_first_record_into_the_dead_letters(sqlite_url: str) -> None:
    """A repeat copies its first record's vector; a repeat of a dead record is dead; nothing is lost."""
    from embedfleet.chunks.dead_letters import list_letters

    engine = get_engine(sqlite_url)
    job_id = job_with_chunks(engine, {0: [0, 1, 2, 3, 4]})
    chunk = chunk_vectors(job_id, 0, [0, 1])
    own_hash = "h"  # chunk_vectors gives every record content hash "h"
    dead = [DeadRecord("r2", 2, "bad text", "bad", "ValueError", "poison")]
    chunk = dataclasses.replace(chunk, dead=dead, aliases=[["r3", 3, own_hash, "x"], ["r4", 4, "bad", "bad text"]])
    assert store_chunk(engine, chunk) == 3
    letters = {letter.record_id: letter.error_type for letter in list_letters(engine, job_id)}
    assert letters == {"r2": "ValueError", "r4": "RepeatOfDeadLetter"}
    stats = job_stats(engine, job_id)
    assert (stats.stored, stats.dead, stats.state) == (3, 2, "done")


def test_a_repeat_waits_for_its_first_record_then_gives_up_alone(sqlite_url: str) -> None:
    """An unstored first record makes the collector retry; on the last try only the repeat is dead-lettered."""
    from embedfleet.chunks.dead_letters import list_letters
    from embedfleet.errors import SourceNotStored

    engine = get_engine(sqlite_url)
    job_id = job_with_chunks(engine, {0: [0, 1, 2]})
    chunk = with_aliases(job_id, 0, [0, 1], [["r2", 2, "elsewhere", "text"]])
    with pytest.raises(SourceNotStored):
        store_chunk(engine, chunk, last_attempt=False)
    assert job_stats(engine, job_id).stored == 0  # rolled back whole
    assert store_chunk(engine, chunk, last_attempt=True) == 2
    (letter,) = list_letters(engine, job_id)
    assert (letter.record_id, letter.error_type, letter.text) == ("r2", "SourceNotStored", "text")


def test_a_wrong_model_first_does_not_poison_the_version_check(sqlite_url: str) -> None:
    """A chunk of the wrong model is refused without fixing the version's dimension; the right one then stores."""
    engine = get_engine(sqlite_url)
    job_id = job_with_chunks(engine, {0: [0]})
    with pytest.raises(LedgerError, match="encoded with"):
        store_chunk(engine, chunk_vectors(job_id, 0, [0], model="other"))
    assert store_chunk(engine, chunk_vectors(job_id, 0, [0])) == 1


def test_store_chunk_dead_letters_refused_rows_and_finishes_the_job(sqlite_url):
    """A chunk with rows the database refuses stores the rest; each refused row is one StorageRejected
    letter with its text (from the ledger) and a message without it; the job is done and adds up."""
    engine = get_engine(sqlite_url)
    refuse_ids_starting_bad(engine)
    job_id, chunk = one_chunk_job(engine, ["r0", "bad1", "r2", "r3"])
    assert store_chunk(engine, chunk) == 3
    assert stored_ids(engine) == ["r0", "r2", "r3"]
    [letter] = list_letters(engine, job_id)
    assert (letter.record_id, letter.error_type, letter.text) == ("bad1", "StorageRejected", f"{SECRET} 1")
    assert letter.message == "the database refused to store the record: IntegrityError: refused by trigger"
    stats = job_stats(engine, job_id)
    assert (stats.state, stats.stored, stats.dead) == ("done", 3, 1)
    assert stats.stored + stats.skipped + stats.dead == stats.records_read
    assert store_chunk(engine, chunk) == 3  # a redelivery: same rows, no second letter
    assert len(list_letters(engine, job_id)) == 1


def test_postgres_unstorable_ids_become_letters_and_the_rest_is_stored(pg_url):
    """On PostgreSQL an over-long id and a NUL in an id (validation bypassed) each become one
    StorageRejected letter, written sanitised, with the record's NUL-holding text; the rest is stored,
    the job finishes and adds up."""
    engine = get_engine(pg_url)
    ids = ["r0", "x" * 600, "r2", "nul\x00id", "r4"]
    texts = ["t0", "t1", "t2", f"{SECRET}\x00with NUL", "t4"]
    job_id, chunk = one_chunk_job(engine, ids, texts)
    assert store_chunk(engine, chunk) == 3
    assert stored_ids(engine) == ["r0", "r2", "r4"]
    letters = {letter.position: letter for letter in list_letters(engine, job_id)}
    assert sorted(letters) == [1, 3]
    assert {letter.error_type for letter in letters.values()} == {"StorageRejected"}
    assert letters[1].record_id.endswith("...[600 chars]") and len(letters[1].record_id) == 512
    assert "StringDataRightTruncation: value too long for type character varying(512)" in letters[1].message
    assert "[record id altered to fit storage: shortened, it has 600 characters]" in letters[1].message
    assert (letters[3].record_id, letters[3].text) == ("nul\\x00id", f"{SECRET}with NUL")
    assert SECRET not in letters[3].message
    stats = job_stats(engine, job_id)
    assert (stats.state, stats.stored, stats.dead, stats.records_read) == ("done", 3, 2, 5)


def test_a_failed_chunk_becomes_one_letter_per_record_once(db_url: str) -> None:
    """Every record of the open chunk becomes a letter with the error and its text from the ledger's copy
    of the message; the chunk and job end; a second call writes none."""
    engine = get_engine(db_url)
    job_id, _ = one_chunk_job(engine, ["a", "b", "c"])
    assert dead_letter_chunk(engine, job_id, 0, "TimeoutError", "gave up", giveup=True) == 3
    assert dead_letter_chunk(engine, job_id, 0, "TimeoutError", "gave up", giveup=True) == 0
    letters = list_letters(engine, job_id)
    assert [(letter.record_id, letter.position, letter.error_type) for letter in letters] == [
        ("a", 0, "TimeoutError"), ("b", 1, "TimeoutError"), ("c", 2, "TimeoutError")]
    assert letters[0].text.startswith(SECRET)
    stats = job_stats(engine, job_id)
    assert (stats.state, stats.dead, stats.giveups) == ("done", 3, 1)


def test_read_payload_lists_encoded_records_then_repeats() -> None:
    """A ledger payload reads back as its version key and (id, position, text, hash) of every record."""
    import msgpack

    from embedfleet.chunks.messages import ChunkTexts

    message = ChunkTexts("j", 0, "v1", "m", ["a", "b"], [0, 2], ["ta", "tb"], ["ha", "hb"],
                         aliases=[["c", 1, "ha", "ta"]])
    assert read_payload(msgpack.packb(message.to_wire())) == (
        "v1", [("a", 0, "ta", "ha"), ("b", 2, "tb", "hb"), ("c", 1, "ta", "ha")])


@pytest.mark.parametrize("server", ["sqlite", "pgvector"])
def test_text_and_metadata_are_kept_beside_the_vector_and_repeats_keep_their_own(server, request) -> None:
    """With store_text and metadata, each row keeps its text and metadata (a repeat its own, not its first
    record's); without, both stay NULL. On SQLite and on PostgreSQL with pgvector (jsonb, vector column)."""
    from embedfleet.store.vectors import stored_extras

    url = request.getfixturevalue("sqlite_url" if server == "sqlite" else "pgvector_url")
    engine = get_engine(url)
    job_id = job_with_chunks(engine, {0: [0, 1, 2]})
    chunk = dataclasses.replace(
        chunk_vectors(job_id, 0, [0, 1]), store_text=True, texts=["zero", "one é\u2028"],
        metadata=[{"k": 0, "t": ["a"]}, None],
        aliases=[["r2", 2, "h", "one é\u2028", {"k": 2}]])
    assert store_chunk(engine, chunk) == 3
    assert stored_extras(engine, "c1", ["r0", "r1", "r2", "nope"]) == {
        "r0": ("zero", {"k": 0, "t": ["a"]}), "r1": ("one é\u2028", None), "r2": ("one é\u2028", {"k": 2})}
    plain_job = job_with_chunks(engine, {0: [3]})
    store_chunk(engine, chunk_vectors(plain_job, 0, [3]))
    assert stored_extras(engine, "c1", ["r3"]) == {"r3": (None, None)}


def test_a_store_held_up_by_a_lock_fails_after_its_lock_timeout(pg_url: str) -> None:
    """With lock_timeout (the encode task's store here), a store waiting on a lock another session holds fails in
    about that time, rolled back, instead of waiting for the lock (and past the encode's hard time limit)."""
    import time

    from sqlalchemy.exc import OperationalError

    engine = get_engine(pg_url)
    job_id, chunk = one_chunk_job(engine, ["a", "b"])
    with engine.connect() as other:
        other.execute(text("SELECT 1 FROM chunks WHERE job_id = :j FOR UPDATE"), {"j": job_id})  # held until rollback
        began = time.monotonic()
        with pytest.raises(OperationalError, match="lock timeout"):
            store_chunk(engine, chunk, lock_timeout=0.5)
        waited = time.monotonic() - began
        other.rollback()
    assert 0.4 < waited < 5, waited
    assert job_stats(engine, job_id).stored == 0
    assert store_chunk(engine, chunk, lock_timeout=0.5) == 2  # the lock gone, the same store goes through
