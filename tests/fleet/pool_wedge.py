"""Loaded into a test worker with `-I tests.fleet.pool_wedge` (Celery imports it in the node's
main process): reproduces the prefork pool fault the watchdog exists for (embedfleet/fleet/watchdog.py).

The first replacement pool process (the one forked after a pool process died) comes up, and
the pool never hands it a task: its input pipe is left out of the pool's writable set, as in
Celery's fd-reuse races (celery/celery#4185). The process is up and idle, the received chunk
waits for ever. Once per test: a marker file under EMBEDFLEET_TEST_STATE_DIR says it was done,
so the node the watchdog starts again serves normally.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery.concurrency.asynpool import WORKER_UP
from celery.signals import worker_ready


@worker_ready.connect(weak=False)
def _wedge_first_replacement(sender: Any = None, **_: Any) -> None:
    marker = Path(os.environ["EMBEDFLEET_TEST_STATE_DIR"]) / "pool-wedged"
    if marker.exists():
        return
    pool = sender.pool._pool
    originals = {p.pid for p in pool._pool}
    handlers = pool._result_handler.state_handlers
    on_process_alive = handlers[WORKER_UP]

    def wedged(pid: int) -> None:
        on_process_alive(pid)
        if pid not in originals and not marker.exists():
            marker.write_text(str(pid))
            proc = next(p for p in pool._pool if p.pid == pid)
            pool._all_inqueues.discard(proc.inqW_fd)

    handlers[WORKER_UP] = wedged
