"""From RawRecord to Record or Invalid: ids, text fields, hashes and the reasons for rejection."""

from __future__ import annotations

import io

import pytest

from embedfleet.corpus.readers import RawRecord, read_csv
from embedfleet.corpus.records import MAX_ID_LENGTH, FieldSpec, Invalid, Record, build_record, content_hash
from embedfleet.store.schema import vectors

MULTI = FieldSpec(text_fields=("title", "description", "files_touched"))


DEFAULT = FieldSpec()


def build(data, spec=DEFAULT, line=7, position=3):
    return build_record(RawRecord(line, data), position, spec)


def test_default_spec_builds_record_from_id_and_text():
    """With the default FieldSpec a record takes 'id' and 'text', its position and its line."""
    record = build({"id": "r1", "text": "hello world", "other": "ignored"})
    assert record == Record("r1", 3, "hello world", content_hash("hello world"), 7)


def test_multiple_text_fields_are_joined_by_newlines_in_spec_order():
    """Several text fields are joined with newlines, in the order the spec names them."""
    record = build({"id": "c1", "files_touched": "a.py", "title": "Fix bug", "description": "Details here"}, MULTI)
    assert isinstance(record, Record)
    assert record.text == "Fix bug\nDetails here\na.py"


def test_list_value_in_multi_field_spec_is_joined_by_spaces():
    """A list of strings in one of several text fields becomes one space-separated line."""
    record = build({"id": "c1", "title": "T", "description": "D", "files_touched": ["a.py", "b/c.py"]}, MULTI)
    assert isinstance(record, Record)
    assert record.text == "T\nD\na.py b/c.py"


@pytest.mark.parametrize("missing", [{}, {"description": None}])
def test_missing_or_none_text_field_is_skipped(missing):
    """A text field that is absent or null contributes nothing (no blank line in the text)."""
    data = {"id": "c1", "title": "T", "files_touched": ["x.py"], **missing}
    record = build(data, MULTI)
    assert isinstance(record, Record)
    assert record.text == "T\nx.py"


def test_list_value_in_single_text_field_is_invalid():
    """With a single text field, a list is not accepted as text."""
    result = build({"id": "a", "text": ["x", "y"]})
    assert result == Invalid(7, "a", "field 'text' is list, not a string")


def test_list_with_non_strings_in_multi_field_spec_is_invalid():
    """A list holding a non-string is rejected, naming the field."""
    result = build({"id": "a", "title": "T", "files_touched": ["a.py", 3]}, MULTI)
    assert isinstance(result, Invalid)
    assert "'files_touched'" in result.reason


def test_int_id_becomes_string():
    """An integer id is accepted and stored as its decimal string."""
    record = build({"id": 12345, "text": "x"})
    assert isinstance(record, Record)
    assert record.record_id == "12345"


def test_custom_id_field_is_used():
    """FieldSpec.id_field picks which field is the id."""
    record = build({"sha": "abc", "id": "wrong", "text": "x"}, FieldSpec(id_field="sha"))
    assert isinstance(record, Record)
    assert record.record_id == "abc"


@pytest.mark.parametrize("data", [{"text": "x"}, {"id": None, "text": "x"}, {"id": "", "text": "x"}, {"id": "  ", "text": "x"}])
def test_missing_or_blank_id_is_invalid_naming_the_field(data):
    """No id, a null id or a blank id is Invalid with a reason naming the id field."""
    result = build(data)
    assert result == Invalid(7, None, "missing id field 'id'")


@pytest.mark.parametrize("value, type_name", [(True, "bool"), (False, "bool"), (1.5, "float"), ({"a": 1}, "dict"), (["a"], "list")])
def test_non_string_non_int_id_is_invalid(value, type_name):
    """A bool, float, dict or list id is Invalid, naming the field and the type (bool is not an int here)."""
    result = build({"id": value, "text": "x"})
    assert result == Invalid(7, None, f"id field 'id' is {type_name}, not a string")


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_or_whitespace_text_is_invalid(text):
    """Empty or whitespace-only text is Invalid with a reason naming the text fields."""
    result = build({"id": "a", "text": text})
    assert result == Invalid(7, "a", "empty text (fields 'text')")


def test_all_text_fields_missing_is_invalid_naming_every_field():
    """When no text field has content the reason lists all of the spec's text fields."""
    result = build({"id": "a", "title": None}, MULTI)
    assert result == Invalid(7, "a", "empty text (fields 'title', 'description', 'files_touched')")


@pytest.mark.parametrize("value, type_name", [(42, "int"), (3.5, "float"), ({"k": "v"}, "dict"), (True, "bool")])
def test_non_string_text_is_invalid_naming_the_field(value, type_name):
    """A number, dict or bool as text is Invalid with a reason naming the field and its type."""
    result = build({"id": "a", "text": value})
    assert result == Invalid(7, "a", f"field 'text' is {type_name}, not a string")


def test_unreadable_raw_record_becomes_invalid_with_its_error():
    """A RawRecord that carries a read error becomes Invalid with that error and its line."""
    result = build_record(RawRecord(4, None, "malformed JSON: oops"), 0, FieldSpec())
    assert result == Invalid(4, None, "malformed JSON: oops")


def test_invalid_str_names_line_and_id():
    """Invalid's text form says the line, the id when known, and the reason."""
    assert str(Invalid(9, "abc", "empty text")) == "line 9 (id 'abc'): empty text"
    assert str(Invalid(9, None, "missing id")) == "line 9: missing id"


def test_content_hash_is_stable_and_tracks_the_text():
    """The same text always hashes the same; any change to the text changes the hash."""
    first = build({"id": "a", "text": "hello"})
    again = build({"id": "other", "text": "hello"}, position=99, line=1)
    changed = build({"id": "a", "text": "hello!"})
    assert first.content_hash == again.content_hash == content_hash("hello")
    assert changed.content_hash != first.content_hash
    assert content_hash("hello") != content_hash("Hello")


def test_content_hash_covers_the_joined_text():
    """With several text fields the hash is of the joined text, so a change in any field changes it."""
    base = build({"id": "a", "title": "T", "description": "D"}, MULTI)
    other = build({"id": "a", "title": "T", "description": "D2"}, MULTI)
    assert base.content_hash == content_hash("T\nD")
    assert other.content_hash != base.content_hash


def test_invalid_utf8_in_csv_text_is_invalid():
    """Non-UTF-8 bytes in a CSV text field (kept as surrogate escapes) make the record Invalid."""
    [raw] = list(read_csv(io.BytesIO(b"id,text\na,caf\xe9 au lait\n")))
    result = build_record(raw, 0, FieldSpec())
    assert result == Invalid(2, "a", "invalid UTF-8 in the text")


def test_invalid_utf8_in_csv_id_is_invalid():
    """Non-UTF-8 bytes in a CSV id make the record Invalid without echoing the bad id."""
    [raw] = list(read_csv(io.BytesIO(b"id,text\n\xff\xfe,hello\n")))
    result = build_record(raw, 0, FieldSpec())
    assert result == Invalid(2, None, "invalid UTF-8 in the id")


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


def test_metadata_fields_become_a_json_object_and_enter_the_hash():
    """Metadata fields are kept as JSON (a missing one is null, dates as strings, NUL removed), are not
    embedded, and change the content hash, so a record whose metadata changed is stored again."""
    import datetime as dt

    spec = FieldSpec(metadata_fields=("title", "when", "tags", "absent"))
    data = {"id": "a", "text": "hello", "title": "T\x00itle", "when": dt.date(2026, 1, 2), "tags": ["x", 1]}
    record = build_record(RawRecord(1, data), 0, spec)
    assert isinstance(record, Record)
    assert record.text == "hello"
    assert record.metadata == {"title": "Title", "when": "2026-01-02", "tags": ["x", 1], "absent": None}
    assert record.content_hash != content_hash("hello")
    changed = build_record(RawRecord(1, {**data, "title": "Other"}), 0, spec)
    assert isinstance(changed, Record) and changed.content_hash != record.content_hash
    plain = build_record(RawRecord(1, data), 0, FieldSpec())
    assert isinstance(plain, Record) and plain.metadata is None and plain.content_hash == content_hash("hello")


def test_metadata_that_json_cannot_hold_is_invalid_naming_the_reason():
    """A NaN or infinite number in a metadata field is refused with the record, not stored as bad JSON."""
    result = build_record(RawRecord(4, {"id": "a", "text": "t", "score": float("nan")}), 0,
                          FieldSpec(metadata_fields=("score",)))
    assert isinstance(result, Invalid) and result.line == 4 and "metadata not JSON" in result.reason
