"""Sending a chunk to the encode workers by task name: what producers send and what workers
and the waiting producer re-send, so it lives below both."""

from __future__ import annotations

from collections.abc import Callable

import msgpack
from celery import Celery

from .messages import ChunkTexts
from .queues import ENCODE_TASK
from .settings import Settings, get_settings

Sender = Callable[[ChunkTexts], None]
# A chunk as the ledger keeps it: its message, msgpack-packed.
PayloadSender = Callable[[bytes], None]


def time_limit(records: int, settings: Settings | None = None) -> float:
    """Seconds a chunk of this many records may take to encode before its process is killed
    as hung (the halves of a hung chunk get shorter limits, so isolating the record is quick)."""
    settings = settings or get_settings()
    return settings.chunk_time_limit + settings.chunk_time_per_record * records


# Celery's own publish retry policy: three quick tries. For a sender that runs again soon
# anyway (the heartbeat's sweep, every beat) and must not stall what else its thread does.
QUICK_RETRY_POLICY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def celery_sender(app: Celery, retry_policy: dict[str, float] | None = None) -> Sender:
    """Send by task name, so the sender needs no model and no worker code. retry_policy:
    how long a send waits for a broker that went away; None means the app's
    task_publish_retry_policy (about a minute, config/celeryconfig.py)."""

    def send(chunk: ChunkTexts) -> None:
        # kwargsrepr: Flower and logs show job and chunk, never the texts. time_limit: a
        # per-message hard limit (the prefork pool kills the process; the solo pool of the
        # embedded run ignores it).
        app.send_task(ENCODE_TASK, kwargs={"chunk": chunk.to_wire()}, kwargsrepr=chunk.label(),
                      time_limit=time_limit(len(chunk.ids)), retry_policy=retry_policy)

    return send


def payload_sender(send: Sender) -> PayloadSender:
    """`send` for chunks read back from the ledger (resume, the dead-worker sweep)."""
    return lambda payload: send(ChunkTexts.from_wire(msgpack.unpackb(payload)))
