"""The node's pool watchdog: notices a worker node whose pool stopped taking its chunks, and
restarts the node.

Celery's prefork pool hands each received task to an idle pool process over a pipe. After a
pool process is killed (the OOM killer's kill -9), the pool forks a replacement; rarely, the
replacement comes up and is never given the task the node received meanwhile (fd-reuse races
in Celery's AsynPool, celery/celery#4185 and its kin). The node keeps beating and holds the
chunk's message unacknowledged, with its one prefetch slot used, so nothing re-sends the chunk
and the node takes no other: the job stalls for good. Seen here about once in 80 kills of a
pool process (tests/fleet/test_liveness.py).

The check runs every few seconds in the node's event loop (the consumer's timer), so it reads
the pool's state while nothing else changes it: a received task not yet taken by any pool
process, while a pool process is up and idle, for `pool_stall_seconds` in a row, means the
pool lost the task. The node then logs why and shuts down warm (its unfinished messages go back
to the broker at once), and `embedfleet worker` starts it again in the same process
(exec): the chunk is taken again, by this node or another, within seconds of the restart.

Only fleet nodes (`embedfleet worker`, prefork) are watched: the embedded run's worker has no
pool of processes.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from celery.signals import worker_ready
from celery.worker import state

from ..settings import get_settings
from . import heartbeat

log = logging.getLogger(__name__)

# Set when the watchdog stopped this node: `embedfleet worker` then starts it again.
_restart_requested = False


def restart_requested() -> bool:
    return _restart_requested


@dataclass(frozen=True)
class PoolView:
    """What the check needs of the pool, read in the event loop."""

    waiting: int  # received tasks no pool process has taken yet
    idle_up: int  # pool processes that are up (reported ready) and run no task


def view_pool(pool: Any) -> PoolView | None:
    """The prefork pool's state, or None for a pool without processes (solo, threads) or a
    Celery whose pool internals differ from the ones this reads."""
    try:
        processes = list(pool._pool)
        starting = set(pool._waiting_to_start)
    except AttributeError:
        return None
    # A request stays in reserved_requests until it is done; taken by a process, it has a
    # start time. A rejected one (its process died) is acknowledged and waits for nothing.
    waiting = sum(1 for r in list(state.reserved_requests) if r.time_start is None and not r.acknowledged)
    busy = {r.worker_pid for r in list(state.active_requests)}
    idle_up = sum(1 for p in processes if p not in starting and p._is_alive() and p.pid not in busy)
    return PoolView(waiting=waiting, idle_up=idle_up)


class PoolWatchdog:
    """Counts how long the pool has held a waiting task while a process idles."""

    def __init__(self, stall_seconds: float, clock: Any = time.monotonic) -> None:
        self.stall_seconds = stall_seconds
        self.clock = clock
        self.stalled_since: float | None = None

    def stalled(self, view: PoolView | None) -> bool:
        """True once the pool has been stuck for stall_seconds in a row."""
        if view is None or view.waiting == 0 or view.idle_up == 0:
            self.stalled_since = None
            return False
        now = self.clock()
        if self.stalled_since is None:
            self.stalled_since = now
        return now - self.stalled_since >= self.stall_seconds


def _restart_node(view: PoolView, stall_seconds: float) -> None:
    global _restart_requested
    if _restart_requested:
        return
    _restart_requested = True
    log.critical(
        "the worker pool has left %d received chunk task(s) untaken for %.0f s while %d pool process(es) "
        "idle (a Celery prefork pool fault after a pool process died): restarting this worker; its "
        "unfinished chunks go back to the broker", view.waiting, stall_seconds, view.idle_up,
    )
    # Warm shutdown: the other processes finish their chunks, unacknowledged messages return.
    os.kill(os.getpid(), signal.SIGTERM)


@worker_ready.connect(weak=False)
def _watch(sender: Any = None, **_: Any) -> None:
    # sender: the worker's consumer. Fleet nodes only (the heartbeat gives them an incarnation).
    if heartbeat.INCARNATION is None or sender is None:
        return
    stall_seconds = get_settings().pool_stall_seconds
    if stall_seconds <= 0:
        return
    watchdog = PoolWatchdog(stall_seconds)
    pool = getattr(sender.pool, "_pool", None)
    if view_pool(pool) is None:
        log.info("no pool processes to watch (pool %s)", type(sender.pool).__name__)
        return

    def check() -> None:
        view = view_pool(pool)
        if watchdog.stalled(view) and view is not None:
            _restart_node(view, stall_seconds)

    sender.timer.call_repeatedly(min(5.0, stall_seconds / 3), check)
