"""The vector store's primitives, on SQLite and real PostgreSQL: the version check, look-ups by
content hash, and reads in corpus order."""

from __future__ import annotations

import pytest

from embedfleet.storage import codec
from embedfleet.storage.bulk import upsert_rows
from embedfleet.storage.collections import open_collection
from embedfleet.storage.engine import get_engine
from embedfleet.storage.errors import LedgerError
from embedfleet.storage.vectors import (
    bulk_write,
    check_version,
    count,
    delete_ids,
    embeddings_by_hash,
    iter_ids,
    iter_ordered,
    move_positions,
    stored_state,
)


def blob(value: float, dim: int = 3) -> bytes:
    return codec.pack([[value] * dim])


@pytest.fixture
def version(db_url):
    engine = get_engine(db_url)
    return engine, open_collection(engine, "c1", "m", {}, {}).key


def test_check_version_fixes_the_dimension_once_and_refuses_other_models(version) -> None:
    """The first chunk fixes dim; then a different model or dim is refused; a wrong model first fixes nothing."""
    engine, key = version
    with bulk_write(engine) as conn, pytest.raises(LedgerError, match="encoded with 'other'"):
        check_version(conn, key, "other", 3)
    with bulk_write(engine) as conn:
        check_version(conn, key, "m", 3)
    with bulk_write(engine) as conn:
        check_version(conn, key, "m", 3)
        with pytest.raises(LedgerError, match="dimension 3, chunk has 4"):
            check_version(conn, key, "m", 4)
        with pytest.raises(LedgerError, match="no collection version"):
            check_version(conn, "missing", "m", 3)


def test_rows_read_back_in_corpus_order_and_by_hash(version) -> None:
    """Rows upserted out of order read back by position in blocks; look-ups by hash and id find them;
    moves, deletes and counts act on the version's rows only."""
    engine, key = version
    with bulk_write(engine) as conn:
        check_version(conn, key, "m", 3)
        upsert_rows(conn, [(key, f"r{p}", p, f"h{p}", "m", blob(p), 0.0, None, None) for p in (4, 0, 3, 1, 2)])
    ids = [i for block, _ in iter_ordered(engine, key, block=2) for i in block]
    assert ids == ["r0", "r1", "r2", "r3", "r4"]
    matrix = next(iter_ordered(engine, key, block=5))[1]
    assert matrix[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    with engine.connect() as conn:
        assert embeddings_by_hash(conn, key, {"h2", "nope"}) == {"h2": blob(2)}
        assert embeddings_by_hash(conn, key, set()) == {}
    assert stored_state(engine, key, ["r1", "zz"]) == {"r1": ("h1", 1)}
    move_positions(engine, key, [("r0", 9)])
    assert next(iter_ordered(engine, key))[0][-1] == "r0"
    assert [i for block in iter_ids(engine, key, block=2) for i in block] == ["r0", "r1", "r2", "r3", "r4"]
    assert delete_ids(engine, key, ["r0", "r1"]) == 2 and count(engine, key) == 3
