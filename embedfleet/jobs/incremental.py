"""Change detection for a job: embed only what is new or changed, embed each repeated text
once, and (with --sync full) delete what the source no longer holds."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import Engine

from ..corpus.records import Record
from ..corpus.validation import Scan, text_hash64
from ..store.vectors import delete_ids, holds_any, iter_ids, move_positions, stored_state

LOOKUP_BATCH = 512


@dataclass
class Changes:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    deduplicated: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def detect_changes(engine: Engine, version_key: str, records: Iterable[Record], scan: Scan,
                   changes: Changes) -> Iterator[Record]:
    """The records to send: new ids and changed texts, in order. Unchanged records (same
    text, same version, so same model) are counted and dropped; a text seen earlier in the
    job comes back flagged as an alias, to be stored without being encoded again.

    A version that stores nothing yet (a first load, a migration) is not asked about each
    batch: every record is added. Besides the queries it saves, that matters on PostgreSQL,
    where a table filling faster than autovacuum analyzes it gets `record_id IN (...)`
    planned as a scan of the whole version (85 ms a batch at 100,000 rows, and growing).
    A row another job stores meanwhile is rewritten, as if that job had been the slower."""
    seen_texts: set[str] = set()
    iterator = iter(records)
    first_load = not holds_any(engine, version_key)
    while batch := list(itertools.islice(iterator, LOOKUP_BATCH)):
        stored = {} if first_load else stored_state(engine, version_key, (r.record_id for r in batch))
        moves = []
        for record in batch:
            repeated = bool(scan.repeated_texts) and text_hash64(record.content_hash) in scan.repeated_texts
            stored_hash, stored_position = stored.get(record.record_id, (None, None))
            if stored_hash == record.content_hash:
                changes.unchanged += 1
                if stored_position != record.position:
                    moves.append((record.record_id, record.position))
                if repeated:
                    seen_texts.add(record.content_hash)  # later repeats copy the stored vector
                continue
            if record.record_id in stored:
                changes.updated += 1
            else:
                changes.added += 1
                # Set in place, not dataclasses.replace: a copy per record would cost the
                # producer several percent of its CPU on a first load. The record is this
                # generator's own until it is yielded.
                object.__setattr__(record, "new", True)
            if repeated and record.content_hash in seen_texts:
                changes.deduplicated += 1
                yield dataclasses.replace(record, alias=True)
                continue
            if repeated:
                seen_texts.add(record.content_hash)
            yield record
        move_positions(engine, version_key, moves)


def sweep_deleted(engine: Engine, version_key: str, scan: Scan) -> int:
    """Delete the version's rows whose ids the source no longer holds (like LangChain's
    "full" cleanup). Ids are compared by 64-bit hash, so memory is 8 bytes per source id."""
    deleted = 0
    for ids in iter_ids(engine, version_key):
        gone = [record_id for record_id, kept in zip(ids, scan.has_id(ids), strict=True) if not kept]
        deleted += delete_ids(engine, version_key, gone)
    return deleted
