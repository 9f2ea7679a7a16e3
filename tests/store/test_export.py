"""Exporting a version as a .npy matrix and its ids file, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from embedfleet.chunks.collect import store_chunk
from embedfleet.store import codec
from embedfleet.store.engine import get_engine
from embedfleet.store.export import export_npy, ids_path_for, read_ids
from tests.store.helpers import DIM, chunk_vectors, job_with_chunks


def test_export_writes_matrix_and_ids(sqlite_url: str, tmp_path) -> None:
    """export writes an (N, d) float32 .npy in corpus order and PATH.ids.jsonl beside it."""
    engine = get_engine(sqlite_url)
    job_id = job_with_chunks(engine, {0: [0, 1], 1: [2]})
    c1, c0 = chunk_vectors(job_id, 1, [2]), chunk_vectors(job_id, 0, [0, 1])
    store_chunk(engine, c1)
    store_chunk(engine, c0)
    out = tmp_path / "v.npy"
    assert export_npy(engine, "c1", out) == (3, DIM)
    matrix = np.load(out)
    np.testing.assert_array_equal(matrix[:2], codec.unpack(c0.vectors, DIM))
    np.testing.assert_array_equal(matrix[2:], codec.unpack(c1.vectors, DIM))
    assert read_ids(ids_path_for(out)) == ["r0", "r1", "r2"]


@pytest.mark.parametrize("url", ["sqlite", "postgres"])
def test_export_ids_file_has_one_line_per_row_whatever_the_ids_hold(url: str, tmp_path, request) -> None:
    """Ids with a newline, carriage return, tab, quotes, backslash, NEL, line separator and non-ASCII
    letters (stored by older versions or SQL sources) each take one line: as many entries as rows,
    reading back exactly; str.splitlines() agrees; a stale PATH.ids.txt is removed."""
    db = request.getfixturevalue("sqlite_url" if url == "sqlite" else "pg_url")
    engine = get_engine(db)
    odd = ["plain", "new\nline", "cr\rlf\r\n", "tab\there", 'say "hi"', "back\\slash\\n", "nel\x85x",
           "ls\u2028ps\u2029", "héllo 世界 🙂", "'single'", "{\"json\": 1}"]
    job_id = job_with_chunks(engine, {0: list(range(len(odd)))})
    chunk = dataclasses.replace(chunk_vectors(job_id, 0, list(range(len(odd)))), ids=odd)
    store_chunk(engine, chunk)
    out = tmp_path / "odd.npy"
    (tmp_path / "odd.ids.txt").write_text("stale\n")
    assert export_npy(engine, "c1", out) == (len(odd), DIM)
    path = ids_path_for(out)
    assert path.name == "odd.ids.jsonl" and not (tmp_path / "odd.ids.txt").exists()
    assert read_ids(path) == odd
    assert len(path.read_text(encoding="utf-8").splitlines()) == len(np.load(out)) == len(odd)
    assert path.read_text(encoding="utf-8").splitlines()[8] == '"héllo 世界 🙂"'  # non-ASCII stays readable


def read_parquet_export(path):
    import pyarrow.parquet as pq

    return pq.read_table(path)


def stored_version(engine, n: int = 10, chunk: int = 3, **extras) -> str:
    """A version of n rows (ids r0..), stored chunk by chunk in reverse order through the collector."""
    chunks = {seq: list(range(start, min(start + chunk, n))) for seq, start in enumerate(range(0, n, chunk))}
    job_id = job_with_chunks(engine, chunks)
    for seq, positions in reversed(chunks.items()):
        made = chunk_vectors(job_id, seq, positions)
        if extras:
            made = dataclasses.replace(made, store_text=True, texts=[extras["texts"][p] for p in positions],
                                       metadata=[extras["metadata"][p] for p in positions])
        store_chunk(engine, made)
    return job_id


@pytest.mark.parametrize("server", ["sqlite", "postgres", "pgvector"])
def test_parquet_export_equals_the_npy_export(server: str, tmp_path, request) -> None:
    """The Parquet export, read back with pyarrow, holds the .npy export's rows exactly: same ids, in the
    same (corpus) order, positions 0..n-1, vectors as fixed_size_list<float32>[d], one row group per block;
    no text or metadata column when the version keeps neither. On SQLite, PostgreSQL (bytea) and
    PostgreSQL with pgvector (a `vector` column, decoded by the same path)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedfleet.store.export import export_parquet

    url = request.getfixturevalue({"sqlite": "sqlite_url", "postgres": "pg_url", "pgvector": "pgvector_url"}[server])
    engine = get_engine(url)
    stored_version(engine, n=10)
    npy = tmp_path / "v.npy"
    assert export_npy(engine, "c1", npy) == (10, DIM)
    out = tmp_path / "v.parquet"
    assert export_parquet(engine, "c1", out, block=4) == (10, DIM, ["id", "position", "vector"])
    table = read_parquet_export(out)
    assert table.schema.field("vector").type == pa.list_(pa.float32(), DIM)
    assert table.schema.field("id").type == pa.string() and table.schema.field("position").type == pa.int64()
    assert table.column("id").to_pylist() == read_ids(ids_path_for(npy)) == [f"r{i}" for i in range(10)]
    assert table.column("position").to_pylist() == list(range(10))
    vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, DIM)
    np.testing.assert_array_equal(vectors, np.load(npy))
    assert pq.ParquetFile(out).num_row_groups == 3  # blocks of 4: written as they were read
    meta = table.schema.metadata
    assert meta[b"embedfleet.version_key"] == b"c1" and meta[b"embedfleet.dim"] == str(DIM).encode()
    assert not (tmp_path / "v.parquet.partial").exists()


def test_parquet_export_keeps_text_and_metadata_when_the_version_stores_them(db_url: str, tmp_path) -> None:
    """With texts and metadata stored, the export has `text` and `metadata` (JSON text) beside each
    vector, in corpus order; a row without metadata has null."""
    import json

    from embedfleet.api import export
    from embedfleet.settings import Settings

    engine = get_engine(db_url)
    texts = [f"text {i} é\u2028" for i in range(7)]
    metadata = [{"n": i, "tags": ["a", "b"], "nested": {"x": None}} if i != 4 else None for i in range(7)]
    stored_version(engine, n=7, texts=texts, metadata=metadata)
    out = tmp_path / "with.parquet"
    done = export("c1", out, settings=Settings(database_url=db_url))
    assert (done.format, done.rows, done.dim, done.ids_path) == ("parquet", 7, DIM, None)
    assert done.columns == ("id", "position", "vector", "text", "metadata")
    table = read_parquet_export(out)
    assert table.column("text").to_pylist() == texts
    assert [None if m is None else json.loads(m) for m in table.column("metadata").to_pylist()] == metadata
    assert table.schema.field("metadata").metadata == {b"embedfleet.encoding": b"json"}
    npy = export("c1", tmp_path / "plain.npy", settings=Settings(database_url=db_url))
    assert npy.format == "npy" and read_ids(npy.ids_path) == table.column("id").to_pylist()


def test_parquet_export_of_an_empty_version_is_refused_and_writes_nothing(sqlite_url: str, tmp_path) -> None:
    """A version with no vectors is refused like the .npy export; nothing is written, and a file already
    at the path (an earlier export) is left as it was."""
    from embedfleet.store.collections import open_collection
    from embedfleet.store.export import export_parquet
    from embedfleet.store.ledger import LedgerError

    engine = get_engine(sqlite_url)
    open_collection(engine, "c1", "m", {}, {})
    out = tmp_path / "none.parquet"
    with pytest.raises(LedgerError, match="no vectors to export"):
        export_parquet(engine, "c1", out)
    assert not out.exists() and not (tmp_path / "none.parquet.partial").exists()
    out.write_bytes(b"earlier export")
    with pytest.raises(LedgerError, match="no vectors to export"):
        export_parquet(engine, "c1", out)
    assert out.read_bytes() == b"earlier export"
