"""From a raw record to a valid Record (id, text, position, hash), or the reason it is invalid."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String

from ..store.schema import vectors
from .readers import RawRecord

# The longest id storage holds: the vectors.record_id column's length (PostgreSQL enforces
# it, in characters; dead_letters.record_id has the same length).
_ID_TYPE = vectors.c.record_id.type
assert isinstance(_ID_TYPE, String) and _ID_TYPE.length is not None, "vectors.record_id has a length"
MAX_ID_LENGTH: int = _ID_TYPE.length
# Characters an id may not hold: the C0 controls U+0000-U+001F (NUL, tab, newline, carriage
# return among them), DEL U+007F, the C1 controls U+0080-U+009F (NEL U+0085 among them), and
# the line and paragraph separators U+2028 and U+2029. PostgreSQL cannot store NUL, and the
# others break lines in logs, in `dlq list` and in anything that reads ids line by line.
FORBIDDEN_ID_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class FieldSpec:
    """Which field is the id and which fields make the text (joined by newlines)."""

    id_field: str = "id"
    text_fields: tuple[str, ...] = ("text",)
    # Fields kept beside the vector as a JSON object (--metadata-fields), not embedded.
    metadata_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class Record:
    record_id: str
    position: int
    text: str
    content_hash: str
    line: int
    # Its text repeats an earlier record's in the job: stored with that record's vector,
    # not encoded again.
    alias: bool = False
    # NUL characters were removed from its text (see build_record).
    nul_removed: bool = False
    # Its metadata fields as a JSON object, when the job keeps metadata.
    metadata: dict[str, Any] | None = None
    # New to the version it is sent to (change detection sets it; the rest replace a vector).
    new: bool = False


@dataclass(frozen=True)
class Invalid:
    line: int
    record_id: str | None
    reason: str

    def __str__(self) -> str:
        return self.describe()

    def describe(self, unit: str = "line") -> str:
        """As a report prints it; `unit` names the number ("line", or "record" for Records)."""
        who = f" (id {shown_id(self.record_id)})" if self.record_id is not None else ""
        return f"{unit} {self.line}{who}: {self.reason}"


def shown_id(record_id: str, limit: int = 60) -> str:
    """An id as reports print it: repr (control characters escaped), long ones shortened."""
    if len(record_id) <= limit:
        return repr(record_id)
    return f"{record_id[:limit]!r}... ({len(record_id)} characters)"


def _char_name(char: str) -> str:
    names = {"\x00": "NUL", "\t": "tab", "\n": "newline", "\r": "carriage return"}
    return names[char] if char in names else unicodedata.name(char, "control character")


def id_problem(record_id: str) -> str | None:
    """Why storage cannot hold this id, or None: too long for the column, or a control character."""
    if len(record_id) > MAX_ID_LENGTH:
        return f"id too long: {len(record_id)} characters, the most storage holds is {MAX_ID_LENGTH}"
    bad = FORBIDDEN_ID_CHARS.search(record_id)
    if bad:
        char = bad.group()
        return (f"id contains a control character: U+{ord(char):04X} ({_char_name(char)}) "
                f"at character {bad.start() + 1}")
    return None


def content_hash(text: str, metadata: dict[str, Any] | None = None) -> str:
    """The hash of exactly the text that is embedded: change detection keys on it. With
    metadata kept, of the metadata too, so a record whose metadata changed is stored again."""
    data = text.encode("utf-8")
    if metadata is not None:
        data += b"\x1e" + json.dumps(metadata, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _json_value(value: Any) -> Any:
    """A field's value as JSON can hold it: dates and decimals (from SQL sources) as strings,
    NUL removed from strings (PostgreSQL's jsonb cannot hold it)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k).replace("\x00", ""): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return str(value)


def record_metadata(data: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The record's metadata fields (a missing field is null)."""
    return {name: _json_value(data.get(name)) for name in fields}


def _has_bad_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _field_text(name: str, value: Any, single: bool) -> str | None:
    """The text one field contributes; raises ValueError with the reason when it can't."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if not single and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)  # e.g. files touched: one line of paths
    raise ValueError(f"field {name!r} is {type(value).__name__}, not a string")


def build_record(raw: RawRecord, position: int, spec: FieldSpec) -> Record | Invalid:
    if raw.data is None:
        return Invalid(raw.line, None, raw.error or "unreadable record")
    data = raw.data
    raw_id = data.get(spec.id_field)
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        return Invalid(raw.line, None, f"missing id field {spec.id_field!r}")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        return Invalid(raw.line, None, f"id field {spec.id_field!r} is {type(raw_id).__name__}, not a string")
    record_id = str(raw_id)
    if _has_bad_utf8(record_id):
        return Invalid(raw.line, None, "invalid UTF-8 in the id")
    problem = id_problem(record_id)
    if problem:
        return Invalid(raw.line, record_id, problem)
    single = len(spec.text_fields) == 1
    parts: list[str] = []
    try:
        for name in spec.text_fields:
            part = _field_text(name, data.get(name), single)
            if part:
                parts.append(part)
    except ValueError as exc:
        return Invalid(raw.line, record_id, str(exc))
    text = "\n".join(parts)
    # NUL is removed from texts, not refused: PostgreSQL cannot store it (in a dead letter's
    # text, say), and the tokenizers drop it anyway, so the vector is the same. The content
    # hash is of the text without it, which is what is embedded.
    nul_removed = "\x00" in text
    if nul_removed:
        text = text.replace("\x00", "")
    if not text.strip():
        fields = ", ".join(repr(f) for f in spec.text_fields)
        return Invalid(raw.line, record_id, f"empty text (fields {fields})")
    if _has_bad_utf8(text):
        return Invalid(raw.line, record_id, "invalid UTF-8 in the text")
    if not spec.metadata_fields:
        return Record(record_id, position, text, content_hash(text), raw.line, nul_removed=nul_removed)
    metadata = record_metadata(data, spec.metadata_fields)
    try:
        encoded = json.dumps(metadata, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:  # a float NaN or infinity: JSON has no such number
        return Invalid(raw.line, record_id, f"metadata not JSON: {exc}")
    if _has_bad_utf8(encoded):
        return Invalid(raw.line, record_id, "invalid UTF-8 in the metadata")
    return Record(record_id, position, text, content_hash(text, metadata), raw.line, nul_removed=nul_removed,
                  metadata=metadata)
