"""Streaming corpus readers: JSONL and CSV records with their source lines, and Corpus."""

from __future__ import annotations

import io
import json

import pytest

from embedfleet.producers.readers import (
    Corpus,
    CorpusError,
    RawRecord,
    read_csv,
    read_jsonl,
)


def jsonl_bytes(*lines: str) -> io.BytesIO:
    return io.BytesIO("".join(line + "\n" for line in lines).encode("utf-8"))


def test_jsonl_yields_records_with_one_based_line_numbers():
    """Each JSONL object becomes a RawRecord carrying its 1-based line number and its fields."""
    stream = jsonl_bytes('{"id": "a", "text": "x"}', '{"id": "b", "text": "y"}')
    assert list(read_jsonl(stream)) == [
        RawRecord(1, {"id": "a", "text": "x"}),
        RawRecord(2, {"id": "b", "text": "y"}),
    ]


def test_jsonl_skips_blank_lines_but_keeps_counting_them():
    """Blank and whitespace-only lines yield nothing, yet later records keep their true line numbers."""
    stream = jsonl_bytes("", '{"id": "a"}', "   ", "\t", '{"id": "b"}')
    records = list(read_jsonl(stream))
    assert [(r.line, r.data) for r in records] == [(2, {"id": "a"}), (5, {"id": "b"})]
    assert all(r.error is None for r in records)


def test_jsonl_malformed_line_is_an_error_record_and_reading_continues():
    """A line that is not JSON yields an error record naming the problem; the next line still reads."""
    stream = jsonl_bytes('{"id": "a"}', '{"id": "b", ', '{"id": "c"}')
    records = list(read_jsonl(stream))
    assert [r.line for r in records] == [1, 2, 3]
    bad = records[1]
    assert bad.data is None
    assert bad.error is not None and bad.error.startswith("malformed JSON")
    assert "column" in bad.error
    assert records[2].data == {"id": "c"}


@pytest.mark.parametrize(
    "line, type_name",
    [("[1, 2]", "list"), ('"just a string"', "str"), ("42", "int"), ("null", "NoneType")],
)
def test_jsonl_non_object_line_is_an_error(line, type_name):
    """A JSON value that is not an object is an error record naming the type found."""
    [record] = list(read_jsonl(jsonl_bytes(line)))
    assert record.data is None
    assert record.error == f"expected a JSON object, found {type_name}"


def test_jsonl_invalid_utf8_is_an_error_with_its_line():
    """Bytes that are not UTF-8 yield an 'invalid UTF-8' error on that line, not a crash."""
    stream = io.BytesIO(b'{"id": "a"}\n{"id": "b", "text": "caf\xe9"}\n{"id": "c"}\n')
    records = list(read_jsonl(stream))
    assert [r.line for r in records] == [1, 2, 3]
    assert records[1].data is None
    assert records[1].error is not None and records[1].error.startswith("invalid UTF-8")
    assert records[2].data == {"id": "c"}


def test_jsonl_reads_non_ascii_utf8_text():
    """Valid multi-byte UTF-8 is decoded to the right characters."""
    stream = io.BytesIO(json.dumps({"id": "a", "text": "café ☕"}, ensure_ascii=False).encode() + b"\n")
    [record] = list(read_jsonl(stream))
    assert record.data == {"id": "a", "text": "café ☕"}


def test_jsonl_last_line_without_newline_is_read():
    """A final record with no trailing newline is still yielded."""
    [record] = list(read_jsonl(io.BytesIO(b'{"id": "a"}')))
    assert record == RawRecord(1, {"id": "a"})


def test_csv_uses_header_for_field_names_and_counts_lines_from_header():
    """CSV rows become dicts keyed by the header; the first data row is line 2."""
    stream = io.BytesIO(b"id,text\na,hello\nb,world\n")
    assert list(read_csv(stream)) == [
        RawRecord(2, {"id": "a", "text": "hello"}),
        RawRecord(3, {"id": "b", "text": "world"}),
    ]


def test_csv_quoted_multiline_field_record_line_is_its_first_line():
    """A quoted field spanning lines is one value, the record's line is where it starts, later lines stay right."""
    stream = io.BytesIO(b'id,text\na,"first\nsecond\nthird"\nb,after\n')
    records = list(read_csv(stream))
    assert records == [
        RawRecord(2, {"id": "a", "text": "first\nsecond\nthird"}),
        RawRecord(5, {"id": "b", "text": "after"}),
    ]


def test_csv_wrong_field_count_is_an_error_and_reading_continues():
    """A row with too many or too few fields is an error record giving both counts."""
    stream = io.BytesIO(b"id,text\na,ok\nb,too,many\nc\nd,fine\n")
    records = list(read_csv(stream))
    assert [r.line for r in records] == [2, 3, 4, 5]
    assert records[1].data is None
    assert records[1].error == "malformed CSV: expected 2 fields, found 3"
    assert records[2].data is None
    assert records[2].error == "malformed CSV: expected 2 fields, found 1"
    assert records[3] == RawRecord(5, {"id": "d", "text": "fine"})


def test_csv_blank_lines_are_skipped_and_line_numbers_stay_true():
    """An empty line between CSV rows yields nothing and does not shift later line numbers."""
    stream = io.BytesIO(b"id,text\na,x\n\nb,y\n")
    assert [(r.line, r.data["id"]) for r in read_csv(stream)] == [(2, "a"), (4, "b")]


def test_csv_header_only_and_empty_file_yield_nothing():
    """A CSV with only a header, or no bytes at all, has no records."""
    assert list(read_csv(io.BytesIO(b"id,text\n"))) == []
    assert list(read_csv(io.BytesIO(b""))) == []


def test_csv_invalid_utf8_is_kept_as_surrogate_escapes():
    """Non-UTF-8 bytes in CSV are kept (as surrogate escapes) for validation to report, not raised."""
    [record] = list(read_csv(io.BytesIO(b"id,text\na,caf\xe9\n")))
    assert record.line == 2
    assert record.data == {"id": "a", "text": "caf\udce9"}


@pytest.mark.parametrize("suffix, fmt", [(".jsonl", "jsonl"), (".ndjson", "jsonl"), (".JSONL", "jsonl"), (".csv", "csv")])
def test_corpus_picks_format_from_suffix(tmp_path, suffix, fmt):
    """Corpus chooses the reader from the file suffix, case-insensitively."""
    path = tmp_path / f"corpus{suffix}"
    path.write_text('{"id": "a"}\n' if fmt == "jsonl" else "id\na\n")
    corpus = Corpus(str(path))
    assert corpus.format == fmt
    assert [r.data for r in corpus.records()] == [{"id": "a"}]


def test_corpus_explicit_format_overrides_suffix(tmp_path):
    """An explicit format reads a file whose suffix says nothing."""
    path = tmp_path / "corpus.txt"
    path.write_text("id,text\na,x\n")
    corpus = Corpus(str(path), fmt="csv")
    assert [r.data for r in corpus.records()] == [{"id": "a", "text": "x"}]


def test_corpus_records_can_be_read_twice(tmp_path):
    """records() re-reads the file from the start each time (validation then submission)."""
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n')
    corpus = Corpus(str(path))
    first = list(corpus.records())
    assert first == list(corpus.records())
    assert len(first) == 2


def test_corpus_unknown_suffix_raises_corpus_error(tmp_path):
    """A file whose suffix names no known format is refused with CorpusError."""
    path = tmp_path / "corpus.txt"
    path.write_text("id,text\na,x\n")
    with pytest.raises(CorpusError, match="format"):
        Corpus(str(path))


def test_corpus_missing_file_raises_corpus_error(tmp_path):
    """A path that does not exist is refused with CorpusError naming it."""
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(CorpusError, match=r"nope\.jsonl"):
        Corpus(str(missing))


def test_corpus_directory_raises_corpus_error(tmp_path):
    """A directory is not a readable corpus file."""
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    with pytest.raises(CorpusError):
        Corpus(str(folder))


def test_byte_order_mark_is_ignored(tmp_path) -> None:
    """A UTF-8 BOM before the first JSONL line or the CSV header does not break the first record."""
    from embedfleet.producers.readers import Corpus

    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b'\xef\xbb\xbf{"id": "a", "text": "x"}\n')
    csv_path = tmp_path / "bom.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfid,text\nb,y\n")
    assert [r.data for r in Corpus(str(jsonl)).records()] == [{"id": "a", "text": "x"}]
    assert [r.data for r in Corpus(str(csv_path)).records()] == [{"id": "b", "text": "y"}]
