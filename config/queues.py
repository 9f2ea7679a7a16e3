"""Queue names and task routes, declared here and never at call sites."""

from kombu import Queue

EMBED_QUEUE = "embed"
COLLECT_QUEUE = "collect"
DEAD_LETTER_QUEUE = "dead_letter"

ENCODE_TASK = "embed.encode_chunk"
COLLECT_TASK = "embed.collect_chunk"

QUEUES = (Queue(EMBED_QUEUE), Queue(COLLECT_QUEUE), Queue(DEAD_LETTER_QUEUE))

ROUTES = {
    ENCODE_TASK: {"queue": EMBED_QUEUE},
    COLLECT_TASK: {"queue": COLLECT_QUEUE},
}
