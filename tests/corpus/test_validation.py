"""Whole-corpus validation: counts, the shown errors, duplicate ids, and the InvalidInput message."""

from __future__ import annotations

import json

import pytest

from embedfleet.corpus.readers import Corpus
from embedfleet.corpus.records import FieldSpec, Invalid, Record
from embedfleet.corpus.validation import (
    FIELD_SAMPLE,
    SHOWN_ERRORS,
    InvalidInput,
    UnknownField,
    check_fields,
    scan_corpus,
    valid_records,
)


def write_jsonl(tmp_path, rows, name="corpus.jsonl") -> Corpus:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return Corpus(str(path))


def test_clean_corpus_scans_with_no_invalid_records(tmp_path):
    """A corpus of good records counts them all and reports nothing."""
    corpus = write_jsonl(tmp_path, [{"id": f"r{i}", "text": "x"} for i in range(5)])
    scan = scan_corpus(corpus, FieldSpec())
    assert scan.records_read == 5
    assert scan.invalid_count == 0
    assert scan.invalid_shown == []
    assert scan.repeated_hashes == set()
    assert scan.report() == ""


def test_scan_counts_read_and_invalid_records(tmp_path):
    """records_read counts every record (blank lines excluded); invalid_count counts the bad ones."""
    rows = [
        {"id": "a", "text": "ok"},
        "",
        "{not json",
        {"id": "b", "text": ""},
        {"text": "no id"},
        {"id": "c", "text": "ok"},
    ]
    scan = scan_corpus(write_jsonl(tmp_path, rows), FieldSpec())
    assert scan.records_read == 5
    assert scan.invalid_count == 3
    assert [i.line for i in scan.invalid_shown] == [3, 4, 5]


def test_only_first_errors_are_kept_and_report_counts_the_rest(tmp_path):
    """Only the first SHOWN_ERRORS invalid records are kept; report() ends with '... and N more'."""
    assert SHOWN_ERRORS == 20
    rows = [{"id": f"r{i}", "text": "" if i % 2 else "ok"} for i in range(100)]  # 50 invalid
    scan = scan_corpus(write_jsonl(tmp_path, rows), FieldSpec())
    assert scan.records_read == 100
    assert scan.invalid_count == 50
    assert len(scan.invalid_shown) == 20
    assert [i.line for i in scan.invalid_shown] == [2 * k + 2 for k in range(20)]
    lines = scan.report().splitlines()
    assert len(lines) == 21
    assert lines[0] == "line 2 (id 'r1'): empty text (fields 'text')"
    assert lines[-1] == "... and 30 more invalid records"


def test_report_has_no_more_line_when_all_errors_are_shown(tmp_path):
    """With at most SHOWN_ERRORS invalid records the report lists them all and no '... more' line."""
    rows = [{"id": f"r{i}", "text": ""} for i in range(20)]
    scan = scan_corpus(write_jsonl(tmp_path, rows), FieldSpec())
    assert scan.invalid_count == 20
    assert "more" not in scan.report()
    assert len(scan.report().splitlines()) == 20


def test_duplicate_ids_later_occurrences_are_invalid(tmp_path):
    """The 2nd and later records with an id already seen are Invalid 'duplicate id (first at line N)'."""
    rows = [
        {"id": "a", "text": "one"},
        {"id": "b", "text": "two"},
        {"id": "a", "text": "three"},
        {"id": "c", "text": "four"},
        {"id": "a", "text": "five"},
    ]
    scan = scan_corpus(write_jsonl(tmp_path, rows), FieldSpec())
    assert scan.records_read == 5
    assert scan.invalid_count == 2
    assert scan.invalid_shown == [
        Invalid(3, "a", "duplicate id (first at line 1)"),
        Invalid(5, "a", "duplicate id (first at line 1)"),
    ]


def test_duplicate_first_occurrence_stays_valid(tmp_path):
    """valid_records with the scan keeps the first occurrence of a repeated id and rejects the later ones."""
    rows = [
        {"id": "a", "text": "one"},
        {"id": "b", "text": "two"},
        {"id": "a", "text": "three"},
        {"id": "b", "text": "four"},
    ]
    corpus = write_jsonl(tmp_path, rows)
    scan = scan_corpus(corpus, FieldSpec())
    built = list(valid_records(corpus, FieldSpec(), scan))
    assert [type(b) for b in built] == [Record, Record, Invalid, Invalid]
    assert [(r.record_id, r.text, r.position) for r in built[:2]] == [("a", "one", 0), ("b", "two", 1)]
    assert built[2] == Invalid(3, "a", "duplicate id (first at line 1)")
    assert built[3] == Invalid(4, "b", "duplicate id (first at line 2)")


def test_int_and_string_ids_with_same_text_are_duplicates(tmp_path):
    """An int id and the same digits as a string are one id (ids are strings)."""
    corpus = write_jsonl(tmp_path, [{"id": 7, "text": "x"}, {"id": "7", "text": "y"}])
    scan = scan_corpus(corpus, FieldSpec())
    assert scan.invalid_shown == [Invalid(2, "7", "duplicate id (first at line 1)")]


def test_duplicate_of_an_invalid_record_is_not_a_duplicate(tmp_path):
    """An id first seen on an invalid record does not make its later valid record a duplicate."""
    corpus = write_jsonl(tmp_path, [{"id": "a", "text": ""}, {"id": "a", "text": "ok"}])
    scan = scan_corpus(corpus, FieldSpec())
    assert scan.invalid_count == 1
    built = list(valid_records(corpus, FieldSpec(), scan))
    assert isinstance(built[0], Invalid) and built[0].reason.startswith("empty text")
    assert isinstance(built[1], Record) and built[1].text == "ok"


def test_valid_records_positions_count_every_record_read(tmp_path):
    """A record's position is its index among all records read, invalid ones included."""
    rows = [{"id": "a", "text": "x"}, "[]", {"id": "b", "text": "y"}]
    corpus = write_jsonl(tmp_path, rows)
    built = list(valid_records(corpus, FieldSpec(), scan_corpus(corpus, FieldSpec())))
    assert [b.position for b in built if isinstance(b, Record)] == [0, 2]


def test_valid_records_without_scan_does_not_flag_duplicates(tmp_path):
    """Without a scan there is no duplicate knowledge, so repeated ids pass through (the scan's first pass)."""
    corpus = write_jsonl(tmp_path, [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    assert all(isinstance(b, Record) for b in valid_records(corpus, FieldSpec()))


def test_csv_corpus_scan_reports_csv_lines(tmp_path):
    """Scanning a CSV corpus reports bad rows by their file line, a multi-line record by its first line."""
    path = tmp_path / "c.csv"
    path.write_bytes(b'id,text\na,"multi\nline"\nb,\nc,caf\xe9\nd,x,extra\na,again\n')
    scan = scan_corpus(Corpus(str(path)), FieldSpec())
    assert scan.records_read == 5
    assert [(i.line, i.reason) for i in scan.invalid_shown] == [
        (4, "empty text (fields 'text')"),
        (5, "invalid UTF-8 in the text"),
        (6, "malformed CSV: expected 2 fields, found 3"),
        (7, "duplicate id (first at line 2)"),
    ]


def test_invalid_input_message_names_counts_and_lines(tmp_path):
    """InvalidInput says how many records are invalid out of how many, and lists each bad line."""
    rows = [{"id": "a", "text": "ok"}, {"id": "b", "text": 5}, "oops", {"id": "a", "text": "dup"}]
    scan = scan_corpus(write_jsonl(tmp_path, rows), FieldSpec())
    with pytest.raises(InvalidInput) as info:
        raise InvalidInput(scan)
    message = str(info.value)
    assert info.value.scan is scan
    assert message.startswith("3 of 4 records are invalid; nothing was sent")
    assert "--skip-invalid" in message
    assert "line 2 (id 'b'): field 'text' is int, not a string" in message
    assert "line 3: malformed JSON" in message
    assert "line 4 (id 'a'): duplicate id (first at line 1)" in message


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


# --- field names checked before the job starts --------------------------------------------

def _jsonl(tmp_path, rows: list[dict], name: str = "c.jsonl") -> Corpus:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Corpus(str(path))


def test_a_misspelt_field_is_refused_with_the_fields_the_records_have(tmp_path):
    """A text, id or metadata field no record has is named, with the fields there are and the nearest one."""
    corpus = _jsonl(tmp_path, [{"id": "a", "title": "t", "description": "d"}] * 3)
    check_fields(corpus, FieldSpec("id", ("title", "description")))  # all there: nothing raised
    with pytest.raises(UnknownField) as caught:
        check_fields(corpus, FieldSpec("id", ("title", "descripton")))
    assert str(caught.value) == ("the text field 'descripton' (did you mean 'description'?) is in none of the "
                                 f"records of {corpus.name}; their fields: id, title, description. Nothing was sent.")
    with pytest.raises(UnknownField, match=r"the id field 'key' and the metadata field 'nope' are in none"):
        check_fields(corpus, FieldSpec("key", ("title",), ("nope",)))


def test_a_field_only_some_records_have_passes_and_the_sample_is_bounded(tmp_path):
    """Sparse JSON: a field in one record of the sample is fine; one that first appears past the
    sample is refused, and the message says how many records were looked at."""
    rows = [{"id": str(i), "text": "t"} for i in range(FIELD_SAMPLE + 5)]
    rows[FIELD_SAMPLE - 1]["tags"] = "x"
    rows[FIELD_SAMPLE + 2]["late"] = "y"
    corpus = _jsonl(tmp_path, rows)
    check_fields(corpus, FieldSpec(metadata_fields=("tags",)))
    with pytest.raises(UnknownField, match=rf"in none of the first {FIELD_SAMPLE} records"):
        check_fields(corpus, FieldSpec(metadata_fields=("late",)))


def test_unreadable_records_are_left_to_validation(tmp_path):
    """A corpus whose sample has no readable record raises nothing here: validation names each line."""
    path = tmp_path / "bad.jsonl"
    path.write_text("not json\n{broken\n")
    check_fields(Corpus(str(path)), FieldSpec("id", ("nope",)))


def test_csv_python_records_and_sql_sources_are_checked(tmp_path):
    """The same refusal for a CSV header, records from the Python API and a SQL table."""
    import sqlite3

    from embedfleet.corpus.readers import Records, SqlSource

    csv = tmp_path / "c.csv"
    csv.write_text("id,body\n1,hello\n")
    with pytest.raises(UnknownField, match="'text' is in none of the records"):
        check_fields(Corpus(str(csv)), FieldSpec())
    with pytest.raises(UnknownField, match=r"'bdy' \(did you mean 'body'\?\)"):
        check_fields(Records([{"id": "1", "body": "hello"}]), FieldSpec(text_fields=("bdy",)))
    db = tmp_path / "s.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table docs (id text primary key, body text)")
        conn.execute("insert into docs values ('1', 'hello')")
    with pytest.raises(UnknownField, match="their fields: id, body"):
        check_fields(SqlSource(f"sqlite:///{db}", table="docs"), FieldSpec(text_fields=("text",)))


def test_parquet_refuses_a_column_its_schema_lacks(tmp_path):
    """A Parquet file knows its columns: the missing one is refused as the file opens."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from embedfleet.corpus.readers import CorpusError

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["1"], "body": ["hello"]}), path)
    with pytest.raises(CorpusError, match="text"):
        check_fields(Corpus(str(path)), FieldSpec())
