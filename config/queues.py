"""Queue names and task routes, declared here and never at call sites."""

from kombu import Queue

EMBED_QUEUE = "embed"
COLLECT_QUEUE = "collect"
DEAD_LETTER_QUEUE = "dead_letter"
# Search queries, answered by a worker that holds the model: a queue of their own, so a
# query never waits behind a bulk job's chunks.
QUERY_QUEUE = "query"

ENCODE_TASK = "embed.encode_chunk"
COLLECT_TASK = "embed.collect_chunk"
DEAD_LETTER_TASK = "embed.dead_letter"
RECONCILE_TASK = "embed.reconcile"
REINDEX_TASK = "embed.reindex"
INDEX_TASK = "embed.build_index"
QUERY_TASK = "embed.encode_query"

QUEUES = (Queue(EMBED_QUEUE), Queue(COLLECT_QUEUE), Queue(DEAD_LETTER_QUEUE), Queue(QUERY_QUEUE))

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
