"""Collections and their versions: one model per version, reads go to the current one.

A migration fills a new version while the current one stays readable, then switches
`current_key` in one transaction; rollback switches back until the old version is dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from ..errors import LedgerError, check_collection_name
from .pgvector import AUTO, BYTEA, choose_kind, drop_index
from .schema import chunks, collections, dead_letters, jobs, vectors, versions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Version:
    key: str
    collection: str
    version: int
    model: str
    dim: int | None
    normalized: bool
    state: str
    created_at: float
    # bytea, vector or halfvec (store/pgvector.py), and its HNSW index's build seconds.
    storage: str = BYTEA
    index_seconds: float | None = None


@dataclass(frozen=True)
class Collection:
    name: str
    current_key: str
    previous_key: str | None
    source: dict[str, Any]
    options: dict[str, Any]
    versions: list[Version]

    @property
    def current(self) -> Version:
        return next(v for v in self.versions if v.key == self.current_key)


# Job states after which the job writes nothing more to its version: a version whose jobs
# all ended (done, cancelled, or abandoned by a producer that died) can be dropped.
ENDED_JOB_STATES = ("done", "cancelled", "abandoned")


def version_key(name: str, version: int) -> str:
    return name if version == 1 else f"{name}__v{version}"


def _version(row: Any) -> Version:
    fields = {f: getattr(row, f) for f in Version.__dataclass_fields__}
    return Version(**{**fields, "storage": fields["storage"] or BYTEA})


def _insert_version(conn: Connection, name: str, number: int, model: str, vector_type: str) -> Version:
    """A new, empty version; its storage (bytea, vector, halfvec) chosen now and kept."""
    key = version_key(name, number)
    kind, why = choose_kind(conn, vector_type)
    version = Version(key=key, collection=name, version=number, model=model, dim=None, normalized=True,
                      state="building", created_at=time.time(), storage=kind)
    conn.execute(insert(versions).values(**asdict(version)))
    log.info("collection %s version %d stores %s", name, number, why)
    return version


def open_collection(engine: Engine, name: str, model: str, source: dict[str, Any], options: dict[str, Any]) -> Version:
    """The version a new job of `model` writes to: the current one, created (as version 1,
    registering the source) on first use. Another model than the current one's is refused.

    Race-safe: when two first submits create the collection at once, the loser's INSERT
    fails on the primary key (PostgreSQL makes it wait for the winner's commit first; SQLite
    lets one writer in at a time), and it reads the winner's version instead."""
    check_collection_name(name)
    for attempt in range(3):
        try:
            current = _open_or_create(engine, name, model, source, options)
            break
        except IntegrityError:
            if attempt == 2:
                raise
    if current.model != model:
        raise LedgerError(
            f"collection {name!r} is on model {current.model!r}, not {model!r}: "
            f"`embedfleet migrate --collection {name} --model ...` moves it to another model"
        )
    return current


def _open_or_create(engine: Engine, name: str, model: str, source: dict[str, Any], options: dict[str, Any]) -> Version:
    with engine.begin() as conn:
        row = conn.execute(select(collections.c.current_key).where(collections.c.name == name)).first()
        if row is None:
            conn.execute(insert(collections).values(name=name, current_key=version_key(name, 1), source=source,
                                                    options=options, created_at=time.time()))
            return _insert_version(conn, name, 1, model, options.get("vector_type", AUTO))
        return _version(conn.execute(select(versions).where(versions.c.key == row.current_key)).one())


def new_version(engine: Engine, name: str, model: str) -> Version:
    """The next version of a collection, empty, for a migration to fill."""
    with engine.begin() as conn:
        collection = get_collection_conn(conn, name)
        number = conn.execute(select(func.max(versions.c.version)).where(versions.c.collection == name)).scalar_one()
        return _insert_version(conn, name, int(number) + 1, model, collection.options.get("vector_type", AUTO))


def get_collection_conn(conn: Connection, name: str) -> Collection:
    row = conn.execute(select(collections).where(collections.c.name == name)).first()
    if row is None:
        raise LedgerError(f"no collection {name!r}")
    rows = conn.execute(select(versions).where(versions.c.collection == name).order_by(versions.c.version)).all()
    return Collection(row.name, row.current_key, row.previous_key, row.source or {}, row.options or {},
                      [_version(r) for r in rows])


def get_collection(engine: Engine, name: str) -> Collection:
    with engine.connect() as conn:
        return get_collection_conn(conn, name)


def get_version(conn: Connection, key: str) -> Version:
    row = conn.execute(select(versions).where(versions.c.key == key)).first()
    if row is None:
        raise LedgerError(f"no collection version {key!r}")
    return _version(row)


def version_rows(engine: Engine, key: str) -> int:
    with engine.connect() as conn:
        count = select(func.count()).select_from(vectors).where(vectors.c.version_key == key)
        return int(conn.execute(count).scalar_one())


@dataclass(frozen=True)
class CollectionSummary:
    """A collection as `embedfleet collections` lists it: its versions with their row counts."""

    collection: Collection
    rows: dict[str, int]  # version key -> vectors stored

    def as_dict(self) -> dict[str, Any]:
        c = self.collection
        current = c.current
        return {
            "name": c.name,
            "current_version": current.version,
            "model": current.model,
            "dim": current.dim,
            "rows": self.rows.get(c.current_key, 0),
            "versions": [
                {"version": v.version, "key": v.key, "state": v.state, "model": v.model, "dim": v.dim,
                 "rows": self.rows.get(v.key, 0),
                 "role": "current" if v.key == c.current_key else "previous" if v.key == c.previous_key else ""}
                for v in c.versions
            ],
        }


def list_collections(engine: Engine) -> list[CollectionSummary]:
    """Every collection, by name, with each version's stored vectors counted (one grouped query)."""
    with engine.connect() as conn:
        names = conn.execute(select(collections.c.name).order_by(collections.c.name)).scalars().all()
        found = [get_collection_conn(conn, name) for name in names]
        rows = {key: int(n) for key, n in conn.execute(
            select(vectors.c.version_key, func.count()).group_by(vectors.c.version_key))}
    return [CollectionSummary(c, {v.key: rows.get(v.key, 0) for v in c.versions}) for c in found]


@dataclass(frozen=True)
class Deleted:
    """What delete_collection removed."""

    name: str
    versions: int
    vectors: int
    jobs: int


def delete_collection(engine: Engine, name: str) -> Deleted:
    """Delete a collection: every version's vectors, its versions, and its jobs' history (their
    chunks and dead letters, which point at the jobs). Refused while one of its jobs has not
    ended: a worker would write into a collection that no longer exists. One transaction."""
    with engine.begin() as conn:
        collection = get_collection_conn(conn, name)
        running = conn.execute(select(jobs.c.id).where(and_(jobs.c.collection == name,
                                                            jobs.c.state.notin_(ENDED_JOB_STATES)))).first()
        if running is not None:
            raise LedgerError(f"job {running.id} on collection {name!r} has not ended: "
                              f"`embedfleet cancel {running.id[:8]}` first, or wait for it")
        keys = [v.key for v in collection.versions]
        job_ids = select(jobs.c.id).where(jobs.c.collection == name)
        conn.execute(delete(dead_letters).where(dead_letters.c.job_id.in_(job_ids)))
        conn.execute(delete(chunks).where(chunks.c.job_id.in_(job_ids)))
        deleted_jobs = conn.execute(delete(jobs).where(jobs.c.collection == name)).rowcount
        deleted_vectors = conn.execute(delete(vectors).where(vectors.c.version_key.in_(keys))).rowcount
        for key in keys:
            drop_index(conn, key)
        conn.execute(delete(versions).where(versions.c.collection == name))
        conn.execute(delete(collections).where(collections.c.name == name))
    return Deleted(name, len(keys), int(deleted_vectors or 0), int(deleted_jobs or 0))


def mark_ready(conn: Connection, key: str) -> None:
    building = and_(versions.c.key == key, versions.c.state == "building")
    conn.execute(update(versions).where(building).values(state="ready"))


def cutover_conn(conn: Connection, name: str, key: str) -> None:
    """Make `key` current; the old current becomes the rollback target. One transaction."""
    collection = get_collection_conn(conn, name)
    target = next((v for v in collection.versions if v.key == key), None)
    if target is None or target.state == "dropped":
        raise LedgerError(f"collection {name!r} has no live version {key!r}")
    if key == collection.current_key:
        return
    conn.execute(update(collections).where(collections.c.name == name)
                 .values(current_key=key, previous_key=collection.current_key))


def cutover(engine: Engine, name: str, number: int | None = None) -> Version:
    """Switch reads to version `number`, or to the newest complete version."""
    with engine.begin() as conn:
        collection = get_collection_conn(conn, name)
        if number is None:
            ready = [v for v in collection.versions if v.state == "ready" and v.key != collection.current_key
                     and v.version > collection.current.version]
            if not ready:
                raise LedgerError(f"collection {name!r} has no complete version newer than the current one")
            target = ready[-1]
        else:
            found = next((v for v in collection.versions if v.version == number), None)
            if found is None or found.state != "ready":
                raise LedgerError(f"version {number} of {name!r} is not complete (or does not exist)")
            target = found
        cutover_conn(conn, name, target.key)
        return target


def rollback(engine: Engine, name: str) -> Version:
    """Back to the previous version; the one left becomes the previous (roll forward again)."""
    with engine.begin() as conn:
        collection = get_collection_conn(conn, name)
        if collection.previous_key is None:
            raise LedgerError(f"collection {name!r} has no previous version to roll back to")
        cutover_conn(conn, name, collection.previous_key)
        return get_version(conn, collection.previous_key)


def drop_version(engine: Engine, name: str, number: int) -> int:
    """Delete a version's vectors (never the current one's). Returns rows deleted."""
    with engine.begin() as conn:
        collection = get_collection_conn(conn, name)
        target = next((v for v in collection.versions if v.version == number), None)
        if target is None:
            raise LedgerError(f"collection {name!r} has no version {number}")
        if target.key == collection.current_key:
            raise LedgerError(f"version {number} is current: cut over or roll back first")
        running = conn.execute(select(jobs.c.id).where(and_(jobs.c.version_key == target.key,
                                                              jobs.c.state.notin_(ENDED_JOB_STATES)))).first()
        if running is not None:
            raise LedgerError(f"job {running.id} is still writing version {number}")
        deleted = conn.execute(delete(vectors).where(vectors.c.version_key == target.key)).rowcount
        drop_index(conn, target.key)
        conn.execute(update(versions).where(versions.c.key == target.key).values(state="dropped", index_seconds=None))
        if collection.previous_key == target.key:
            conn.execute(update(collections).where(collections.c.name == name).values(previous_key=None))
        return int(deleted or 0)


def claim_reindex(engine: Engine, name: str, min_gap_seconds: float) -> bool:
    """True for exactly one caller per gap: the guard that keeps two beats (or a restart
    across the scheduled time) from starting two reindexes of one collection."""
    now = time.time()
    with engine.begin() as conn:
        claimed = conn.execute(
            update(collections)
            .where(and_(collections.c.name == name,
                        or_(collections.c.last_reindex_at.is_(None),
                            collections.c.last_reindex_at < now - min_gap_seconds)))
            .values(last_reindex_at=now)
        ).rowcount
    return claimed == 1
