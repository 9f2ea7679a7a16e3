"""Engines: URL redaction, hidden parameters, schema upgrades of old databases."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from embedfleet.store.engine import SQLITE_CACHE_KIB, get_engine, normalise_url, redact
from tests.store.helpers import SECRET


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


def test_sqlite_connections_keep_a_large_page_cache_in_wal_mode(sqlite_url) -> None:
    """Every SQLite connection the engine opens (the pool makes several) runs in WAL mode with
    synchronous=NORMAL and a page cache of SQLITE_CACHE_KIB, not SQLite's 2 MiB."""
    engine = get_engine(sqlite_url)
    with engine.connect() as first, engine.connect() as second:
        for conn in (first, second):
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -SQLITE_CACHE_KIB
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    with contextlib.closing(sqlite3.connect(":memory:")) as plain:  # SQLite's own default
        assert plain.execute("PRAGMA cache_size").fetchone()[0] > -SQLITE_CACHE_KIB


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
    from embedfleet.store.engine import _build

    engine = _build(url)
    with engine.connect() as conn:
        names = {r[1] for r in conn.execute(text("PRAGMA table_info(chunks)"))}
        assert {"holder", "parent_seq"} <= names
        assert conn.execute(text("SELECT count(*) FROM workers")).scalar_one() == 0


def test_postgres_sessions_ask_the_server_to_find_dead_peers_soon(pg_url: str) -> None:
    """A PostgreSQL session sets keepalives and tcp_user_timeout for itself, so a worker host cut off
    inside a transaction releases its row locks in about 25 s, not hours."""
    from sqlalchemy import text

    from embedfleet.store.engine import get_engine

    with get_engine(pg_url).connect() as conn:
        shown = {name: conn.execute(text(f"SHOW {name}")).scalar() for name in
                 ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")}
    # SHOW prints seconds with or without the unit, depending on the server's version.
    assert {name: value.removesuffix("s") for name, value in shown.items()} == {
        "tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3",
        "tcp_user_timeout": "25000"} or shown["tcp_user_timeout"] == "25s"


def _fork_and_write(path: str) -> tuple[int, float]:
    """Fork; the child writes the SQLite file once (waiting at most 2 s for its lock).
    Returns the child's exit code (0: it wrote) and the seconds the fork call took."""
    import os
    import sqlite3
    import time

    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no cleanup, one write and out
        try:
            conn = sqlite3.connect(path, timeout=2, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO probe VALUES (2)")
            conn.execute("COMMIT")
            os._exit(0)
        except BaseException:
            os._exit(1)
    forked = time.monotonic() - started
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), forked


@pytest.mark.parametrize("guarded", [False, True])
def test_a_fork_waits_for_a_thread_inside_a_sqlite_transaction(tmp_path, guarded: bool) -> None:
    """fork() copies SQLite's lock table: a child forked while another thread is inside a
    write transaction inherits its write lock and can never write (the unguarded case: a
    worker's replacement pool process, forked while the heartbeat marked chunks held). A
    thread that takes fork_guard() around its transaction makes the fork wait for it."""
    import threading

    from embedfleet.store.engine import fork_guard

    path = tmp_path / "fork.db"
    url = f"sqlite:///{path}"
    engine = get_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE probe (x INTEGER)"))
    inside, leave = threading.Event(), threading.Event()

    def writer() -> None:
        with fork_guard(url) if guarded else contextlib.nullcontext(), engine.begin() as conn:
            conn.execute(text("INSERT INTO probe VALUES (1)"))
            inside.set()
            leave.wait(5)

    thread = threading.Thread(target=writer)
    thread.start()
    assert inside.wait(5)
    threading.Timer(0.5, leave.set).start()  # the transaction ends 0.5 s from now
    code, forked = _fork_and_write(str(path))
    thread.join(5)
    if guarded:
        assert forked >= 0.4, "the fork did not wait for the transaction"
        assert code == 0, "the child could not write"
    else:
        assert forked < 0.4
        assert code == 1, "the child wrote: SQLite no longer hands a fork its parent's locks?"


def test_a_fork_waits_for_the_guard_no_longer_than_its_limit(caplog: pytest.LogCaptureFixture) -> None:
    """A thread stuck inside the guard does not stall the forking thread for good: the fork
    goes ahead after `wait` seconds, and says so."""
    import threading
    import time

    from embedfleet.store.engine import ForkGuard

    guard = ForkGuard(wait=0.2)
    entered, leave = threading.Event(), threading.Event()

    def stuck() -> None:
        with guard:
            entered.set()
            leave.wait(5)

    thread = threading.Thread(target=stuck)
    thread.start()
    assert entered.wait(5)
    started = time.monotonic()
    guard.before_fork()
    guard.after_fork_in_parent()
    assert 0.15 <= time.monotonic() - started < 2
    assert "forked while a thread was still in a SQLite transaction" in caplog.text
    leave.set()
    thread.join(5)
    guard.before_fork()  # free again: taken at once, and given back
    guard.after_fork_in_parent()
    with guard:
        pass
