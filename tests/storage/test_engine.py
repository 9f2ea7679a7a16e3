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
