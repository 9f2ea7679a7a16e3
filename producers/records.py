"""From a raw record to a valid Record (id, text, position, hash), or the reason it is invalid."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from producers.readers import RawRecord


@dataclass(frozen=True)
class FieldSpec:
    """Which field is the id and which fields make the text (joined by newlines)."""

    id_field: str = "id"
    text_fields: tuple[str, ...] = ("text",)


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


@dataclass(frozen=True)
class Invalid:
    line: int
    record_id: str | None
    reason: str

    def __str__(self) -> str:
        who = f" (id {self.record_id!r})" if self.record_id is not None else ""
        return f"line {self.line}{who}: {self.reason}"


def content_hash(text: str) -> str:
    """The hash of exactly the text that is embedded: change detection keys on it."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


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
    if not text.strip():
        fields = ", ".join(repr(f) for f in spec.text_fields)
        return Invalid(raw.line, record_id, f"empty text (fields {fields})")
    if _has_bad_utf8(text):
        return Invalid(raw.line, record_id, "invalid UTF-8 in the text")
    return Record(record_id, position, text, content_hash(text), raw.line)
