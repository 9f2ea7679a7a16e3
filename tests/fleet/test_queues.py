"""Queue names and task routes: the wire contract between producers, encoders and collectors."""

from __future__ import annotations

import time

from embedfleet.cli.fleet import worker
from embedfleet.fleet import queues
from embedfleet.fleet.queues import (
    AMQP_QUEUES,
    COLLECT_QUEUE,
    COLLECT_TASK,
    DEAD_LETTER_QUEUE,
    DEAD_LETTER_TASK,
    EMBED_QUEUE,
    ENCODE_TASK,
    QUEUES,
    QUORUM_DELIVERY_LIMIT,
    RECONCILE_TASK,
    REINDEX_TASK,
    ROUTES,
    TASK_QUEUE_NAMES,
    UNDELIVERABLE,
    UNDELIVERABLE_QUEUE,
    is_amqp,
    task_queues,
)
from embedfleet.settings import Settings


def test_names_are_the_wire_contract() -> None:
    """Task and queue names are what queued messages and running workers of other versions
    carry: renaming one strands every message already on the broker."""
    assert (EMBED_QUEUE, COLLECT_QUEUE, DEAD_LETTER_QUEUE) == ("embed", "collect", "dead_letter")
    assert (ENCODE_TASK, COLLECT_TASK, DEAD_LETTER_TASK, RECONCILE_TASK, REINDEX_TASK) == (
        "embed.encode_chunk", "embed.collect_chunk", "embed.dead_letter", "embed.reconcile", "embed.reindex")


def test_every_task_is_routed_to_a_declared_queue() -> None:
    """Each task constant has a route, and every routed queue is one the workers declare."""
    tasks = {value for name, value in vars(queues).items() if name.endswith("_TASK")}
    assert set(ROUTES) == tasks
    declared = {q.name for q in QUEUES}
    assert {route["queue"] for route in ROUTES.values()} <= declared
    assert len(declared) == len(QUEUES)


def test_only_encoding_goes_to_the_model_queue() -> None:
    """Encode workers (-Q embed) hold the model; everything else (collecting, reconciling,
    reindexing) runs on the light collect queue, so a collector-only worker serves it and a
    slow model never delays a collect."""
    assert [task for task, route in ROUTES.items() if route["queue"] == EMBED_QUEUE] == [ENCODE_TASK]
    for task in (COLLECT_TASK, RECONCILE_TASK, REINDEX_TASK):
        assert ROUTES[task]["queue"] == COLLECT_QUEUE
    assert ROUTES[DEAD_LETTER_TASK]["queue"] == DEAD_LETTER_QUEUE


def test_rabbitmq_gets_the_same_queues_as_durable_quorum_queues() -> None:
    """amqp:// URLs get quorum queues of the same names (one chunk survives a broker restart,
    global QoS off); every other broker keeps the plain declarations, unchanged."""
    assert [q.name for q in AMQP_QUEUES] == [q.name for q in QUEUES] == list(TASK_QUEUE_NAMES)
    for url in ("amqp://guest:guest@rabbit:5672/fleet", "amqps://rabbit//", "pyamqp://rabbit"):
        assert task_queues(url) is AMQP_QUEUES and is_amqp(url)
    for url in ("redis://127.0.0.1:6379/0", "rediss://r:6380/1", "memory://localhost/"):
        assert task_queues(url) is QUEUES and not is_amqp(url)
    for queue in AMQP_QUEUES:
        assert queue.durable and queue.queue_arguments["x-queue-type"] == "quorum"
    for queue in QUEUES:
        assert not queue.queue_arguments


def test_rabbitmq_queues_sit_behind_topic_exchanges() -> None:
    """Celery's native delayed delivery (how a retry's countdown waits on quorum queues)
    cannot route to a direct exchange: each queue has a topic exchange of its own name, and
    the routing key Celery computes for our shortest backoff is one kombu accepts."""
    from kombu.transport.native_delayed_delivery import calculate_routing_key

    from embedfleet.chunks.deliveries import model_backoff

    for queue in AMQP_QUEUES:
        assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == (queue.name, "topic", queue.name)
        assert queue.exchange.durable
    assert calculate_routing_key(int(model_backoff(1)), EMBED_QUEUE).endswith(".embed")


def test_delivery_limit_is_a_backstop_above_the_ledgers_cap() -> None:
    """RabbitMQ's x-delivery-limit sits well above the ledger's own cap (max_deliveries, then a
    split), so the ledger always decides first; past it a message goes to the undeliverable
    queue, never to one a worker consumes."""
    settings = Settings()
    assert 4 * settings.max_deliveries <= QUORUM_DELIVERY_LIMIT
    for queue in AMQP_QUEUES:
        assert queue.queue_arguments["x-delivery-limit"] == QUORUM_DELIVERY_LIMIT
        assert queue.queue_arguments["x-dead-letter-exchange"] == UNDELIVERABLE.exchange.name
    assert UNDELIVERABLE.exchange.type == "fanout" and UNDELIVERABLE.queue_arguments["x-queue-type"] == "quorum"
    assert UNDELIVERABLE_QUEUE not in TASK_QUEUE_NAMES and UNDELIVERABLE_QUEUE != DEAD_LETTER_QUEUE
    worker_queues = {p.name: p for p in worker.params}["queues"].default
    assert UNDELIVERABLE_QUEUE not in worker_queues.split(",")


def test_on_rabbitmq_a_message_past_the_limit_goes_to_undeliverable(amqp_url: str) -> None:
    """On a real RabbitMQ: declaring a task queue (as a worker or a producer's first send does)
    also creates the undeliverable exchange and queue, and a message returned to `embed`
    QUORUM_DELIVERY_LIMIT times more lands there instead of looping forever."""
    from kombu import Connection, Exchange, Producer

    embed = AMQP_QUEUES[0]
    with Connection(amqp_url) as conn:
        channel = conn.channel()
        embed.bind(channel).declare()
        Producer(channel, exchange=Exchange(EMBED_QUEUE, type="topic")).publish(
            b"spent", routing_key=EMBED_QUEUE, content_type="application/octet-stream", content_encoding="binary")
        returned = 0
        deadline = time.monotonic() + 30
        while (spent := UNDELIVERABLE.bind(channel).get(no_ack=True)) is None:
            assert time.monotonic() < deadline, f"nothing reached the undeliverable queue ({returned} returns)"
            message = embed.bind(channel).get(no_ack=False)
            if message is None:
                time.sleep(0.05)
                continue
            message.reject(requeue=True)
            returned += 1
        assert returned == QUORUM_DELIVERY_LIMIT + 1
        assert spent.body == b"spent"
