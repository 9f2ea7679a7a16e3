"""Dead letters: storable letters, a failed chunk's letters, listing, resolving, fetching by id."""

from __future__ import annotations

import pytest

from embedfleet.chunks.dead_letters import (
    LETTER_ID_LENGTH,
    dead_letter_chunk,
    get_letters,
    list_letters,
    open_letter_hashes,
    resolve_stored,
    storable_letter,
)
from embedfleet.chunks.messages import DeadRecord
from embedfleet.errors import LedgerError
from embedfleet.jobs.stats import job_stats
from embedfleet.store.engine import get_engine
from tests.store.helpers import SECRET, one_chunk_job


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


TEXTS = [f"{SECRET} a", "text b"]


def test_a_failed_chunk_becomes_one_letter_per_record_once(db_url: str) -> None:
    """Each record of the open chunk's message, as the ledger keeps it, becomes one letter with the
    error; the chunk and job end, a give-up is counted; a second call writes none."""
    engine = get_engine(db_url)
    job_id, _ = one_chunk_job(engine, ["a", "b"], TEXTS)
    assert dead_letter_chunk(engine, job_id, 0, "TimeoutError", "gave up", giveup=True) == 2
    assert dead_letter_chunk(engine, job_id, 0, "TimeoutError", "gave up", giveup=True) == 0
    letters = list_letters(engine, job_id)
    assert [(x.record_id, x.position, x.text, x.content_hash, x.error_type, x.message) for x in letters] == [
        ("a", 0, f"{SECRET} a", "h0", "TimeoutError", "gave up"), ("b", 1, "text b", "h1", "TimeoutError", "gave up")]
    stats = job_stats(engine, job_id)
    assert (stats.state, stats.dead, stats.giveups) == ("done", 2, 1)
    with engine.connect() as conn:
        assert open_letter_hashes(conn, "c1", ["h0", "hx"]) == {"h0"}
        assert open_letter_hashes(conn, "c1", []) == set()


def test_stored_records_resolve_their_open_letters(sqlite_url: str) -> None:
    """A record stored later clears its letter from the open list; include_resolved still shows it, with the job."""
    engine = get_engine(sqlite_url)
    job_id, _ = one_chunk_job(engine, ["a", "b"])
    dead_letter_chunk(engine, job_id, 0, "ValueError", "bad", giveup=False)
    with engine.begin() as conn:
        resolve_stored(conn, "job-2", "c1", ["a"])
    assert [letter.record_id for letter in list_letters(engine)] == ["b"]
    resolved = [letter for letter in list_letters(engine, include_resolved=True) if letter.record_id == "a"]
    assert resolved[0].redrive_job == "job-2" and resolved[0].resolved_at is not None
    assert len(list_letters(engine, include_resolved=True, limit=1)) == 1


def test_letters_are_fetched_by_id_and_an_unknown_id_is_an_error(sqlite_url: str) -> None:
    """get_letters returns the asked letters in id order; any missing id is named in a LedgerError."""
    engine = get_engine(sqlite_url)
    job_id, _ = one_chunk_job(engine, ["a", "b"])
    dead_letter_chunk(engine, job_id, 0, "ValueError", "bad", giveup=False)
    ids = [letter.id for letter in list_letters(engine)]
    assert [letter.record_id for letter in get_letters(engine, ids[::-1])] == ["a", "b"]
    with pytest.raises(LedgerError, match="no dead letter with id 999"):
        get_letters(engine, [ids[0], 999])
