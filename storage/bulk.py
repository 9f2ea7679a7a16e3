"""Bulk upserts of vector rows, one way per dialect: the collector's hot path.

Both keep the upsert idempotent: keyed by (version_key, record_id), a redelivered chunk
rewrites the same rows. SQLAlchemy's generic executemany spent most of its time building
parameters; these hand the rows to the driver as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from storage.errors import LedgerError

COLUMNS = ("version_key", "record_id", "position", "content_hash", "model", "embedding", "updated_at")
UPDATE = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[2:])
Row = tuple[str, str, int, str, str, bytes, float]


def upsert_rows(conn: Connection, rows: Sequence[Row]) -> None:
    """Once per transaction (the staging table is emptied only at commit)."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect == "postgresql":
        _postgres(conn, rows)
    elif dialect == "sqlite":
        _sqlite(conn, rows)
    else:
        raise LedgerError(f"unsupported database dialect {dialect!r}: use SQLite or PostgreSQL")


def _sqlite(conn: Connection, rows: Sequence[Row]) -> None:
    conn.exec_driver_sql(
        f"INSERT INTO vectors ({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?) "
        f"ON CONFLICT (version_key, record_id) DO UPDATE SET {UPDATE}",
        list(rows),
    )


def _postgres(conn: Connection, rows: Sequence[Row]) -> None:
    """COPY (binary) into a session temp table, then one INSERT ... ON CONFLICT from it.
    (Measured: 4x faster than one INSERT over unnest() of array parameters.)"""
    raw: Any = conn.connection.driver_connection
    with raw.cursor() as cursor:
        if not conn.connection.info.get("vectors_in"):
            # Once per database connection. ON COMMIT DELETE ROWS: the staging rows vanish
            # with the collector's transaction.
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS vectors_in (LIKE vectors INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            conn.connection.info["vectors_in"] = True
        with cursor.copy(f"COPY vectors_in ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["varchar", "varchar", "int8", "varchar", "varchar", "bytea", "float8"])
            for row in rows:
                copy.write_row(row)
        cursor.execute(
            f"INSERT INTO vectors ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} FROM vectors_in "
            f"ON CONFLICT (version_key, record_id) DO UPDATE SET {UPDATE}"
        )
