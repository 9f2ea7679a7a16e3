"""Validation refuses what storage cannot hold (long ids, control characters) and removes NUL from texts."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from embedfleet.producers.readers import Corpus, RawRecord
from embedfleet.producers.records import (
    MAX_ID_LENGTH,
    FieldSpec,
    Invalid,
    Record,
    build_record,
)
from embedfleet.producers.validation import scan_corpus
from embedfleet.storage.schema import vectors
from tests.conftest import TEST_REDIS_URL, embedfleet


def _build(record: dict) -> Record | Invalid:
    return build_record(RawRecord(7, record), 0, FieldSpec())


def test_id_length_limit_comes_from_the_schema():
    """The id limit is the vectors.record_id column's length, not a second constant."""
    assert MAX_ID_LENGTH == vectors.c.record_id.type.length == 512


def test_over_long_id_is_refused_with_its_length():
    """An id longer than the column is invalid, naming its length and the limit; 512 is still fine."""
    assert isinstance(_build({"id": "a" * MAX_ID_LENGTH, "text": "x"}), Record)
    invalid = _build({"id": "a" * 700, "text": "x"})
    assert isinstance(invalid, Invalid)
    assert invalid.reason == "id too long: 700 characters, the most storage holds is 512"
    shown = str(invalid)
    assert shown.startswith("line 7 (id 'aaaa") and "... (700 characters)" in shown and len(shown) < 200


@pytest.mark.parametrize("char, name", [
    ("\x00", "NUL"), ("\n", "newline"), ("\r", "carriage return"), ("\t", "tab"), ("\x1b", "control character"),
    ("\x7f", "control character"), ("\x85", "control character"), ("\u2028", "LINE SEPARATOR"),
    ("\u2029", "PARAGRAPH SEPARATOR"),
])
def test_control_characters_in_ids_are_refused(char, name):
    """C0 and C1 controls, DEL and the line/paragraph separators in an id are refused, named, with where."""
    invalid = _build({"id": f"ab{char}c", "text": "x"})
    assert isinstance(invalid, Invalid)
    assert invalid.reason == f"id contains a control character: U+{ord(char):04X} ({name}) at character 3"
    assert "\n" not in str(invalid) and "\x00" not in str(invalid)


def test_ordinary_unicode_punctuation_and_spaces_in_ids_are_fine():
    """Spaces, quotes, backslashes and non-ASCII letters are storable and stay valid."""
    for record_id in ('a b', 'say "hi"', "C:\\tmp\\x", "héllo-世界", "\u00a0nbsp"):
        assert isinstance(_build({"id": record_id, "text": "x"}), Record), record_id


def test_nul_in_text_is_removed_and_hashed_without_it():
    """NUL characters are removed from the text; the hash is of the text as embedded."""
    record = _build({"id": "r", "text": "a\x00b\x00"})
    clean = _build({"id": "r", "text": "ab"})
    assert isinstance(record, Record) and isinstance(clean, Record)
    assert record.text == "ab" and record.nul_removed
    assert record.content_hash == clean.content_hash and not clean.nul_removed


def test_text_of_only_nul_is_empty():
    """A text that is nothing but NUL is an empty text."""
    invalid = _build({"id": "r", "text": "\x00\x00 "})
    assert isinstance(invalid, Invalid) and invalid.reason.startswith("empty text")


def test_scan_reports_unstorable_records_by_line_and_counts_nul_removals(tmp_path, caplog):
    """scan_corpus names each refused record's line and reason, and logs how many texts lost NULs."""
    path = tmp_path / "c.jsonl"
    rows = [{"id": "ok", "text": "x"}, {"id": "L" * 600, "text": "x"}, {"id": "a\x00b", "text": "x"},
            {"id": "n\nl", "text": "x"}, {"id": "t", "text": "has\x00nul"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("WARNING"):
        scan = scan_corpus(Corpus(str(path)), FieldSpec())
    assert scan.records_read == 5 and scan.invalid_count == 3 and scan.nul_removed == 1
    assert [(i.line, i.reason.split(":")[0]) for i in scan.invalid_shown] == [
        (2, "id too long"), (3, "id contains a control character"), (4, "id contains a control character")]
    assert "removed NUL characters from the text of 1 records" in caplog.text


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
