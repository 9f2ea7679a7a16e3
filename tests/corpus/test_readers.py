"""Streaming corpus readers: JSONL and CSV records with their source lines, and Corpus."""

from __future__ import annotations

import io
import json

import pytest

from embedfleet.corpus.readers import Corpus, CorpusError, RawRecord, read_csv, read_jsonl


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
    from embedfleet.corpus.readers import Corpus

    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b'\xef\xbb\xbf{"id": "a", "text": "x"}\n')
    csv_path = tmp_path / "bom.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfid,text\nb,y\n")
    assert [r.data for r in Corpus(str(jsonl)).records()] == [{"id": "a", "text": "x"}]
    assert [r.data for r in Corpus(str(csv_path)).records()] == [{"id": "b", "text": "y"}]


# Parquet: real files written with pyarrow, read back through Corpus as the job reads them.


def write_parquet(path, table, row_group_size: int | None = None):
    import pyarrow.parquet as pq

    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_parquet_reads_every_row_group_in_order_with_row_numbers(tmp_path):
    """A Parquet file of 4 row groups is read record by record across them: dicts of its columns,
    rows numbered from 1 whatever the group, lists and structs as in JSONL; the unit is "row"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 23
    table = pa.table({
        "id": [f"r{i}" for i in range(n)],
        "text": [f"text {i}" for i in range(n)],
        "tags": [["a", f"t{i}"] if i % 2 else [] for i in range(n)],
        "meta": [{"n": i, "who": "x"} for i in range(n)],
        "score": [i / 2 for i in range(n)],
    })
    path = write_parquet(tmp_path / "c.parquet", table, row_group_size=6)
    assert pq.ParquetFile(path).num_row_groups == 4
    corpus = Corpus(str(path))
    assert (corpus.format, corpus.unit) == ("parquet", "row")
    records = list(corpus.records())
    assert [r.line for r in records] == list(range(1, n + 1))
    assert records[7] == RawRecord(8, {"id": "r7", "text": "text 7", "tags": ["a", "t7"], "meta": {"n": 7, "who": "x"},
                                       "score": 3.5})
    assert records[0].data["tags"] == []
    assert records == list(corpus.records())  # read twice (validation, then submission), the same


def test_parquet_batches_smaller_than_a_row_group_keep_row_numbers(tmp_path):
    """Rows are converted a batch at a time (a row group can be far larger than a batch): numbering and
    content are the same whatever the batch size."""
    import pyarrow as pa

    from embedfleet.corpus.readers import read_parquet

    table = pa.table({"id": [str(i) for i in range(50)], "text": ["x"] * 50})
    path = write_parquet(tmp_path / "c.parquet", table, row_group_size=50)
    small = list(read_parquet(path, batch_rows=7))
    assert [r.line for r in small] == list(range(1, 51))
    assert small == list(read_parquet(path))


def test_parquet_reads_only_the_columns_the_job_names(tmp_path):
    """Given the job's fields, only those columns are read (a wide file's other columns stay on disk)."""
    import pyarrow as pa

    table = pa.table({"id": ["a"], "title": ["T"], "body": ["B"], "blob": [b"\x00" * 1000]})
    corpus = Corpus(str(write_parquet(tmp_path / "c.parquet", table)))
    assert [r.data for r in corpus.records(["id", "title", "body", "id"])] == [{"id": "a", "title": "T", "body": "B"}]


def test_parquet_report_names_rows(tmp_path):
    """Validation of a Parquet corpus names each bad record by its row: row 17's empty text, row 20's
    duplicate of row 3, a numeric text, and an integer id that is fine (as in JSONL)."""
    import pyarrow as pa

    from embedfleet.corpus.records import FieldSpec
    from embedfleet.corpus.validation import InvalidInput, scan_corpus

    n = 20
    ids = [f"r{i}" for i in range(1, n + 1)]
    ids[19] = "r3"
    texts = [f"text {i}" for i in range(1, n + 1)]
    texts[16] = "   "
    table = pa.table({"id": ids, "text": texts, "n": list(range(1, n + 1))})
    corpus = Corpus(str(write_parquet(tmp_path / "c.parquet", table, row_group_size=8)))
    scan = scan_corpus(corpus, FieldSpec())
    assert (scan.records_read, scan.invalid_count) == (20, 2)
    report = str(InvalidInput(scan))
    assert "row 17 (id 'r17'): empty text (fields 'text')" in report
    assert "row 20 (id 'r3'): duplicate id (first at row 3)" in report
    assert "line" not in report and "--skip-invalid" in report
    numbers = scan_corpus(corpus, FieldSpec(id_field="n", text_fields=("id",)))
    assert numbers.invalid_count == 0  # an integer id is read as in JSONL
    as_text = scan_corpus(corpus, FieldSpec(text_fields=("n",)))
    assert as_text.invalid_shown[0].describe(corpus.unit) == "row 1 (id 'r1'): field 'n' is int, not a string"


def test_parquet_values_json_has_no_type_for_are_read_as_text_or_refused_by_field(tmp_path):
    """Timestamps (nanoseconds too), dates, times and decimals become text, at any depth; binary is UTF-8
    decoded (bad bytes reported by validation as invalid UTF-8); maps become dicts; a nanosecond duration
    with no Python form refuses only its own row, naming the field. Nothing crashes."""
    import datetime
    import decimal

    import pyarrow as pa

    from embedfleet.corpus.records import FieldSpec, Invalid, Record, build_record

    table = pa.table({
        "id": ["a", "b", "c"],
        "text": pa.array([b"caf\xc3\xa9", b"bad \xff", b"ok"], pa.binary()),
        "when": pa.array([1_700_000_000_000_000_001, None, 0], pa.timestamp("ns")),
        "day": [datetime.date(2024, 5, 1)] * 3,
        "price": pa.array([decimal.Decimal("12.50")] * 3, pa.decimal128(10, 2)),
        "at": pa.array([[1], [], None], pa.list_(pa.timestamp("us", tz="UTC"))),
        "attrs": pa.array([[("k", "v")], None, []], pa.map_(pa.string(), pa.string())),
        "wait": pa.array([1000, 1, None], pa.duration("ns")),
    })
    corpus = Corpus(str(write_parquet(tmp_path / "odd.parquet", table)))
    first, second, third = corpus.records()
    assert first.data == {"id": "a", "text": "café", "when": "2023-11-14 22:13:20.000000001", "day": "2024-05-01",
                          "price": "12.50", "at": ["1970-01-01 00:00:00.000001Z"], "attrs": {"k": "v"},
                          "wait": datetime.timedelta(microseconds=1)}
    assert second.data is None and second.line == 2
    assert second.error.startswith("field 'wait' (duration[ns]) cannot be read: Nanosecond duration 1 is not")
    assert third.data["text"] == "ok" and third.data["attrs"] == {} and third.data["at"] is None

    spec = FieldSpec(text_fields=("text",), metadata_fields=("when", "price", "wait", "attrs"))
    built = build_record(first, 0, spec)
    assert isinstance(built, Record) and built.text == "café"
    assert built.metadata == {"when": "2023-11-14 22:13:20.000000001", "price": "12.50", "wait": "0:00:00.000001",
                              "attrs": {"k": "v"}}
    assert build_record(second, 1, spec) == Invalid(2, None, second.error)
    bad_utf8 = next(read_rows(table.slice(1, 1).drop_columns(["wait"]), tmp_path))
    assert build_record(bad_utf8, 0, FieldSpec()) == Invalid(1, "b", "invalid UTF-8 in the text")
    assert build_record(first, 0, FieldSpec(text_fields=("wait",))) == Invalid(
        1, "a", "field 'wait' is timedelta, not a string")


def read_rows(table, tmp_path):
    return Corpus(str(write_parquet(tmp_path / "part.parquet", table))).records()


def test_parquet_missing_columns_are_a_corpus_error_naming_file_and_columns(tmp_path):
    """A job naming a column the file lacks (the id, a text field) is refused before any record, naming
    the file, the missing columns and the ones it has."""
    import pyarrow as pa

    path = write_parquet(tmp_path / "noid.parquet", pa.table({"key": ["a"], "text": ["x"]}))
    corpus = Corpus(str(path))
    with pytest.raises(CorpusError) as err:
        list(corpus.records(["id", "text", "body"]))
    assert str(err.value) == (f"Parquet file {str(path)!r} has no column 'id', 'body' (its columns: key, text)")


def test_parquet_with_a_schema_and_no_rows_yields_nothing(tmp_path):
    """An empty table (schema, 0 rows) is a corpus of no records, not an error."""
    import pyarrow as pa

    from embedfleet.corpus.records import FieldSpec
    from embedfleet.corpus.validation import scan_corpus

    table = pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())})
    corpus = Corpus(str(write_parquet(tmp_path / "empty.parquet", table)))
    assert list(corpus.records(["id", "text"])) == []
    assert scan_corpus(corpus, FieldSpec()).records_read == 0


def test_a_file_named_parquet_that_is_not_parquet_is_a_corpus_error(tmp_path):
    """JSON Lines named .parquet, an empty file and a Parquet file cut short are each refused with a
    CorpusError naming the file and pyarrow's reason, not a traceback."""
    import pyarrow as pa

    fake = tmp_path / "fake.parquet"
    fake.write_text('{"id": "a", "text": "x"}\n')
    with pytest.raises(CorpusError, match=r"cannot read '.*fake\.parquet' as Parquet: .*magic bytes"):
        list(Corpus(str(fake)).records())
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(CorpusError, match=r"cannot read '.*empty\.parquet' as Parquet"):
        list(Corpus(str(empty)).records())
    whole = write_parquet(tmp_path / "whole.parquet", pa.table({"id": ["a"] * 100, "text": ["x"] * 100}))
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CorpusError, match=r"cut\.parquet"):
        list(Corpus(str(cut)).records())


def test_parquet_format_by_suffix_explicitly_and_its_spec_round_trips(tmp_path):
    """.parquet is detected; --format parquet reads a file named otherwise; the registered spec opens the
    same Parquet corpus again (what the nightly reindex does)."""
    import pyarrow as pa

    from embedfleet.corpus.readers import source_from_spec

    table = pa.table({"id": ["a", "b"], "text": ["x", "y"]})
    odd_name = write_parquet(tmp_path / "export.bin", table)
    with pytest.raises(CorpusError, match=r"pass --format jsonl\|csv\|parquet"):
        Corpus(str(odd_name))
    corpus = Corpus(str(odd_name), fmt="parquet")
    assert corpus.spec() == {"kind": "file", "path": str(odd_name.resolve()), "format": "parquet"}
    again = source_from_spec(corpus.spec())
    assert (again.format, again.unit) == ("parquet", "row")
    assert list(again.records()) == list(corpus.records()) == [RawRecord(1, {"id": "a", "text": "x"}),
                                                               RawRecord(2, {"id": "b", "text": "y"})]
