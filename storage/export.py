"""Export a collection as an (N, d) float32 .npy in corpus order, with its ids beside it.

The ids file is JSON Lines: line i is row i's id as a JSON string, so an id holding a
newline, a tab, a quote or a backslash still takes exactly one line. Read it back with

    ids = [json.loads(line) for line in open("PATH.ids.jsonl", encoding="utf-8")]

(or `storage.export.read_ids`). Besides what JSON escapes, the C1 controls, the line and
paragraph separators and lone surrogates are written as \\uXXXX, so `str.splitlines()`
splits the file into exactly its rows too.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
from sqlalchemy import Engine

from . import vectors
from .ledger import LedgerError

log = logging.getLogger(__name__)

IDS_SUFFIX = ".ids.jsonl"
# Left raw by json.dumps(ensure_ascii=False), yet str.splitlines() breaks lines at some of
# them (U+0085, U+2028, U+2029) and UTF-8 cannot encode lone surrogates: escape them all.
_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


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
