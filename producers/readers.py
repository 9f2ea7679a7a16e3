"""Streaming corpus readers: one record at a time, so memory stays flat however large the corpus.

Bytes that are not UTF-8 are kept as surrogate escapes and reported by validation with the
record's line, instead of killing the whole read.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import pickle
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

Format = Literal["jsonl", "csv"]
FORMATS_BY_SUFFIX: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}


@dataclass(frozen=True)
class RawRecord:
    """One record as read: its first line in the source, and its fields or why they are unreadable."""

    line: int
    data: dict[str, Any] | None
    error: str | None = None


class CorpusError(Exception):
    """The corpus cannot be read at all (missing file, unknown format)."""


class Source(Protocol):
    """Anything records are read from, twice (validation, then submission), in the same order.
    `unit` is what a report calls a record's number: "line" for files, "record" for Records."""

    name: str

    # Read-only, so a source may narrow them (Corpus.format is "jsonl" or "csv").
    @property
    def format(self) -> str: ...

    @property
    def unit(self) -> str: ...

    def records(self) -> Iterator[RawRecord]: ...

    def spec(self) -> dict[str, Any]:
        """How to read it again (what `reindex` re-runs); {} when it cannot be re-read."""
        ...


class Corpus:
    """A re-readable source of records: a file, or stdin spooled to a temporary file."""

    unit = "line"

    def __init__(self, path: str, fmt: Format | Literal["auto"] = "auto") -> None:
        self.name = path
        self.format: Format = self._format(path, fmt)
        if path == "-":
            # Validation reads the corpus before anything is sent, then submission reads it
            # again; stdin can be read once, so keep a copy on disk (not in memory).
            # Kept open for the source's life (read twice), deleted when it is closed.
            self._spool = tempfile.NamedTemporaryFile(prefix="embedfleet-stdin-", suffix=".spool")  # noqa: SIM115
            shutil.copyfileobj(sys.stdin.buffer, self._spool)
            self._spool.flush()
            self.path = Path(self._spool.name)
        else:
            self.path = Path(path)
            if not self.path.is_file():
                raise CorpusError(f"corpus {path!r} is not a readable file")

    @staticmethod
    def _format(path: str, fmt: str) -> Format:
        if fmt in ("jsonl", "csv"):
            return fmt  # type: ignore[return-value]
        if path == "-":
            return "jsonl"
        suffix = Path(path).suffix.lower()
        if suffix not in FORMATS_BY_SUFFIX:
            raise CorpusError(f"cannot tell the format of {path!r} from its suffix: pass --format jsonl|csv")
        return FORMATS_BY_SUFFIX[suffix]

    def records(self) -> Iterator[RawRecord]:
        with self.path.open("rb") as stream:
            reader = read_jsonl if self.format == "jsonl" else read_csv
            yield from reader(stream)

    def spec(self) -> dict[str, Any]:
        if self.name == "-":
            return {}
        return {"kind": "file", "path": str(self.path.resolve()), "format": self.format}


class SqlSource:
    """Rows of a table or query, read in streamed pages (a server-side cursor on PostgreSQL).

    Positions are row numbers of the result, so give a query an ORDER BY; a table is read
    in primary-key order."""

    format = "sql"
    unit = "line"
    PAGE = 1000

    def __init__(self, url: str, table: str | None = None, query: str | None = None) -> None:
        if bool(table) == bool(query):
            raise CorpusError("give exactly one of --table and --query with --source-url")
        self.url, self.table, self.query = url, table, query
        from ..storage.engine import redact

        self.name = f"{redact(url)} {'table ' + table if table else 'query'}"

    def _statement(self, engine: Any) -> Any:
        from sqlalchemy import MetaData, Table, text

        if self.query:
            return text(self.query)
        try:
            assert self.table is not None  # exactly one of table and query, checked in __init__
            table = Table(self.table, MetaData(), autoload_with=engine)
        except Exception as exc:
            raise CorpusError(f"cannot read table {self.table!r}: {exc}") from exc
        return table.select().order_by(*(table.primary_key.columns or table.columns))

    def records(self) -> Iterator[RawRecord]:
        from sqlalchemy import create_engine
        from sqlalchemy.exc import SQLAlchemyError

        from ..storage.engine import normalise_url

        engine = create_engine(normalise_url(self.url))
        try:
            with engine.connect() as conn:
                streamed = conn.execution_options(stream_results=True, yield_per=self.PAGE)
                result = streamed.execute(self._statement(engine))
                for row_number, row in enumerate(result, start=1):
                    yield RawRecord(row_number, dict(row._mapping))
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            raise CorpusError(f"cannot read {self.name}: {exc.__class__.__name__}: {cause}") from exc
        finally:
            engine.dispose()

    def spec(self) -> dict[str, Any]:
        return {"kind": "sql", "url": self.url, "table": self.table, "query": self.query}


class Records:
    """Records given as Python dicts (the Python API). A list or tuple is read as it is; any
    other iterable (a generator, a database cursor) is spooled once to a temporary file, since
    records are read twice (validation, then submission) and memory must stay flat. Item N,
    counting from 1, is reported as "record N"; an item that is not a mapping is invalid.

    The spool is pickle, not JSON: it is this process's own temporary file, never the wire
    (invariant 6 holds), and it keeps every value's type, so a generator's records validate
    exactly as the same records given as a list would (a datetime id is refused either way,
    a lone surrogate is reported, not a crash)."""

    format = "records"
    unit = "record"

    def __init__(self, records: Iterable[Mapping[str, Any]], name: str = "<records>") -> None:
        if isinstance(records, (Mapping, str, bytes)):
            raise TypeError(f"records must be an iterable of dicts, not a {type(records).__name__}")
        self.name = name
        self._items: list[Any] | tuple[Any, ...] | None = None
        self._spool: Any = None
        if isinstance(records, (list, tuple)):
            self._items = records
            return
        # Read back until the job is submitted; closed by close() or when the source is dropped.
        self._spool = tempfile.TemporaryFile(prefix="embedfleet-records-", suffix=".pickle")  # noqa: SIM115 (kept open, read twice)
        for item in records:
            entry = dict(item) if isinstance(item, Mapping) else _NotARecord(type(item).__name__)
            try:
                pickle.dump(entry, self._spool, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                pickle.dump(_NotARecord(type(item).__name__, f"cannot be read: {type(exc).__name__}: {exc}"),
                            self._spool, protocol=pickle.HIGHEST_PROTOCOL)
        self._spool.flush()

    def records(self) -> Iterator[RawRecord]:
        if self._items is not None:
            for number, item in enumerate(self._items, start=1):
                yield _raw(number, dict(item) if isinstance(item, Mapping) else _NotARecord(type(item).__name__))
            return
        self._spool.seek(0)
        number = 0
        while True:
            try:
                entry = pickle.load(self._spool)
            except EOFError:
                return
            number += 1
            yield _raw(number, entry)

    def spec(self) -> dict[str, Any]:
        return {}  # records held by the caller cannot be read again by a reindex

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


@dataclass(frozen=True)
class _NotARecord:
    kind: str
    error: str | None = None


def _raw(number: int, entry: dict[str, Any] | _NotARecord) -> RawRecord:
    if isinstance(entry, _NotARecord):
        return RawRecord(number, None, entry.error or f"expected a dict, found {entry.kind}")
    return RawRecord(number, entry)


def source_from_spec(spec: dict[str, Any]) -> Corpus | SqlSource:
    """The source a collection registered, opened again (for `reindex`)."""
    if spec.get("kind") == "file":
        return Corpus(spec["path"], spec.get("format", "auto"))
    if spec.get("kind") == "sql":
        return SqlSource(spec["url"], spec.get("table"), spec.get("query"))
    raise CorpusError("this collection was made from stdin or from records in memory (the Python API): "
                      "there is no source to read again; submit the records again instead")


def read_jsonl(stream: BinaryIO) -> Iterator[RawRecord]:
    for line_no, raw in enumerate(stream, start=1):
        if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]  # spreadsheet exports start with a BOM
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield RawRecord(line_no, None, f"invalid UTF-8 at byte {exc.start}")
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            yield RawRecord(line_no, None, f"malformed JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(data, dict):
            yield RawRecord(line_no, None, f"expected a JSON object, found {type(data).__name__}")
            continue
        yield RawRecord(line_no, data)


def read_csv(stream: BinaryIO) -> Iterator[RawRecord]:
    # utf-8-sig drops the BOM that spreadsheet exports put before the header.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise CorpusError(f"malformed CSV header: {exc}") from exc
    next_line = reader.line_num + 1
    while True:
        start = next_line
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            next_line = reader.line_num + 1
            yield RawRecord(start, None, f"malformed CSV: {exc}")
            continue
        next_line = reader.line_num + 1
        if not row:
            continue
        if len(row) != len(header):
            yield RawRecord(start, None, f"malformed CSV: expected {len(header)} fields, found {len(row)}")
            continue
        yield RawRecord(start, dict(zip(header, row, strict=True)))
