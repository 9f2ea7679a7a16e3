"""Export a collection as an (N, d) float32 .npy in corpus order, with its ids beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import Engine

from storage import vectors
from storage.ledger import LedgerError


def ids_path_for(out: Path) -> Path:
    """PATH.npy -> PATH.ids.txt"""
    return out.with_suffix(".ids.txt") if out.suffix == ".npy" else Path(str(out) + ".ids.txt")


def export_npy(engine: Engine, version_key: str, out: Path) -> tuple[int, int]:
    """Write a version's matrix block by block into a memory-mapped .npy. Returns (rows, dim)."""
    total = vectors.count(engine, version_key)
    blocks = vectors.iter_ordered(engine, version_key)
    first = next(blocks, None)
    if first is None:
        raise LedgerError(f"collection version {version_key!r} has no vectors to export")
    ids, matrix = first
    out.parent.mkdir(parents=True, exist_ok=True)
    array = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(total, matrix.shape[1]))
    row = 0
    with ids_path_for(out).open("w", encoding="utf-8") as id_file:
        while True:
            array[row : row + len(ids)] = matrix
            id_file.writelines(f"{record_id}\n" for record_id in ids)
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
