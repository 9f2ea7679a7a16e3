"""Exporting a version as a .npy matrix and its ids file, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from embedfleet.storage import codec
from embedfleet.storage.engine import get_engine
from embedfleet.storage.export import export_npy, ids_path_for, read_ids
from embedfleet.workers.collector import store_chunk
from tests.storage.helpers import DIM, chunk_vectors, job_with_chunks


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
