"""Telling that the broker lost what it held, so its chunks are sent again at once.

A Redis restarted with nothing on disk (or flushed) comes back empty: the chunks it held are
gone, and the ledger's reconciler would only notice after a lease (120 s) of no progress.
Every worker's heartbeat reads one key of the broker's, the epoch, at each beat (setting it,
once, where it is missing). When the value a node has seen changes, the broker is not the
one it was: the first node to claim the new epoch re-sends the open chunks of every running
job (chunks still queued elsewhere are stored once: the upserts are idempotent), seconds
after the workers reconnect. RabbitMQ's quorum queues are durable, so only Redis is watched.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

log = logging.getLogger(__name__)

EPOCH_KEY = "embedfleet:broker-epoch"
# A claim per epoch, so one node re-sends; kept an hour, long past every node's next beat.
CLAIM_SECONDS = 3600


class BrokerEpoch:
    """The epoch this node has seen; `lost(client)` is True once, on the one node that claims
    a new epoch after a change."""

    def __init__(self) -> None:
        self.seen: bytes | None = None

    def lost(self, client: Any) -> bool:
        current = client.get(EPOCH_KEY)
        if current is None:
            client.set(EPOCH_KEY, uuid.uuid4().hex, nx=True)  # one value wins, every node reads it
            current = client.get(EPOCH_KEY)
        if self.seen is None or current == self.seen:
            self.seen = current
            return False
        self.seen = current
        return bool(client.set(f"{EPOCH_KEY}:claimed:{current.decode()}", "1", nx=True, ex=CLAIM_SECONDS))


def redis_client(broker_url: str) -> Any | None:
    """A client of the broker's Redis with short timeouts (a heartbeat must never hang on
    it: a node whose beats stop looks dead to the others), or None for another broker."""
    if not broker_url.startswith(("redis://", "rediss://")):
        return None
    import redis

    return redis.Redis.from_url(broker_url, socket_connect_timeout=2, socket_timeout=2)
