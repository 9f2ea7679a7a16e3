"""Sending a chunk by task name: the per-message time limit from settings, the routing, the
ledger payload sender. A real Celery app on kombu's in-memory transport (no Redis needed)."""

from __future__ import annotations

from collections.abc import Iterator

import msgpack
import pytest
from celery import Celery

from embedfleet.chunks.messages import ChunkTexts
from embedfleet.chunks.sending import payload_sender, time_limit
from embedfleet.fleet.celeryconfig import celery_config
from embedfleet.fleet.queues import EMBED_QUEUE, ENCODE_TASK
from embedfleet.fleet.sending import celery_sender
from embedfleet.settings import Settings, set_settings

SECRET = "TOP-SECRET-CORPUS-TEXT"


def chunk(n: int = 3, seq: int = 5) -> ChunkTexts:
    ids = [f"r{i}" for i in range(n)]
    return ChunkTexts("job1", seq, "c1", "m", ids, list(range(n)), [f"{SECRET} {i}" for i in range(n)],
                      [f"h{i}" for i in range(n)])


@pytest.fixture
def memory_app() -> Iterator[Celery]:
    """The production Celery settings on kombu's in-process broker."""
    app = Celery("test-sending")
    app.conf.update(celery_config(Settings(broker_url="memory://")))
    yield app
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(EMBED_QUEUE)
    app.close()


def received(app: Celery):
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(EMBED_QUEUE, accept=["msgpack"])
        try:
            message = queue.get(timeout=5)
            message.ack()
            return message
        finally:
            queue.close()


def test_time_limit_grows_with_the_chunk_from_settings() -> None:
    """chunk_time_limit + chunk_time_per_record x records, read from the current settings."""
    set_settings(Settings(chunk_time_limit=10.0, chunk_time_per_record=0.5))
    assert time_limit(0) == 10.0
    assert time_limit(4) == 12.0
    set_settings(Settings())
    assert time_limit(256) == 180.0 + 256 * 1.0


def test_halves_get_shorter_limits() -> None:
    """A half of a hung chunk gets a shorter limit than the chunk, so isolating the record is quick."""
    assert time_limit(128) < time_limit(256)
    assert time_limit(1) < time_limit(2)


def test_celery_sender_routes_to_the_embed_queue_with_a_hard_limit(memory_app: Celery) -> None:
    """The message goes to the embed queue as embed.encode_chunk, msgpack-encoded, with the chunk's
    wire form as its kwargs and a hard time limit from the number of records."""
    set_settings(Settings(chunk_time_limit=30.0, chunk_time_per_record=2.0))
    sent = chunk(n=3)
    celery_sender(memory_app)(sent)
    message = received(memory_app)
    assert message.content_type == "application/x-msgpack"
    assert message.delivery_info["routing_key"] == EMBED_QUEUE
    assert message.headers["task"] == ENCODE_TASK
    assert message.headers["timelimit"][0] == 36.0
    _args, kwargs, _embed = message.payload
    assert ChunkTexts.from_wire(kwargs["chunk"]) == sent


def test_logs_and_flower_never_see_the_texts(memory_app: Celery) -> None:
    """The message's kwargsrepr (what Flower and the worker log show) names the chunk, not its texts."""
    celery_sender(memory_app)(chunk())
    headers = received(memory_app).headers
    assert SECRET not in headers["kwargsrepr"] and "job1" in headers["kwargsrepr"]
    assert SECRET not in headers["argsrepr"]


def test_payload_sender_decodes_ledger_payloads() -> None:
    """A ledger payload (msgpack of to_wire) reaches the sender as the same ChunkTexts."""
    got: list[ChunkTexts] = []
    original = chunk(seq=-4)
    payload_sender(got.append)(msgpack.packb(original.to_wire()))
    assert got == [original]


def test_payload_sender_refuses_a_payload_that_is_not_a_chunk() -> None:
    """A corrupt payload fails loudly instead of sending something half-made."""
    got: list[ChunkTexts] = []
    with pytest.raises(TypeError):
        payload_sender(got.append)(msgpack.packb({"not": "a chunk"}))
    assert got == []
