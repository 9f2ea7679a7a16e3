"""What sends a chunk looks like, to the code that sends them (submit, redrive, the waiting
producer's re-sends): a callable that takes a chunk. The Celery sender that implements it is
fleet/sending.py's; nothing here imports Celery."""

from __future__ import annotations

from collections.abc import Callable

import msgpack

from ..settings import Settings, get_settings
from .messages import ChunkTexts

Sender = Callable[[ChunkTexts], None]
# A chunk as the ledger keeps it: its message, msgpack-packed.
PayloadSender = Callable[[bytes], None]


def time_limit(records: int, settings: Settings | None = None) -> float:
    """Seconds a chunk of this many records may take to encode before its process is killed
    as hung (the halves of a hung chunk get shorter limits, so isolating the record is quick)."""
    return (settings or get_settings()).time_limit(records)


def payload_sender(send: Sender) -> PayloadSender:
    """`send` for chunks read back from the ledger (resume, the dead-worker sweep)."""
    return lambda payload: send(ChunkTexts.from_wire(msgpack.unpackb(payload)))
