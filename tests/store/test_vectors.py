"""The vector store's primitives, on SQLite and real PostgreSQL: the version check, look-ups by
content hash, and reads in corpus order."""

from __future__ import annotations

import pytest

from embedfleet.errors import LedgerError
from embedfleet.store import codec
from embedfleet.store.bulk import upsert_rows
from embedfleet.store.collections import new_version, open_collection
from embedfleet.store.engine import get_engine
from embedfleet.store.vectors import (
    analyze,
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


def test_a_text_stored_many_times_is_found_once_per_hash(version) -> None:
    """Many rows share a hash (a corpus repeating one text): each asked-for hash comes back
    once, with a stored vector; hashes the version does not store are left out."""
    engine, key = version
    with bulk_write(engine) as conn:
        check_version(conn, key, "m", 3)
        upsert_rows(conn, [(key, f"r{p}", p, "same", "m", blob(7), 0.0, None, None) for p in range(50)]
                    + [(key, "other", 50, "h-other", "m", blob(8), 0.0, None, None)])
    with engine.connect() as conn:
        assert embeddings_by_hash(conn, key, ["same", "h-other", "missing"]) == {"same": blob(7), "h-other": blob(8)}


def _plans(engine, key: str, run) -> list[str]:  # type: ignore[no-untyped-def]
    """PostgreSQL's plan of every statement `run(conn)` sends, explained with its parameters."""
    from sqlalchemy import event

    sent: list[tuple[str, object]] = []
    with engine.connect() as conn:
        listener = lambda _c, _cur, statement, params, _ctx, _many: sent.append((statement, params))  # noqa: E731
        event.listen(conn, "before_cursor_execute", listener)
        run(conn)
        event.remove(conn, "before_cursor_execute", listener)
        return ["\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, params))
                for statement, params in sent]


def test_hash_lookups_probe_the_hash_index_on_a_table_never_analyzed(pg_url) -> None:
    """A first load fills the table faster than autovacuum analyzes it. `content_hash IN
    (...)` was then planned as a scan of the version's every row by its position index
    (80 ms a chunk at 100,000 rows, growing with the load): the look-up must probe the hash
    index whatever the statistics say. A migration's version beside an analyzed older one
    is planned as about one row until the collector's ANALYZE (ANALYZE_AFTER_SEQS), and
    probes the hash index after it."""
    engine = get_engine(pg_url)
    first = open_collection(engine, "c1", "m", {}, {}).key
    # The model's 384 dimensions: the plan follows the table's size in pages.
    rows = [(first, f"r{p}", p, f"h{p % 20_000}", "m", blob(1, 384), 0.0, None, None) for p in range(30_000)]
    with bulk_write(engine) as conn:
        check_version(conn, first, "m", 384)
        upsert_rows(conn, rows)
    wanted = [f"h{p}" for p in range(0, 20_000, 78)]  # a chunk's 256

    def assert_probes_hash_index(key: str, stored: int = 20_000) -> None:
        plans = _plans(engine, key, lambda conn: embeddings_by_hash(conn, key, wanted))
        lookups = [plan for plan in plans if "vectors" in plan]
        assert lookups, plans
        for plan in lookups:  # content_hash is the index's condition, not a filter on a version-wide scan
            hash_lines = [line.strip() for line in plan.splitlines() if "content_hash" in line]
            assert "ix_vectors_version_hash" in plan and all(ln.startswith("Index Cond") for ln in hash_lines), plan
        with engine.connect() as conn:
            found = embeddings_by_hash(conn, key, wanted)
        assert sorted(found) == sorted(h for h in wanted if int(h[1:]) < stored)

    assert_probes_hash_index(first)
    analyze(engine)
    assert_probes_hash_index(first)
    second = new_version(engine, "c1", "m").key
    with bulk_write(engine) as conn:
        check_version(conn, second, "m", 384)
        upsert_rows(conn, [(second, *row[1:]) for row in rows[:5000]])
    analyze(engine)
    assert_probes_hash_index(second, stored=5000)
