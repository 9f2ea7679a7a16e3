"""Queue names and task routes, declared here and never at call sites.

The same queues on both brokers. On Redis they are plain lists. On RabbitMQ (an `amqp://`
URL) they are durable quorum queues, each behind a topic exchange of its own name:

- quorum: replicated, kept across broker restarts, and the queue type RabbitMQ's own docs
  name for data that must not be lost; Celery sees `x-queue-type` (worker_detect_quorum_queues)
  and turns global QoS off, which quorum queues do not support.
- topic exchanges: Celery 5.5+ sends a task with a countdown (our retries' backoff) through
  its native delayed delivery (TTL'd `celery_delayed_*` queues dead-lettering back into the
  task's exchange), which cannot route to a direct exchange. Without it a quorum-queue
  worker would hold a backing-off chunk unacked in its own memory until the countdown ended.
- `x-delivery-limit`: a backstop. The ledger's cap (settings.max_deliveries: split the
  chunk, down to one WorkerCrashed dead letter) is the rule that matters; RabbitMQ counts
  every return of the same message (a killed worker, a dropped connection) and at
  QUORUM_DELIVERY_LIMIT moves it to the `undeliverable` queue instead of looping forever.
  Nothing consumes that queue: its chunks are still open in the ledger, so the reconciler
  re-sends them after lease_seconds, and an operator can read what was there.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

EMBED_QUEUE = "embed"
COLLECT_QUEUE = "collect"
DEAD_LETTER_QUEUE = "dead_letter"
# Search queries, answered by a worker that holds the model: a queue of their own, so a
# query never waits behind a bulk job's chunks.
QUERY_QUEUE = "query"
# RabbitMQ only: where a message past QUORUM_DELIVERY_LIMIT goes. Not the `dead_letter`
# queue (the ledger's notices, which workers consume): a worker must never run these.
UNDELIVERABLE_QUEUE = "undeliverable"

ENCODE_TASK = "embed.encode_chunk"
COLLECT_TASK = "embed.collect_chunk"
DEAD_LETTER_TASK = "embed.dead_letter"
RECONCILE_TASK = "embed.reconcile"
REINDEX_TASK = "embed.reindex"
INDEX_TASK = "embed.build_index"
QUERY_TASK = "embed.encode_query"

TASK_QUEUE_NAMES = (EMBED_QUEUE, COLLECT_QUEUE, DEAD_LETTER_QUEUE, QUERY_QUEUE)
# Redis (and the embedded run's memory broker): plain queues.
QUEUES = tuple(Queue(name) for name in TASK_QUEUE_NAMES)

# Deliveries of one message before RabbitMQ gives up on it. Far above the ledger's cap
# (max_deliveries, 5 by default; a split half starts again at 0 on a new message), because
# RabbitMQ also counts returns of messages a worker had prefetched but never started.
# A fixed number, not one derived from the settings: RabbitMQ refuses to re-declare a queue
# with other arguments (PRECONDITION_FAILED), so every host must declare the same value.
QUORUM_DELIVERY_LIMIT = 20
# The undeliverable queue keeps at most this many messages (the oldest go first): a record
# for an operator, not a store that may grow without bound.
UNDELIVERABLE_MAX_LENGTH = 10_000

UNDELIVERABLE = Queue(
    UNDELIVERABLE_QUEUE, Exchange(UNDELIVERABLE_QUEUE, type="fanout", durable=True), routing_key="",
    durable=True, queue_arguments={"x-queue-type": "quorum", "x-max-length": UNDELIVERABLE_MAX_LENGTH},
)


class QuorumQueue(Queue):
    """A quorum queue that declares its dead-letter exchange and queue with itself, so
    whoever declares a task queue first (a worker at start, a producer at its first send)
    also creates where its spent messages go; RabbitMQ drops them silently otherwise."""

    def declare(self, nowait: bool = False, channel: Any = None) -> Any:
        UNDELIVERABLE.bind(channel or self.channel).declare(nowait=nowait)
        return super().declare(nowait=nowait, channel=channel)


def quorum_arguments() -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": QUORUM_DELIVERY_LIMIT,
        "x-dead-letter-exchange": UNDELIVERABLE_QUEUE,
    }


AMQP_QUEUES = tuple(
    QuorumQueue(name, Exchange(name, type="topic", durable=True), routing_key=name, durable=True,
                queue_arguments=quorum_arguments())
    for name in TASK_QUEUE_NAMES
)


def is_amqp(broker_url: str) -> bool:
    """An AMQP (RabbitMQ) broker URL: amqp, amqps or pyamqp."""
    return broker_url.split("://", 1)[0].lower() in ("amqp", "amqps", "pyamqp")


def task_queues(broker_url: str) -> tuple[Queue, ...]:
    """The declarations for this broker: quorum queues on RabbitMQ, plain ones elsewhere."""
    return AMQP_QUEUES if is_amqp(broker_url) else QUEUES


ROUTES = {
    ENCODE_TASK: {"queue": EMBED_QUEUE},
    COLLECT_TASK: {"queue": COLLECT_QUEUE},
    # A notice per chunk with dead letters, so Flower shows them on their own queue;
    # the dead_letters table holds the records themselves.
    DEAD_LETTER_TASK: {"queue": DEAD_LETTER_QUEUE},
    RECONCILE_TASK: {"queue": COLLECT_QUEUE},
    # Reindexing reads the source and submits chunks: producer work, on the light queue.
    REINDEX_TASK: {"queue": COLLECT_QUEUE},
    # A version's HNSW index, once its bulk load is done: minutes on a large version, so
    # a task of its own (the collector that finished the job sends it), not in a collect.
    INDEX_TASK: {"queue": COLLECT_QUEUE},
    QUERY_TASK: {"queue": QUERY_QUEUE},
}
