"""Where a chunk's vectors are stored: by the process that encoded them, or by a collect task.

A worker that consumes the collect queue (every worker does, by default) stores the chunk it
has just encoded itself, with the collector's own transaction (chunks/collect.py:
store_chunk). Sent to the collect queue, the same vectors would come back to a worker of the
same kind: one more message through the broker and through the node's pool, its base64 and
JSON envelope, its ack and its task events. On a no-op fleet that was half the CPU of each
node (docs/benchmarks.md). Whenever the store here is not the plain case, the vectors go to
the collect queue as before, and the collect task's rules apply: its retries, its waits for
a repeated text's first record and its cap on collects that kill their process.
"""

from __future__ import annotations

from collections.abc import Collection

from .queues import COLLECT_QUEUE


def collects_here(enabled: bool, consumed: Collection[str], crashes: int, elapsed: float,
                  time_limit: float | None) -> bool:
    """Whether the encode task stores its own chunk.

    - enabled: settings.collect_in_place.
    - consumed: the queues this worker consumes. A worker left out of the collect queue (a GPU
      node started with `-Q embed`, beside collector nodes) leaves storing to the collectors.
    - crashes: earlier deliveries of this chunk that died with their process, perhaps in this
      very store (an OOM in the upsert): the collect task counts collects that kill their
      process and caps them, so a chunk that has lost a process is collected there.
    - elapsed, time_limit: the store runs inside the encode's hard time limit. With less than
      half of it left, a store slowed by the database would be killed as a hung encode and
      the chunk halved for nothing; the collect task has no such limit.
    """
    if not enabled or COLLECT_QUEUE not in consumed or crashes:
        return False
    return time_limit is None or elapsed <= time_limit / 2


def store_lock_timeout(elapsed: float, time_limit: float | None) -> float | None:
    """Seconds a statement of the store here may wait for a lock: a quarter of the time left
    in the delivery's hard limit, so a store held up by the database (a lock held for minutes)
    fails and goes to the collect queue instead of being killed as a hung encode. None: no
    limit to keep inside (the embedded run)."""
    return None if time_limit is None else (time_limit - elapsed) / 4
