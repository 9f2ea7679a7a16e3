"""Engines: URL redaction, hidden parameters, schema upgrades of old databases."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from embedfleet.storage.engine import get_engine, normalise_url, redact
from tests.storage.helpers import SECRET


def test_redact_hides_passwords() -> None:
    """Database and broker URLs print without their passwords."""
    assert "s3cret" not in redact("postgresql://u:s3cret@db:5432/x")
    assert "s3cret" not in redact("rediss://:s3cret@cache:6380/0")


def test_engine_hides_parameters(sqlite_url):
    """The engines never put statement parameters in error messages."""
    engine = get_engine(sqlite_url)
    with pytest.raises(sa_exc.StatementError) as caught, engine.connect() as conn:
        conn.execute(text("INSERT INTO no_such_table VALUES (:t)"), {"t": SECRET})
    assert SECRET not in str(caught.value)


@pytest.fixture
def engine(db_url):

    return get_engine(db_url)


def test_old_database_gains_new_columns(tmp_path) -> None:
    """A database created before holder/parent_seq existed gets them (NULL) on first use."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    get_engine(url)
    raw = create_engine(normalise_url(url))
    with raw.begin() as conn:
        conn.execute(text("DROP INDEX ix_chunks_holder_state"))
        conn.execute(text("ALTER TABLE chunks DROP COLUMN holder"))
        conn.execute(text("ALTER TABLE chunks DROP COLUMN parent_seq"))
        conn.execute(text("DROP TABLE workers"))
    raw.dispose()
    from embedfleet.storage.engine import _build

    engine = _build(url)
    with engine.connect() as conn:
        names = {r[1] for r in conn.execute(text("PRAGMA table_info(chunks)"))}
        assert {"holder", "parent_seq"} <= names
        assert conn.execute(text("SELECT count(*) FROM workers")).scalar_one() == 0


def test_postgres_sessions_ask_the_server_to_find_dead_peers_soon(pg_url: str) -> None:
    """A PostgreSQL session sets keepalives and tcp_user_timeout for itself, so a worker host cut off
    inside a transaction releases its row locks in about 25 s, not hours."""
    from sqlalchemy import text

    from embedfleet.storage.engine import get_engine

    with get_engine(pg_url).connect() as conn:
        shown = {name: conn.execute(text(f"SHOW {name}")).scalar() for name in
                 ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")}
    # SHOW prints seconds with or without the unit, depending on the server's version.
    assert {name: value.removesuffix("s") for name, value in shown.items()} == {
        "tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3",
        "tcp_user_timeout": "25000"} or shown["tcp_user_timeout"] == "25s"
