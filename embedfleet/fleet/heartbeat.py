"""A fleet worker node's heartbeat: a daemon thread in the node's main (consumer) process that
beats every heartbeat_seconds, marks the chunks the node receives as held by it, and sweeps
for chunks held by dead nodes (chunks/liveness.py).

The thread lives in the main process, not in the pool processes: a pool process may be busy
in the model for seconds, and a killed pool process is replaced by the node, which keeps
beating and gets the chunk back from Celery (task_reject_on_worker_lost). When the main
process dies, the beats stop and the chunks whose messages it held unacknowledged (encode or
collect) are re-sent; a pool process it orphaned may still finish its chunk, and then the
re-sent message is skipped as done.

Only `celery worker` nodes (`embedfleet worker`) beat: celeryd_init is sent by the worker
program, not by the embedded run's in-process worker, whose chunks die with its process.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from typing import Any

from celery.signals import celeryd_init, task_received, worker_shutdown

from ..chunks.liveness import beat, hold, retire
from ..chunks.resend import reconcile, resend_running, resend_stranded
from ..chunks.sending import payload_sender
from ..settings import get_settings
from ..store.engine import fork_guard, get_engine
from .broker_epoch import BrokerEpoch, redis_client
from .celery_app import app
from .queues import COLLECT_TASK, ENCODE_TASK
from .sending import QUICK_RETRY_POLICY, celery_sender

log = logging.getLogger(__name__)

# This node's incarnation: set in the main process at start, inherited by its pool processes
# (fork), which write it as the holder of the chunk they start. None outside a fleet worker.
INCARNATION: str | None = None


def consumed_queues() -> str | None:
    """The queues this node consumes, comma-separated, for its heartbeat row (None while the
    consumer has not said yet: the row keeps what it had)."""
    try:
        queues = app.amqp.queues.consume_from or app.amqp.queues
        return ",".join(sorted(queues)) or None
    except Exception:  # the app's queues not set up yet
        return None


class Heartbeat(threading.Thread):
    def __init__(self, name: str) -> None:
        super().__init__(name="embedfleet-heartbeat", daemon=True)
        settings = get_settings()
        self.node = name
        self.incarnation = uuid.uuid4().hex
        self.interval = settings.heartbeat_seconds
        self.dead_after = settings.dead_after_seconds
        self.lease = settings.lease_seconds
        self.reconcile_every = settings.reconcile_every_seconds
        self.database_url = settings.database_url
        # Quick sends: a sweep that finds the broker gone tries again at the next beat, and a
        # minute-long send here would stop this node's beats and make the fleet think it dead.
        self.send = payload_sender(celery_sender(app, QUICK_RETRY_POLICY))
        self.epoch = BrokerEpoch()
        self._broker: Any = None  # the broker's Redis client, made on first use (False: not Redis)
        self._received: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # Not `_stop`: threading.Thread has a method of that name, which fork calls.
        self._stopping = threading.Event()

    @property
    def engine(self):  # type: ignore[no-untyped-def]
        # Looked up each time: a database unreachable at start (or racing another worker to
        # create the schema) is simply retried at the next beat.
        return get_engine(self.database_url)

    def beat(self) -> bool:
        try:
            beat(self.engine, self.incarnation, self.node, socket.gethostname(), os.getpid(), self.dead_after,
                 consumed_queues())
            return True
        except Exception as exc:  # the database may be down: the node keeps working, and does not judge
            log.warning("heartbeat of %s failed: %s: %s", self.node, type(exc).__name__, exc)
            return False

    def received(self, job_id: str, seq: int) -> None:
        """Called in the consumer's loop: hand the write to the thread, never block the loop."""
        with self._lock:
            self._received.append((job_id, seq))
        self._wake.set()

    def _hold_received(self) -> None:
        with self._lock:
            keys, self._received = self._received, []
        try:
            with fork_guard(self.database_url):  # the pool may fork right now (store/engine.py: ForkGuard)
                hold(self.engine, self.incarnation, keys)
        except Exception as exc:  # the pool process writes the holder again when it starts the chunk
            log.warning("could not mark %d chunks held: %s: %s", len(keys), type(exc).__name__, exc)

    def run(self) -> None:
        next_beat = 0.0
        # Jittered, so the nodes of a fleet do not all reconcile in the same second.
        next_reconcile = time.monotonic() + self.reconcile_every * random.uniform(0.5, 1.5)
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.interval
                with fork_guard(self.database_url):
                    # Only a node that could write its own beat just now judges others.
                    if self.beat():
                        self.check_broker()
                        if now >= next_reconcile:
                            next_reconcile = now + self.reconcile_every * random.uniform(0.8, 1.2)
                            self.reconcile()
                        else:
                            self.sweep()
            self._wake.wait(timeout=max(0.0, next_beat - time.monotonic()))
            self._wake.clear()
            if self._received:
                self._hold_received()

    def check_broker(self) -> None:
        """Re-send the running jobs' open chunks at once when the broker came back empty
        (fleet/broker_epoch.py), rather than a lease later through the reconciler."""
        if self._broker is None:
            self._broker = redis_client(str(app.conf.broker_url)) or False
        if self._broker is False:
            return  # not Redis: RabbitMQ's quorum queues outlive a restart
        try:
            if not self.epoch.lost(self._broker):
                return
        except Exception as exc:  # the broker is away: the next beat looks again
            log.debug("broker epoch not read: %s: %s", type(exc).__name__, exc)
            return
        try:
            resent = resend_running(self.engine, self.send)
        except Exception as exc:
            log.warning("re-sending after the broker came back empty failed: %s: %s", type(exc).__name__, exc)
            return
        log.warning("the broker came back empty (its epoch key changed): re-sent %d open chunks of %d jobs",
                    sum(resent.values()), len(resent))

    def sweep(self) -> None:
        try:
            resend_stranded(self.engine, self.send, self.dead_after, claimant=self.incarnation)
        except Exception as exc:
            log.warning("sweep for stranded chunks failed: %s: %s", type(exc).__name__, exc)

    def reconcile(self) -> None:
        """What beat's reconciler does, so that no job waits on beat: stalled jobs re-sent."""
        try:
            reconcile(self.engine, self.send, self.lease, self.dead_after, claimant=self.incarnation)
        except Exception as exc:
            log.warning("reconcile failed: %s: %s", type(exc).__name__, exc)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self.join(timeout=5)
        try:
            with fork_guard(self.database_url):
                retire(self.engine, self.incarnation)
        except Exception as exc:
            log.warning("could not retire %s: %s", self.node, exc)


_heartbeat: Heartbeat | None = None


@celeryd_init.connect(weak=False)
def _start(sender: str | None = None, **_: Any) -> None:
    """First beat before the node consumes anything, so the chunks it holds always have a row."""
    global _heartbeat, INCARNATION
    _heartbeat = Heartbeat(str(sender or socket.gethostname()))
    INCARNATION = _heartbeat.incarnation
    _heartbeat.beat()
    _heartbeat.start()
    log.info("heartbeat of %s (incarnation %s) every %ss", _heartbeat.node, INCARNATION, _heartbeat.interval)


@task_received.connect(weak=False)
def _received(request: Any = None, **_: Any) -> None:
    # The collect message too: a node killed while it holds a chunk's vectors (unacknowledged
    # until the visibility timeout) strands the chunk just as surely as one killed encoding it.
    if _heartbeat is None or request is None or request.name not in (ENCODE_TASK, COLLECT_TASK):
        return
    chunk = (request.kwargs or {}).get("chunk") or {}
    if "job_id" in chunk and "seq" in chunk:
        _heartbeat.received(chunk["job_id"], int(chunk["seq"]))


@worker_shutdown.connect(weak=False)
def _stop(**_: Any) -> None:
    # Sent in the main process only (pool processes get worker_process_shutdown).
    if _heartbeat is not None:
        _heartbeat.stop()
