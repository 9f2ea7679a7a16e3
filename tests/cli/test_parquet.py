"""Parquet through the real `embedfleet` command: a Parquet corpus embeds exactly as the same records
in JSON Lines (real model), `export` writes Parquet by suffix or --format, and a bad Parquet corpus
is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli.conftest import hash_cli
from tests.conftest import COMMIT_FIELDS, SAMPLE, embedfleet


def sample_records(n: int) -> list[dict]:
    with SAMPLE.open() as lines:
        return [json.loads(line) for _, line in zip(range(n), lines, strict=False)]


@pytest.mark.slow
def test_a_parquet_corpus_gives_the_same_vectors_as_the_same_records_in_jsonl(tmp_path: Path) -> None:
    """60 commits (a list-of-strings field among the text fields) as JSONL and as Parquet in 3 row groups,
    each embedded by the real runner with the real model: the Parquet export (by its .parquet suffix) holds
    the same ids in the same order and vectors equal to the JSONL's .npy export within 1e-6."""
    records = sample_records(60)
    jsonl = tmp_path / "commits.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    parquet = tmp_path / "commits.parquet"
    pq.write_table(pa.Table.from_pylist(records), parquet, row_group_size=25)
    assert pq.ParquetFile(parquet).num_row_groups == 3
    fields = ",".join(COMMIT_FIELDS)
    for corpus, db in ((jsonl, "j.db"), (parquet, "p.db")):
        result = embedfleet("run", str(corpus), "--collection", "commits", "--fields", fields, "--chunk-size", "16",
                            "--db", f"sqlite:///{tmp_path / db}", cwd=tmp_path)
        assert "read 60, stored 60" in result.stdout, result.stdout + result.stderr
    embedfleet("export", "--collection", "commits", "--out", str(tmp_path / "j.npy"),
               "--db", f"sqlite:///{tmp_path / 'j.db'}", cwd=tmp_path)
    done = embedfleet("export", "--collection", "commits", "--out", str(tmp_path / "p.parquet"),
                      "--db", f"sqlite:///{tmp_path / 'p.db'}", cwd=tmp_path)
    assert "wrote 60 x 384" in done.stdout and "(Parquet: id, position, vector)" in done.stdout
    table = pq.read_table(tmp_path / "p.parquet")
    ids = [json.loads(line) for line in (tmp_path / "j.ids.jsonl").read_text().splitlines()]
    assert table.column("id").to_pylist() == ids == [r["id"] for r in records]
    matrix = table.column("vector").combine_chunks().flatten().to_numpy().reshape(60, 384)
    np.testing.assert_allclose(matrix, np.load(tmp_path / "j.npy"), rtol=0, atol=1e-6)


def test_export_format_option_overrides_the_suffix(finished_job: str, sqlite_url: str, tmp_path: Path) -> None:
    """--format parquet writes Parquet whatever --out is called; --format npy writes the matrix and ids even
    to a .parquet name."""
    out = tmp_path / "vectors.bin"
    result = hash_cli("export", "--collection", "tiny", "--out", str(out), "--format", "parquet", "--db", sqlite_url)
    assert f"wrote 16 x 8 to {out} (Parquet: id, position, vector)" in result.stdout
    assert pq.read_table(out).num_rows == 16
    odd = tmp_path / "matrix.parquet"
    hash_cli("export", "--collection", "tiny", "--out", str(odd), "--format", "npy", "--db", sqlite_url)
    assert np.load(odd).shape == (16, 8) and (tmp_path / "matrix.parquet.ids.jsonl").exists()


def test_bad_parquet_corpora_are_one_line_errors(tmp_path: Path, sqlite_url: str) -> None:
    """Not Parquet, a missing id column, and bad rows: each exits 2 with `error: ...` naming the file, the
    column or the row, never a traceback, and `--format parquet` reads a file named otherwise."""
    fake = tmp_path / "fake.parquet"
    fake.write_text('{"id": "a", "text": "x"}\n')
    result = hash_cli("run", str(fake), "--collection", "c", "--db", sqlite_url, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: cannot read {str(fake)!r} as Parquet: Parquet magic bytes not found" in result.stderr

    table = pa.table({"key": ["a", "b", "c"], "text": ["x", "  ", "z"]})
    good = tmp_path / "rows.data"
    pq.write_table(table, good)
    result = hash_cli("run", str(good), "--format", "parquet", "--collection", "c", "--db", sqlite_url, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "has no column 'id' (its columns: key, text)" in result.stderr
    result = hash_cli("run", str(good), "--format", "parquet", "--id-field", "key", "--collection", "c",
                      "--db", sqlite_url, check=False)
    assert result.returncode == 2 and "row 2 (id 'b'): empty text (fields 'text')" in result.stderr
    result = hash_cli("run", str(good), "--format", "parquet", "--id-field", "key", "--skip-invalid",
                      "--collection", "c", "--db", sqlite_url)
    assert "stored 2" in result.stdout and "row 2 (id 'b')" in result.stderr
