"""Engines, one per database URL per process, with the schema created on first use."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from threading import Lock

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SAWarning

from ..errors import LedgerError
from .bulk import forget_staging
from .schema import metadata

log = logging.getLogger(__name__)

_engines: dict[tuple[int, str], Engine] = {}
_lock = Lock()
# A worker's heartbeat thread may hold the lock when the pool forks: the child gets a new one.
os.register_at_fork(after_in_child=lambda: globals().update(_lock=Lock()))


class ForkGuard:
    """fork() copies SQLite's per-process lock table: a child forked while another thread of
    its parent is inside a SQLite write transaction inherits that transaction's WAL write
    lock, which nothing in the child ever releases, so every write the child makes waits
    busy_timeout and fails "database is locked". Seen when a worker's pool replaced a
    process killed at its time limit while the heartbeat thread was marking chunks held: the
    new process's first chunk could not be started (tests/store/test_engine.py shows it).

    A thread that writes SQLite beside a forking thread (the heartbeat, beside the pool)
    holds the guard around its database work; a fork waits for it, at most `wait` seconds,
    then forks anyway rather than stall the worker's main loop (a warning says so). Only
    such threads take it: a forking thread that held it would wait the full `wait`."""

    def __init__(self, wait: float = 10.0) -> None:
        self.wait = wait
        self._lock = Lock()
        self._held_for_fork = False

    def __enter__(self) -> ForkGuard:
        self._lock.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self._lock.release()

    def before_fork(self) -> None:
        self._held_for_fork = self._lock.acquire(timeout=self.wait)

    def after_fork_in_parent(self) -> None:
        if self._held_for_fork:
            self._lock.release()
        else:  # logged here, not before the fork, where logging's own locks are taken
            log.warning("forked while a thread was still in a SQLite transaction after %.0f s: the new process "
                        "may find the database locked", self.wait)

    def after_fork_in_child(self) -> None:
        # The child's copy of the lock is held by its only thread (the one that forked) or by
        # a thread that does not exist there: either way, a fresh one.
        self._lock = Lock()


FORK_GUARD = ForkGuard()
os.register_at_fork(before=FORK_GUARD.before_fork, after_in_parent=FORK_GUARD.after_fork_in_parent,
                    after_in_child=FORK_GUARD.after_fork_in_child)


def fork_guard(url: str) -> ForkGuard | nullcontext[None]:
    """The guard for a thread's work on the database at `url` beside a forking thread:
    SQLite's only (a PostgreSQL connection is a socket of this process, and a fork need not
    wait for it)."""
    return FORK_GUARD if url.startswith("sqlite") else nullcontext()


def parse_url(url: str) -> URL:
    """SQLAlchemy's URL, or ArgumentError (the CLI's "invalid database URL"): a port that
    is not a number makes make_url raise a bare ValueError from int()."""
    try:
        return make_url(url)
    except ValueError as exc:
        raise ArgumentError(f"cannot parse {redact(url)!r}: {exc}") from None


def normalise_url(url: str) -> str:
    """Plain postgresql:// URLs use psycopg 3, the driver we install."""
    parsed = parse_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def redact(url: str) -> str:
    """A URL safe to print: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL (a broker URL, say): strip user info
        head, sep, tail = url.partition("://")
        if sep and "@" in tail:
            return f"{head}://***@{tail.split('@', 1)[1]}"
        return url


# SQLite's page cache per connection, in KiB (SQLite's default is 2,000 KiB). The collector's
# upserts land on random leaves of the vectors table's three indexes (ids and content hashes
# are in no order, and chunks are length-sorted), so with 2 MiB most leaves had been evicted
# by the next chunk and were read back with one pread each: 354,000 preads in a no-op run of
# 60,000 records (strace). 64 MiB keeps the indexes of a few hundred thousand records
# resident: that run went from 11,800 to 13,100 records/s (medians of alternating rounds,
# docs/benchmarks.md). It is a ceiling, not an allocation: a connection that reads little
# (status, a producer's ledger writes) holds little.
SQLITE_CACHE_KIB = 65_536


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets readers (status, export) run while a collector writes; busy_timeout makes
    # a second writer wait instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")  # negative: KiB, not pages
    cursor.close()


# A worker host cut off inside a transaction (the collector marks its chunk, then commits)
# leaves its session on the server holding the chunk's row lock until the server gives up on
# the peer: 2 h 11 min with the kernel's keepalive defaults, ~15 min when a reply was never
# acknowledged. Any sweep or redelivery of that chunk waits on the lock that long. Each
# session asks the server to find a dead peer within ~25 s instead: keepalive probes after
# 10 s idle (3 x 5 s), and tcp_user_timeout for data sent and never acknowledged. Session
# settings (any role may set them), sent once per new connection.
POSTGRES_SESSION = ("SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; "
                    "SET tcp_keepalives_count = 3; SET tcp_user_timeout = 25000")


def _postgres_session(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(POSTGRES_SESSION)
        dbapi_connection.commit()
    except Exception as exc:  # a server that lacks one (PostgreSQL < 12): the defaults stay
        dbapi_connection.rollback()
        log.info("could not set the session's TCP keepalives: %s", exc)


def _switch_to_wal(cursor, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """journal_mode=WAL, waiting for the lock like every other statement does.

    Switching a fresh file to WAL needs an exclusive lock, and SQLite answers "database is
    locked" at once, without calling the busy handler, while another process holds it (two
    CLIs opening a new file at the same moment). Once the file is in WAL mode the pragma is
    a no-op, so this loop only ever runs on a file's first connections."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class NoDatabase(LedgerError):
    """A reading command pointed at a SQLite file that does not exist: opening it would
    create an empty database (and hide a typo in --db), so nothing is opened."""


def sqlite_path(url: str) -> Path | None:
    """The file a SQLite URL names; None for another database or an in-memory one."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def existing_engine(url: str) -> Engine:
    """get_engine for commands that only read (or change what exists): a SQLite file that is
    not there is an error, never created. A server database is opened as usual."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise NoDatabase(f"no database at {path.absolute()} (run a job first or pass --db)")
    return get_engine(url)


# Errors that waiting will not cure: raised at once by wait_for_database.
_LASTING = ("does not exist", "authentication failed", "no password supplied", "unable to open database file")


def wait_for_database(url: str, seconds: float, on_wait: Callable[[OperationalError, float], None]) -> Engine:
    """get_engine and one round trip, tried again while the server refuses connections (a
    database that is coming up) for at most `seconds`, telling `on_wait` each time. An error
    waiting will not cure (no such database, bad credentials) is raised at once, and the
    last one once the time is up: a worker must not say `ready.` on a database it cannot use."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            engine = get_engine(url)
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return engine
        except OperationalError as exc:
            left = deadline - time.monotonic()
            if left <= 0 or any(words in str(exc.orig or exc).lower() for words in _LASTING):
                raise
            on_wait(exc, left)
            time.sleep(min(2.0, left))


def get_engine(url: str) -> Engine:
    """The process's engine for url; keyed by pid so a forked child never shares sockets."""
    key = (os.getpid(), url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _build(url)
            _engines[key] = engine
        return engine


def _build(url: str) -> Engine:
    full = normalise_url(url)
    # hide_parameters: an error's message never carries the statement's parameters (record
    # ids, texts), so logs, Flower and dead letters cannot leak the corpus through it.
    if full.startswith("sqlite"):
        engine = create_engine(full, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        # No pool_pre_ping: it costs a round trip per checkout on the collector's hot path,
        # and a connection that died is an OperationalError, which the tasks retry.
        engine = create_engine(full, hide_parameters=True)
        event.listen(engine, "connect", _postgres_session)
        # A rollback drops the bulk upsert's staging table if this transaction created it:
        # forget it, or every later chunk on the connection fails with UndefinedTable.
        event.listen(engine, "rollback", forget_staging)
        event.listen(engine, "rollback_savepoint", forget_staging)
    _create_schema(engine)
    log.debug("engine ready for %s", redact(full))
    return engine


def own_schema(url: URL) -> str | None:
    """The schema EMBEDFLEET_DATABASE_SCHEMA put in the URL (options=-csearch_path=NAME,public)."""
    match = re.search(r"search_path=([A-Za-z_][A-Za-z0-9_]*)", str(url.query.get("options", "")))
    return match.group(1) if match else None


def _create_schema(engine: Engine) -> None:
    if engine.dialect.name == "sqlite":
        # The driver sends no BEGIN before DDL, so each CREATE TABLE would commit on its own
        # and two processes opening a fresh file would both see a table missing and both
        # create it ("table ... already exists"). BEGIN IMMEDIATE takes the write lock first
        # (waiting on busy_timeout), so the check and the creates happen under one lock.
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            metadata.create_all(conn, checkfirst=True)
            _add_missing_columns(conn)
            conn.commit()
        return
    schema = own_schema(engine.url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Several workers may start at once; CREATE TABLE IF NOT EXISTS still races
            # on PostgreSQL's catalogue, so serialise schema creation on a lock.
            conn.execute(text("SELECT pg_advisory_xact_lock(724183)"))
        if schema:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            # Checked and created in that schema by name: an application's own public.vectors,
            # visible through the search path, must not be taken for ours.
            conn = conn.execution_options(schema_translate_map={None: schema})
        metadata.create_all(conn, checkfirst=True)
        _add_missing_columns(conn)


def _add_missing_columns(conn) -> None:  # type: ignore[no-untyped-def]
    """A database made by an older version lacks columns added since: add the NULLable ones
    (ALTER TABLE ... ADD COLUMN leaves existing rows NULL on both databases), and the
    table's indexes that may use them."""
    existing = inspect(conn)
    for table in metadata.sorted_tables:
        with warnings.catch_warnings():
            # pgvector's columns (vec, hvec: store/pgvector.py) are types SQLAlchemy does not
            # know; only their names are read here.
            warnings.filterwarnings("ignore", "Did not recognize type", SAWarning)
            have = {c["name"] for c in existing.get_columns(table.name)}
        missing = [c for c in table.columns if c.name not in have and c.nullable]
        for column in missing:
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
            log.info("added column %s.%s to a database made by an older version", table.name, column.name)
        for index in table.indexes if missing else ():
            index.create(conn, checkfirst=True)
