"""Streaming corpus readers: one record at a time, so memory stays flat however large the corpus.

Bytes that are not UTF-8 are kept as surrogate escapes and reported by validation with the
record's line, instead of killing the whole read.

Parquet is read a batch of rows at a time (never the whole table), only the columns the job
names, and each row becomes a dict as its JSON Lines export would: values of the Arrow types
JSON has no counterpart for are read as text, so that records.py treats them as it treats
any JSON string (see read_parquet).
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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

from ..extras import require

Format = Literal["jsonl", "csv", "parquet"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "parquet")
FORMATS_BY_SUFFIX: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
                                        ".parquet": "parquet", ".parq": "parquet"}
# Rows converted to dicts at a time: Parquet row groups are often 100,000s of rows, and a
# Python dict per row costs far more than the column it came from.
PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class RawRecord:
    """One record as read: its first line in the source, and its fields or why they are unreadable."""

    line: int
    data: dict[str, Any] | None
    error: str | None = None


class CorpusError(Exception):
    """The corpus cannot be read at all (missing file, unknown format, not Parquet, a column
    the job names is not in the file)."""


class Source(Protocol):
    """Anything records are read from, twice (validation, then submission), in the same order.
    `unit` is what a report calls a record's number: "line" for text files, "row" for
    Parquet, "record" for Records."""

    name: str

    # Read-only, so a source may narrow them (Corpus.format is "jsonl" or "csv").
    @property
    def format(self) -> str: ...

    @property
    def unit(self) -> str: ...

    def records(self, fields: Sequence[str] | None = None) -> Iterator[RawRecord]:
        """The records in order. `fields` are the fields the job reads (id, text, metadata):
        a columnar source reads only those, and refuses a column its schema lacks; None: all."""
        ...

    def spec(self) -> dict[str, Any]:
        """How to read it again (what `reindex` re-runs); {} when it cannot be re-read."""
        ...


class Corpus:
    """A re-readable source of records: a file, or stdin spooled to a temporary file."""

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

    @property
    def unit(self) -> str:
        return "row" if self.format == "parquet" else "line"

    @staticmethod
    def _format(path: str, fmt: str) -> Format:
        if fmt in FORMATS:
            return fmt
        if fmt != "auto":
            raise CorpusError(f"unknown corpus format {fmt!r}: use {'|'.join(FORMATS)}")
        if path == "-":
            return "jsonl"
        suffix = Path(path).suffix.lower()
        if suffix not in FORMATS_BY_SUFFIX:
            raise CorpusError(f"cannot tell the format of {path!r} from its suffix: pass --format {'|'.join(FORMATS)}")
        return FORMATS_BY_SUFFIX[suffix]

    def records(self, fields: Sequence[str] | None = None) -> Iterator[RawRecord]:
        if self.format == "parquet":
            yield from read_parquet(self.path, fields, name="stdin" if self.name == "-" else self.name)
            return
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
        from ..store.engine import redact

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

    def records(self, fields: Sequence[str] | None = None) -> Iterator[RawRecord]:
        from sqlalchemy import create_engine
        from sqlalchemy.exc import SQLAlchemyError

        from ..store.engine import normalise_url

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

    def records(self, fields: Sequence[str] | None = None) -> Iterator[RawRecord]:
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


def read_parquet(path: Path, fields: Sequence[str] | None = None, name: str | None = None,
                 batch_rows: int = PARQUET_BATCH_ROWS) -> Iterator[RawRecord]:
    """A Parquet file's rows as records, numbered from 1 ("row 17" in a report), read batch by
    batch (pyarrow reads one row group at a time), only the columns in `fields` when given.

    Each row is a dict as the row's JSON Lines export would be: strings, numbers, booleans,
    null, lists and structs (as dicts) stay what they are, so records.py treats them exactly
    as in JSONL (a number is refused as text, a list of strings is joined). Values JSON has
    no type for are made JSON's: timestamps, dates, times and decimals become Arrow's text
    of them ("2024-05-01 12:00:00.000000", "12.50"), binary is decoded as UTF-8 (bytes that
    are not UTF-8 kept as surrogate escapes: validation reports them, as in a text file), and
    maps become dicts. Durations and intervals are kept as Python values, which records.py
    refuses as an id or a text and writes as text in metadata; a row whose value has no
    Python form at all is refused, naming the field."""
    require("pyarrow", "parquet", "reading a Parquet corpus")
    import pyarrow as pa
    import pyarrow.parquet as pq

    shown = name or str(path)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"cannot read {shown!r} as Parquet: {exc}") from exc
    try:
        schema = parquet.schema_arrow
        columns = None
        if fields is not None:
            columns = list(dict.fromkeys(fields))
            missing = [f for f in columns if f not in schema.names]
            if missing:
                raise CorpusError(f"Parquet file {shown!r} has no column {', '.join(map(repr, missing))} "
                                  f"(its columns: {', '.join(schema.names) or 'none'})")
        row = 0
        batches = parquet.iter_batches(batch_size=batch_rows, columns=columns)
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as exc:
                raise CorpusError(f"cannot read Parquet file {shown!r} after row {row}: {exc}") from exc
            if batch is None:
                return
            names = batch.schema.names
            values = [_column_values(column, name) for name, column in zip(names, batch.columns, strict=True)]
            for items in zip(*values, strict=True) if values else [()] * len(batch):
                row += 1
                unreadable = next((v for v in items if isinstance(v, _Unreadable)), None)
                if unreadable is not None:
                    yield RawRecord(row, None, unreadable.reason)
                else:
                    yield RawRecord(row, dict(zip(names, items, strict=True)))
    finally:
        parquet.close()


def _json_type(arrow_type: Any) -> Any:
    """The type a column is cast to before it is read: timestamps, dates, times and decimals
    as strings, at any depth (in lists, structs and maps); None when nothing changes."""
    import pyarrow as pa
    import pyarrow.types as t

    if t.is_timestamp(arrow_type) or t.is_date(arrow_type) or t.is_time(arrow_type) or t.is_decimal(arrow_type):
        return pa.string()
    if t.is_dictionary(arrow_type):
        return _json_type(arrow_type.value_type)
    if t.is_list(arrow_type) or t.is_large_list(arrow_type) or t.is_fixed_size_list(arrow_type):
        inner = _json_type(arrow_type.value_type)
        return None if inner is None else pa.list_(inner)
    if t.is_struct(arrow_type):
        subs = [arrow_type.field(i) for i in range(arrow_type.num_fields)]
        new = [_json_type(f.type) for f in subs]
        if all(n is None for n in new):
            return None
        return pa.struct([f.with_type(n) if n is not None else f for f, n in zip(subs, new, strict=True)])
    if t.is_map(arrow_type):
        key, item = _json_type(arrow_type.key_type), _json_type(arrow_type.item_type)
        if key is None and item is None:
            return None
        return pa.map_(key or arrow_type.key_type, item or arrow_type.item_type)
    return None


def _holds_binary(arrow_type: Any) -> bool:
    import pyarrow.types as t

    if t.is_binary(arrow_type) or t.is_large_binary(arrow_type) or t.is_fixed_size_binary(arrow_type) \
            or getattr(t, "is_binary_view", lambda _: False)(arrow_type):
        return True
    if t.is_dictionary(arrow_type):
        return _holds_binary(arrow_type.value_type)
    if t.is_list(arrow_type) or t.is_large_list(arrow_type) or t.is_fixed_size_list(arrow_type):
        return _holds_binary(arrow_type.value_type)
    if t.is_struct(arrow_type):
        return any(_holds_binary(arrow_type.field(i).type) for i in range(arrow_type.num_fields))
    if t.is_map(arrow_type):
        return _holds_binary(arrow_type.key_type) or _holds_binary(arrow_type.item_type)
    return False


def _decoded(value: Any) -> Any:
    """bytes as text (surrogate escapes where not UTF-8), at any depth."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, dict):
        return {_decoded(k): _decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value


@dataclass(frozen=True)
class _Unreadable:
    """A Parquet value with no Python form: its row is refused with the reason."""

    reason: str


def _column_values(column: Any, name: str) -> list[Any]:
    """One column of a batch as Python values, JSON's types where Arrow has others (read_parquet)."""
    import pyarrow as pa

    target = _json_type(column.type)
    if target is not None:
        column = column.cast(target)
    try:
        values: list[Any] = column.to_pylist(maps_as_pydicts="lossy")
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        # Some value has no Python form (a nanosecond duration that is not whole microseconds,
        # say): value by value, so only the rows holding such a value are refused.
        values = [_scalar_value(column[i], name) for i in range(len(column))]
    if _holds_binary(column.type):
        values = [_decoded(v) for v in values]
    return values


def _scalar_value(scalar: Any, name: str) -> Any:
    import pyarrow as pa

    try:
        return scalar.as_py()
    except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
        # pyarrow's first sentence says why; the rest is advice about pandas.
        why = str(exc).split(". ")[0].rstrip(".")
        return _Unreadable(f"field {name!r} ({scalar.type}) cannot be read: {why}")
