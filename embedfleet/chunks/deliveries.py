"""What a chunk becomes when its deliveries do not finish: bounded, whatever the fault.

- Its worker process dies with it (the OOM killer, a crash in native code, a record that
  exits the process): after `max_deliveries` such deliveries the chunk is split in two new
  chunks (chunks/splits.py), and a half after `crash_split_deliveries`, down to the one
  record that kills its process: a `WorkerCrashed` dead letter, the rest stored.
- Its model cannot be loaded on the worker: each delivery counts, it goes back with a
  growing pause (another worker may have the model), and at `max_deliveries` its records
  become `ModelUnavailable` dead letters.
- Its encode runs past its time limit (a record that hangs native code): Celery kills the
  process, and the chunk is halved at once, down to the one record that hangs: a
  `WorkerTimedOut` dead letter (fleet/tasks.py: ChunkTask.on_failure).
- Its collect kills the process (out of memory in the upsert, a driver crash): Celery
  re-queues the collect message; after `max_deliveries` such collects its records become
  `CollectorCrashed` dead letters (fleet/tasks.py: collect_chunk).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import msgpack
from sqlalchemy import Engine

from ..settings import Settings
from .messages import ChunkTexts, DeadRecord
from .splits import NewChunk, is_split_born
from .splits import split_chunk as split_in_ledger

WORKER_CRASHED = "WorkerCrashed"
MODEL_UNAVAILABLE = "ModelUnavailable"
COLLECTOR_CRASHED = "CollectorCrashed"
WORKER_TIMED_OUT = "WorkerTimedOut"


def crash_cap(seq: int, settings: Settings) -> int:
    """Deliveries a chunk may lose to a dying process before it is split."""
    return settings.crash_split_deliveries if is_split_born(seq) else settings.max_deliveries


def crashed_too_often(deliveries: int, retries: int, seq: int, settings: Settings) -> bool:
    """deliveries counts this one; each retry (transient error, model not loaded) ended an
    earlier delivery on purpose. The rest of the earlier deliveries died with their process."""
    return deliveries - 1 - retries >= crash_cap(seq, settings)


def halve(texts: ChunkTexts, first_seq: int, second_seq: int) -> tuple[ChunkTexts, ChunkTexts]:
    """The chunk's encoded records in two halves, in order; the aliases (never encoded, so
    never the crash) ride with the second half."""
    half = len(texts.ids) // 2

    def part(seq: int, lo: int, hi: int | None, aliases: list[list[Any]]) -> ChunkTexts:
        return dataclasses.replace(texts, seq=seq, ids=texts.ids[lo:hi], positions=texts.positions[lo:hi],
                                   texts=texts.texts[lo:hi], hashes=texts.hashes[lo:hi], aliases=aliases,
                                   metadata=None if texts.metadata is None else texts.metadata[lo:hi])

    return part(first_seq, 0, half, []), part(second_seq, half, None, list(texts.aliases))


def split_chunk(engine: Engine, texts: ChunkTexts, holder: str | None) -> tuple[ChunkTexts, ...]:
    """Replace an open chunk by its halves in the ledger (chunks/splits.py); returns the
    halves to send, none when the chunk is no longer open."""
    made: list[ChunkTexts] = []

    def make_halves(first: int, second: int) -> tuple[NewChunk, NewChunk]:
        made.extend(halve(texts, first, second))
        a, b = (NewChunk(h.seq, len(h.ids) + len(h.aliases), msgpack.packb(h.to_wire())) for h in made)
        return a, b

    return tuple(made) if split_in_ledger(engine, texts.job_id, texts.seq, make_halves, holder) else ()


def isolate_crash(engine: Engine, texts: ChunkTexts, deliveries: int,
                  holder: str | None) -> tuple[list[DeadRecord], tuple[ChunkTexts, ...]]:
    """(dead letters, halves to send): the one record left is a WorkerCrashed dead letter
    (its aliases go on to the collector, which finds them a vector or a dead letter);
    a larger chunk is replaced by its halves in the ledger."""
    if len(texts.ids) > 1:
        return [], split_chunk(engine, texts, holder)
    message = (f"its worker process died in {deliveries - 1} deliveries of it alone "
               "(killed by the OOM killer, or a crash in native code)")
    return [DeadRecord(i, p, t, h, WORKER_CRASHED, message)
            for i, p, t, h in zip(texts.ids, texts.positions, texts.texts, texts.hashes, strict=True)], ()


def model_backoff(deliveries: int) -> float:
    """Seconds before a chunk whose model could not be loaded is delivered again: 1, 2, 4, ...
    at most 60, with jitter, so a fleet without the model never spins on it. Never under 1 s:
    on RabbitMQ's quorum queues Celery sends a countdown through native delayed delivery,
    which takes whole seconds and refuses int(countdown) == 0 ("countdown must be a positive
    number"), and the chunk's retry would be rejected instead of sent."""
    return max(1.0, min(60.0, 2.0 ** max(0, deliveries - 1)) * random.uniform(0.8, 1.2))


def repeat_backoff(retries: int) -> float:
    """Seconds before a collect whose repeated texts wait for their first record tries again:
    1, 2, 4, ... at most 60 (never under 1 s, for RabbitMQ's delayed delivery: model_backoff)."""
    return min(60.0, 2.0 ** max(0, retries))


def repeat_wait_retries(settings: Settings) -> int:
    """How many times such a collect tries again before its waiting repeats become
    SourceNotStored dead letters: enough backoff to cover two leases (240 s by default).
    The first record's chunk can be late by that much and still be stored: a dead worker's
    chunk comes back within seconds, a lost one within a lease (the reconciler), and then it
    is encoded. Never fewer than the transient errors' max_retries."""
    retries, waited = 0, 0.0
    while waited < 2 * settings.lease_seconds:
        waited += repeat_backoff(retries)
        retries += 1
    return max(retries, settings.max_retries)

