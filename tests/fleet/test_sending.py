"""The fleet's sender: the broker is checked before anything is written, an unreachable one is a
quick, clear BrokerUnavailable, and the Celery app follows a changed broker URL."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from celery import Celery

from embedfleet.chunks.messages import ChunkTexts
from embedfleet.fleet.celery_app import app
from embedfleet.fleet.queues import EMBED_QUEUE
from embedfleet.fleet.sending import BROKER_CONNECT_TIMEOUT, BrokerUnavailable, fleet_sender, use_broker
from embedfleet.settings import Settings

CLOSED = "redis://127.0.0.1:1/0"


@pytest.fixture
def global_app_broker() -> Iterator[None]:
    """fleet_sender points the process's app at a broker: put the original back afterwards."""
    original = app.conf.broker_url
    yield
    use_broker(app, original)


@pytest.mark.usefixtures("global_app_broker")
def test_an_unreachable_broker_fails_fast_and_clearly() -> None:
    """A closed port: BrokerUnavailable within the connect timeout, naming the broker and the
    driver's reason on one line."""
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as caught:
        fleet_sender(Settings(broker_url=CLOSED))
    assert time.monotonic() - started < 2 * BROKER_CONNECT_TIMEOUT
    message = str(caught.value)
    assert message.startswith(f"broker unreachable at {CLOSED}: ")
    assert "refused" in message.lower() and "\n" not in message and "Traceback" not in message


@pytest.mark.usefixtures("global_app_broker")
def test_the_broker_password_is_never_shown() -> None:
    """The message redacts the password of the broker URL, in the URL and in the reason."""
    with pytest.raises(BrokerUnavailable) as caught:
        fleet_sender(Settings(broker_url="redis://:s3cret-pw@127.0.0.1:1/0"))
    assert "s3cret-pw" not in str(caught.value)
    assert "redis://:***@127.0.0.1:1/0" in str(caught.value)


@pytest.mark.usefixtures("global_app_broker")
def test_a_reachable_broker_gives_a_sender_that_puts_chunks_on_it() -> None:
    """On a broker that answers (kombu's in-memory one here), the sender sends chunks to the embed queue."""
    send = fleet_sender(Settings(broker_url="memory://"))
    chunk = ChunkTexts("j", 0, "c", "m", ["a"], [0], ["text"], ["h"])
    send(chunk)
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(EMBED_QUEUE, accept=["msgpack"])
        try:
            message = queue.get(timeout=5)
            message.ack()
        finally:
            queue.close()
    assert ChunkTexts.from_wire(message.payload[1]["chunk"]) == chunk


def _pool_uri(celery: Celery) -> str:
    """host:port/db of a connection from the app's pool (lazy: nothing connects)."""
    conn = celery.pool.acquire()
    try:
        return f"{conn.hostname}:{conn.port}/{conn.virtual_host}"
    finally:
        conn.release()


def test_use_broker_drops_the_pools_of_the_old_url() -> None:
    """After a URL change the app's connection pool and its producer pool are for the new URL,
    so messages never go on to the old broker; the same URL again keeps the pools."""
    other = Celery("test-use-broker")
    other.conf.broker_url = "redis://127.0.0.1:1/4"
    assert _pool_uri(other) == "127.0.0.1:1/4"
    producers = other.amqp.producer_pool
    use_broker(other, "redis://127.0.0.1:1/5")
    assert other.conf.broker_url == "redis://127.0.0.1:1/5"
    assert _pool_uri(other) == "127.0.0.1:1/5"
    assert other.amqp.producer_pool is not producers
    assert other.amqp.producer_pool.connections is other.pool
    pool = other.pool
    use_broker(other, "redis://127.0.0.1:1/5")
    assert other.pool is pool
    other.close()
