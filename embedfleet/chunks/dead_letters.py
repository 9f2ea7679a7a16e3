"""Dead letters: records that could not be embedded, with their error, kept for inspection and redrive."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, String, and_, insert, select, update

from ..errors import LedgerError
from ..store.ledger import finish_if_complete
from ..store.schema import chunks, dead_letters, jobs
from .messages import DeadRecord, read_payload


@dataclass(frozen=True)
class Letter:
    id: int
    job_id: str
    chunk_seq: int
    version_key: str
    record_id: str
    position: int
    text: str
    content_hash: str
    error_type: str
    message: str
    attempts: int
    created_at: float
    resolved_at: float | None
    redrive_job: str | None


# What the dead_letters columns hold: a letter must be writable whatever its record holds,
# or the record it stands for would be lost.
def _length(column: Any) -> int:
    kind = column.type
    assert isinstance(kind, String) and kind.length is not None, f"{column.name} has a length"
    return int(kind.length)


LETTER_ID_LENGTH = _length(dead_letters.c.record_id)
ERROR_TYPE_LENGTH = _length(dead_letters.c.error_type)
HASH_LENGTH = _length(dead_letters.c.content_hash)
MESSAGE_LENGTH = 4000


# How a letter's message starts when its record id had to be altered: such a letter can
# be read, not redriven (the record would be stored under the altered id).
ID_ALTERED = "[record id altered to fit storage: "
TEXT_ALTERED = "[letter altered to fit storage: "


def storable_letter(dead: DeadRecord) -> DeadRecord:
    """The letter as storage can hold it: NUL in the id written as the four characters
    \\x00, NUL removed from the text, an over-long id shortened to the column with a marker
    "...[N chars]"; the message starts by saying what was changed (ID_ALTERED when the id
    was) and keeps the id's original length. A letter with nothing to change is returned
    as it is (the usual case)."""
    record_id, text, notes = dead.record_id, dead.text, []
    if "\x00" in record_id:
        record_id = record_id.replace("\x00", "\\x00")
        notes.append("NUL written as \\x00")
    if len(record_id) > LETTER_ID_LENGTH:
        marker = f"...[{len(dead.record_id)} chars]"
        record_id = record_id[:LETTER_ID_LENGTH - len(marker)] + marker
        notes.append(f"shortened, it has {len(dead.record_id)} characters")
    id_altered = bool(notes)
    if "\x00" in text:
        text = text.replace("\x00", "")
        notes.append("NUL removed from the text")
    error_type = dead.error_type.replace("\x00", "")[:ERROR_TYPE_LENGTH]
    content_hash = dead.content_hash.replace("\x00", "")[:HASH_LENGTH]
    message = dead.message.replace("\x00", "")
    if notes:
        message = f"{ID_ALTERED if id_altered else TEXT_ALTERED}{'; '.join(notes)}] {message}"
    if (record_id, text, error_type, content_hash, message) == (
            dead.record_id, dead.text, dead.error_type, dead.content_hash, dead.message):
        return dead
    return DeadRecord(record_id, dead.position, text, content_hash, error_type, message)


def id_altered(letter: Letter) -> bool:
    """Its record id is not the record's own (storable_letter had to change it)."""
    return letter.message.startswith(ID_ALTERED)


def insert_letters(
    conn: Connection, job_id: str, seq: int, version_key: str, dead: Sequence[DeadRecord], attempts: int
) -> None:
    if not dead:
        return
    now = time.time()
    dead = [storable_letter(d) for d in dead]
    conn.execute(
        insert(dead_letters),
        [
            {
                "job_id": job_id,
                "chunk_seq": seq,
                "version_key": version_key,
                "record_id": d.record_id,
                "position": d.position,
                "text": d.text,
                "content_hash": d.content_hash,
                "error_type": d.error_type,
                "message": d.message[:MESSAGE_LENGTH],
                "attempts": attempts,
                "created_at": now,
            }
            for d in dead
        ],
    )


def resolve_stored(conn: Connection, job_id: str, version_key: str, record_ids: Sequence[str]) -> None:
    """Records now stored clear their open letters (a redrive, or a later job, succeeded)."""
    open_letters = select(dead_letters.c.id).where(
        and_(dead_letters.c.version_key == version_key, dead_letters.c.resolved_at.is_(None))
    )
    if not record_ids or conn.execute(open_letters.limit(1)).first() is None:
        return  # the usual case: nothing to resolve, one indexed look-up
    conn.execute(
        update(dead_letters)
        .where(
            and_(
                dead_letters.c.version_key == version_key,
                dead_letters.c.resolved_at.is_(None),
                dead_letters.c.record_id.in_(list(record_ids)),
            )
        )
        .values(resolved_at=time.time(), redrive_job=job_id)
    )


def open_letter_hashes(conn: Connection, version_key: str, hashes: Collection[str]) -> set[str]:
    """The content hashes, of those asked about, that the version holds open letters for."""
    if not hashes:
        return set()
    return set(conn.execute(
        select(dead_letters.c.content_hash).where(and_(
            dead_letters.c.version_key == version_key, dead_letters.c.resolved_at.is_(None),
            dead_letters.c.content_hash.in_(list(hashes))))
    ).scalars())


def dead_letter_chunk(engine: Engine, job_id: str, seq: int, error_type: str, message: str, giveup: bool) -> int:
    """Every record of an open chunk becomes a dead letter (the chunk failed as a whole),
    its texts read from the ledger's copy of the message. Returns the letters written; 0
    when the chunk was already done (another delivery finished it)."""
    with engine.begin() as conn:
        row = conn.execute(
            select(chunks.c.payload, chunks.c.deliveries, chunks.c.state).where(
                and_(chunks.c.job_id == job_id, chunks.c.seq == seq)
            )
            .with_for_update()
        ).first()
        if row is None or row.state != "queued" or row.payload is None:
            return 0
        version_key, records = read_payload(bytes(row.payload))
        dead = [DeadRecord(record_id, position, text, content_hash, error_type, message)
                for record_id, position, text, content_hash in records]
        insert_letters(conn, job_id, seq, version_key, dead, max(row.deliveries, 1))
        conn.execute(
            update(chunks)
            .where(and_(chunks.c.job_id == job_id, chunks.c.seq == seq))
            .values(state="done", dead=len(dead), payload=None, done_at=time.time())
        )
        if giveup:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(giveups=jobs.c.giveups + 1))
    finish_if_complete(engine, job_id)
    return len(dead)


def _letter(row) -> Letter:  # type: ignore[no-untyped-def]
    return Letter(**{name: getattr(row, name) for name in Letter.__dataclass_fields__})


def list_letters(engine: Engine, job_id: str | None = None, include_resolved: bool = False,
                 limit: int | None = None) -> list[Letter]:
    query = select(dead_letters).order_by(dead_letters.c.id)
    if job_id:
        query = query.where(dead_letters.c.job_id == job_id)
    if not include_resolved:
        query = query.where(dead_letters.c.resolved_at.is_(None))
    if limit:
        query = query.limit(limit)
    with engine.connect() as conn:
        return [_letter(r) for r in conn.execute(query)]


def get_letters(engine: Engine, ids: Sequence[int]) -> list[Letter]:
    with engine.connect() as conn:
        rows = conn.execute(select(dead_letters).where(dead_letters.c.id.in_(list(ids))).order_by(dead_letters.c.id))
        letters = [_letter(r) for r in rows]
    missing = set(ids) - {letter.id for letter in letters}
    if missing:
        raise LedgerError(f"no dead letter with id {', '.join(map(str, sorted(missing)))}")
    return letters
