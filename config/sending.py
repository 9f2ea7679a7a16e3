"""Sending a chunk to the encode workers by task name: what producers send and what workers
and the waiting producer re-send, so it lives below both."""

from __future__ import annotations

from collections.abc import Callable

import msgpack
from celery import Celery

from .messages import ChunkTexts
from .queues import ENCODE_TASK

Sender = Callable[[ChunkTexts], None]
# A chunk as the ledger keeps it: its message, msgpack-packed.
PayloadSender = Callable[[bytes], None]


def celery_sender(app: Celery) -> Sender:
    """Send by task name, so the sender needs no model and no worker code."""

    def send(chunk: ChunkTexts) -> None:
        # kwargsrepr: Flower and logs show job and chunk, never the texts.
        app.send_task(ENCODE_TASK, kwargs={"chunk": chunk.to_wire()}, kwargsrepr=chunk.label())

    return send


def payload_sender(send: Sender) -> PayloadSender:
    """`send` for chunks read back from the ledger (resume, the dead-worker sweep)."""
    return lambda payload: send(ChunkTexts.from_wire(msgpack.unpackb(payload)))
