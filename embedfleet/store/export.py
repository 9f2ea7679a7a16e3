"""Export a collection version in corpus order: as an (N, d) float32 .npy with its ids beside
it, or as one Parquet file (export_parquet).

The ids file is JSON Lines: line i is row i's id as a JSON string, so an id holding a
newline, a tab, a quote or a backslash still takes exactly one line. Read it back with

    ids = [json.loads(line) for line in open("PATH.ids.jsonl", encoding="utf-8")]

(or `store.export.read_ids`). Besides what JSON escapes, the C1 controls, the line and
paragraph separators and lone surrogates are written as \\uXXXX, so `str.splitlines()`
splits the file into exactly its rows too.

The Parquet file has one row per vector: `id` (string), `position` (int64), `vector`
(fixed_size_list<float32>[d]), and `text` (string) and `metadata` (JSON text, string) when
the version keeps them. Metadata is JSON text, not a struct: each record's metadata is any
JSON object, so one Arrow struct type cannot hold every version's rows (a field that is a
number in one row and a string in the next, a field that first appears in the last block,
after the file's schema is written).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, select

from ..extras import require
from . import vectors
from .ledger import LedgerError
from .schema import versions

log = logging.getLogger(__name__)

IDS_SUFFIX = ".ids.jsonl"
# Left raw by json.dumps(ensure_ascii=False), yet str.splitlines() breaks lines at some of
# them (U+0085, U+2028, U+2029) and UTF-8 cannot encode lone surrogates: escape them all.
_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def format_for(out: Path) -> str:
    """The export format a path asks for by its suffix: parquet for .parquet/.parq, else npy."""
    return "parquet" if out.suffix.lower() in (".parquet", ".parq") else "npy"


def ids_path_for(out: Path) -> Path:
    """PATH.npy -> PATH.ids.jsonl"""
    return out.with_suffix(IDS_SUFFIX) if out.suffix == ".npy" else Path(str(out) + IDS_SUFFIX)


def id_line(record_id: str) -> str:
    """One id as one line of the ids file: a JSON string, non-ASCII text kept readable."""
    encoded = json.dumps(record_id, ensure_ascii=False)
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", encoded) + "\n"


def read_ids(path: Path) -> list[str]:
    """The ids of an export, in row order."""
    with Path(path).open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def _remove_stale_ids_txt(out: Path) -> None:
    """Earlier versions wrote the ids to PATH.ids.txt: one left beside a new export would pair
    old ids with new rows, so it goes (it was this command's own output)."""
    old = out.with_suffix(".ids.txt") if out.suffix == ".npy" else Path(str(out) + ".ids.txt")
    if old.exists():
        old.unlink()
        log.warning("removed %s, an older export's ids: the ids are now in %s", old, ids_path_for(out))


def export_npy(engine: Engine, version_key: str, out: Path) -> tuple[int, int]:
    """Write a version's matrix block by block into a memory-mapped .npy. Returns (rows, dim)."""
    total = vectors.count(engine, version_key)
    blocks = vectors.iter_ordered(engine, version_key)
    first = next(blocks, None)
    if first is None:
        raise LedgerError(f"collection version {version_key!r} has no vectors to export")
    ids, matrix = first
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_ids_txt(out)
    array = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(total, matrix.shape[1]))
    row = 0
    with ids_path_for(out).open("w", encoding="utf-8", newline="\n") as id_file:
        while True:
            array[row : row + len(ids)] = matrix
            id_file.writelines(id_line(record_id) for record_id in ids)
            row += len(ids)
            block = next(blocks, None)
            if block is None:
                break
            ids, matrix = block
    array.flush()
    del array
    if row != total:
        raise LedgerError(f"version {version_key!r} changed during export ({row} rows read, {total} counted)")
    return row, matrix.shape[1]


# Rows read and written at a time: a block is one row group, about 6 MB at dim 384.
PARQUET_BLOCK = 4096


def export_parquet(engine: Engine, version_key: str, out: Path, block: int = PARQUET_BLOCK,
                   compression: str = "zstd") -> tuple[int, int, list[str]]:
    """Write a version to one Parquet file, block by block (one row group each, so memory
    stays flat), in corpus order. Returns (rows, dim, columns).

    Written to a temporary name beside `out` and renamed at the end, so a failed export never
    leaves a truncated file under the name a reader expects."""
    require("pyarrow", "parquet", "a Parquet export")
    import pyarrow as pa
    import pyarrow.parquet as pq

    total = vectors.count(engine, version_key)
    with engine.connect() as conn:
        info = conn.execute(select(versions.c.collection, versions.c.version, versions.c.model, versions.c.dim)
                            .where(versions.c.key == version_key)).first()
    if info is None:
        raise LedgerError(f"no collection version {version_key!r}")
    if total == 0 or info.dim is None:
        raise LedgerError(f"collection version {version_key!r} has no vectors to export")
    dim = int(info.dim)
    has_text, has_metadata = vectors.stores_extras(engine, version_key)
    fields = [pa.field("id", pa.string(), nullable=False), pa.field("position", pa.int64(), nullable=False),
              pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)]
    if has_text:
        fields.append(pa.field("text", pa.string()))
    if has_metadata:
        fields.append(pa.field("metadata", pa.string(), metadata={"embedfleet.encoding": "json"}))
    schema = pa.schema(fields, metadata={
        "embedfleet.collection": info.collection, "embedfleet.version": str(info.version),
        "embedfleet.version_key": version_key, "embedfleet.model": info.model, "embedfleet.dim": str(dim)})
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    rows = 0
    try:
        # No dictionary encoding: ids are unique and vectors are floats, so a dictionary
        # only costs time before the writer gives up on it.
        with pq.ParquetWriter(partial, schema, compression=compression, use_dictionary=False) as writer:
            for chunk in vectors.iter_blocks(engine, version_key, block, extras=has_text or has_metadata):
                writer.write_batch(_record_batch(pa, schema, chunk, dim, has_text, has_metadata))
                rows += len(chunk.ids)
        if rows != total:
            raise LedgerError(f"version {version_key!r} changed during export ({rows} rows read, {total} counted)")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return rows, dim, schema.names


def _record_batch(pa: Any, schema: Any, chunk: vectors.Block, dim: int, has_text: bool, has_metadata: bool) -> Any:
    flat = pa.array(np.ascontiguousarray(chunk.matrix, dtype=np.float32).reshape(-1), type=pa.float32())
    columns = [pa.array(chunk.ids, type=pa.string()), pa.array(chunk.positions, type=pa.int64()),
               pa.FixedSizeListArray.from_arrays(flat, dim)]
    if has_text:
        columns.append(pa.array(chunk.texts, type=pa.string()))
    if has_metadata:
        assert chunk.metadata is not None  # asked for with extras
        columns.append(pa.array([None if m is None else json.dumps(m, ensure_ascii=False) for m in chunk.metadata],
                                type=pa.string()))
    return pa.RecordBatch.from_arrays(columns, schema=schema)
