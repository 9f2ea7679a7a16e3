"""Queue names and task routes: the wire contract between producers, encoders and collectors."""

from __future__ import annotations

from embedfleet.config import queues
from embedfleet.config.queues import (
    COLLECT_QUEUE,
    COLLECT_TASK,
    DEAD_LETTER_QUEUE,
    DEAD_LETTER_TASK,
    EMBED_QUEUE,
    ENCODE_TASK,
    QUEUES,
    RECONCILE_TASK,
    REINDEX_TASK,
    ROUTES,
)


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
