"""Rows the database refuses: isolated into dead letters, letters always writable, errors rendered
without data, and a failed transaction never leaves the collector without its staging table."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text

from embedfleet.config.messages import ChunkTexts, ChunkVectors, DeadRecord
from embedfleet.storage import codec
from embedfleet.storage.bulk import upsert_isolating, upsert_rows
from embedfleet.storage.collections import open_collection
from embedfleet.storage.dead_letters import (
    LETTER_ID_LENGTH,
    list_letters,
    storable_letter,
)
from embedfleet.storage.engine import get_engine
from embedfleet.storage.jobs import job_stats
from embedfleet.storage.ledger import add_chunk, close_submission, create_job
from embedfleet.storage.safe_errors import (
    RedactedError,
    error_type,
    redacted,
    safe_error,
)
from embedfleet.storage.schema import dead_letters, vectors
from embedfleet.storage.vectors import store_chunk

DIM = 4
SECRET = "TOP-SECRET-CORPUS-TEXT"


def _job(engine, ids: list[str], texts: list[str] | None = None) -> tuple[str, ChunkVectors]:
    """A one-chunk job whose ledger row holds the texts, and the chunk's vectors as a worker sends them."""
    version = open_collection(engine, "c1", "m", {}, {})
    job_id = create_job(engine, "c1", version.key, "m", "test", {}, records_read=len(ids), skipped_invalid=0)
    positions = list(range(len(ids)))
    texts = texts or [f"{SECRET} {i}" for i in positions]
    hashes = [f"h{i}" for i in positions]
    message = ChunkTexts(job_id=job_id, seq=0, version_key=version.key, model="m", ids=ids, positions=positions,
                         texts=texts, hashes=hashes)
    add_chunk(engine, job_id, 0, len(ids), msgpack.packb(message.to_wire()))
    close_submission(engine, job_id, chunks_total=1, truncated=0)
    matrix = np.random.default_rng(0).standard_normal((len(ids), DIM)).astype(np.float32)
    return job_id, ChunkVectors(job_id=job_id, seq=0, version_key=version.key, model="m", dim=DIM, ids=ids,
                                positions=positions, hashes=hashes, vectors=codec.pack(matrix))


def _stored_ids(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(vectors.c.record_id).order_by(vectors.c.position)).scalars())


def _refuse_ids_starting_bad(engine) -> None:
    """SQLite stores any id; a trigger makes it refuse some, as PostgreSQL refuses long ids."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TRIGGER refuse_bad BEFORE INSERT ON vectors WHEN NEW.record_id LIKE 'bad%' "
                          "BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"))


# --- safe_error / redacted --------------------------------------------------------------------

def test_safe_error_drops_parameters_sql_and_detail_lines():
    """A SQLAlchemy error renders as the driver's class and first message line: no SQL, parameters, DETAIL."""
    orig = ValueError(f"new row violates check constraint\nDETAIL:  Failing row contains ({SECRET}).")
    wrapped = sa_exc.IntegrityError("INSERT INTO dead_letters (text) VALUES (%(text)s)", {"text": SECRET}, orig)
    assert SECRET in str(wrapped)  # what SQLAlchemy alone would show
    assert safe_error(wrapped) == "ValueError: new row violates check constraint"
    assert error_type(wrapped) == "IntegrityError"


def test_safe_error_prefers_the_servers_primary_message():
    """A driver error with diagnostics renders its primary message only; long messages are cut."""
    class Diag:
        message_primary = "value too long for type character varying(512)"

    class StringDataRightTruncation(Exception):
        diag = Diag()

    assert safe_error(StringDataRightTruncation("value too long\nCONTEXT: COPY vectors_in, line 1")) == (
        "StringDataRightTruncation: value too long for type character varying(512)")
    assert len(safe_error(RuntimeError("x" * 5000))) < 400


def test_redacted_keeps_retryable_errors_and_hides_the_rest():
    """Errors the task retries keep their type; others become a RedactedError naming the original type."""
    transient = sa_exc.OperationalError("SELECT 1", None, ConnectionError("server closed the connection"))
    assert redacted(transient, keep=(sa_exc.OperationalError,)) is transient
    data = sa_exc.DataError("INSERT ...", {"text": SECRET}, ValueError("value too long"))
    safe = redacted(data, keep=(sa_exc.OperationalError,))
    assert isinstance(safe, RedactedError) and SECRET not in str(safe) and SECRET not in repr(safe)
    assert (error_type(safe), str(safe)) == ("DataError", "ValueError: value too long")
    assert safe_error(safe) == str(safe) and redacted(safe) is safe


def test_engine_hides_parameters(sqlite_url):
    """The engines never put statement parameters in error messages."""
    engine = get_engine(sqlite_url)
    with pytest.raises(sa_exc.StatementError) as caught:
        with engine.connect() as conn:
            conn.execute(text("INSERT INTO no_such_table VALUES (:t)"), {"t": SECRET})
    assert SECRET not in str(caught.value)


# --- letters ------------------------------------------------------------------------------------

def test_storable_letter_escapes_nul_and_shortens_long_ids():
    """NUL in an id is written as \\x00, in a text removed; an over-long id is cut to the column with a
    marker; the message says so and keeps the original length; a clean letter is returned as is."""
    clean = DeadRecord("r1", 0, "t", "h", "E", "m")
    assert storable_letter(clean) is clean
    letter = storable_letter(DeadRecord("a\x00b", 1, "x\x00y", "h", "E\x00", "boom\x00"))
    assert (letter.record_id, letter.text, letter.error_type) == ("a\\x00b", "xy", "E")
    assert letter.message == ("[record id altered to fit storage: NUL written as \\x00; NUL removed from the text] "
                              "boom")
    long = storable_letter(DeadRecord("L" * 700, 2, "t", "h", "E", "m"))
    assert len(long.record_id) == LETTER_ID_LENGTH and long.record_id.endswith("...[700 chars]")
    assert long.message == "[record id altered to fit storage: shortened, it has 700 characters] m"
    text_only = storable_letter(DeadRecord("r", 3, "a\x00", "h", "E", "m"))
    assert text_only.message == "[letter altered to fit storage: NUL removed from the text] m"


# --- isolation on SQLite ------------------------------------------------------------------------

def test_upsert_isolating_stores_good_rows_and_returns_each_refused_row(sqlite_url):
    """Bisection with savepoints: every good row is stored, each refused row comes back with its error."""
    engine = get_engine(sqlite_url)
    _refuse_ids_starting_bad(engine)
    ids = ["a", "bad1", "b", "c", "d", "bad2", "e", "f", "g"]
    rows = [("c1", i, n, "h", "m", b"\0" * 4, 0.0) for n, i in enumerate(ids)]
    with engine.begin() as conn:
        with pytest.raises(sa_exc.IntegrityError):
            with conn.begin_nested():
                upsert_rows(conn, rows)
        rejected = upsert_isolating(conn, rows)
    assert [(i, type(e).__name__) for i, e in rejected] == [(1, "IntegrityError"), (5, "IntegrityError")]
    assert _stored_ids(engine) == ["a", "b", "c", "d", "e", "f", "g"]


def test_store_chunk_dead_letters_refused_rows_and_finishes_the_job(sqlite_url):
    """A chunk with rows the database refuses stores the rest; each refused row is one StorageRejected
    letter with its text (from the ledger) and a message without it; the job is done and adds up."""
    engine = get_engine(sqlite_url)
    _refuse_ids_starting_bad(engine)
    job_id, chunk = _job(engine, ["r0", "bad1", "r2", "r3"])
    assert store_chunk(engine, chunk) == 3
    assert _stored_ids(engine) == ["r0", "r2", "r3"]
    [letter] = list_letters(engine, job_id)
    assert (letter.record_id, letter.error_type, letter.text) == ("bad1", "StorageRejected", f"{SECRET} 1")
    assert letter.message == "the database refused to store the record: IntegrityError: refused by trigger"
    stats = job_stats(engine, job_id)
    assert (stats.state, stats.stored, stats.dead) == ("done", 3, 1)
    assert stats.stored + stats.skipped + stats.dead == stats.records_read
    assert store_chunk(engine, chunk) == 3  # a redelivery: same rows, no second letter
    assert len(list_letters(engine, job_id)) == 1


# --- PostgreSQL ---------------------------------------------------------------------------------

def test_postgres_unstorable_ids_become_letters_and_the_rest_is_stored(pg_url):
    """On PostgreSQL an over-long id and a NUL in an id (validation bypassed) each become one
    StorageRejected letter, written sanitised, with the record's NUL-holding text; the rest is stored,
    the job finishes and adds up."""
    engine = get_engine(pg_url)
    ids = ["r0", "x" * 600, "r2", "nul\x00id", "r4"]
    texts = ["t0", "t1", "t2", f"{SECRET}\x00with NUL", "t4"]
    job_id, chunk = _job(engine, ids, texts)
    assert store_chunk(engine, chunk) == 3
    assert _stored_ids(engine) == ["r0", "r2", "r4"]
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


def test_postgres_failed_transaction_does_not_lose_the_staging_table(pg_url):
    """After a transaction that created the COPY staging table rolls back, the next chunk on the same
    connection stores everything (it used to fail with UndefinedTable: vectors_in)."""
    engine = get_engine(pg_url)
    with pytest.raises(RuntimeError):
        with engine.begin() as conn:
            upsert_rows(conn, [("c0", "a", 0, "h", "m", b"\0" * 16, 0.0)])
            raise RuntimeError("the collector's transaction fails after the upsert")
    job_id, chunk = _job(engine, [f"r{i}" for i in range(195)])
    assert store_chunk(engine, chunk) == 195
    stats = job_stats(engine, job_id)
    assert (stats.state, stats.stored, stats.dead) == ("done", 195, 0)
    with engine.connect() as conn:
        assert conn.execute(select(dead_letters.c.id)).all() == []


def test_redacted_error_pickles_with_its_type():
    """Celery pickles task exceptions (and wraps those it cannot, hiding their type): a RedactedError
    round-trips with its message and error type."""
    import pickle

    safe = RedactedError("ValueError: value too long", "DataError")
    back = pickle.loads(pickle.dumps(safe))
    assert (str(back), error_type(back), repr(back)) == (
        "ValueError: value too long", "DataError", "RedactedError('ValueError: value too long', 'DataError')")


def test_redrive_skips_letters_whose_id_was_altered(sqlite_url):
    """A letter whose id had to be altered to fit storage is not redriven (it would store the vector
    under the wrong id); the others are."""
    from embedfleet.producers.recovery import redrive
    from embedfleet.storage.dead_letters import insert_letters

    engine = get_engine(sqlite_url)
    job_id, _ = _job(engine, ["x"])
    with engine.begin() as conn:
        insert_letters(conn, job_id, 0, "c1", [DeadRecord("fine", 0, "t0", "h0", "StorageRejected", "m"),
                                              DeadRecord("a\x00b", 1, "t1", "h1", "StorageRejected", "m")], 1)
    sent: list[ChunkTexts] = []
    assert len(redrive(engine, sent.append, list_letters(engine), 16, 4096, 256)) == 1
    assert [i for chunk in sent for i in chunk.ids] == ["fine"]
