"""Celery settings. Every one that is not a default says why it is set."""

from __future__ import annotations

from typing import Any

from .queues import EMBED_QUEUE, QUEUES, ROUTES
from .settings import Settings

WORKER_LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"
WORKER_TASK_LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        # No pickle anywhere on the wire: msgpack carries vectors as raw float32 bytes,
        # json is accepted for events and hand-written messages.
        "task_serializer": "msgpack",
        "result_serializer": "msgpack",
        "accept_content": ["msgpack", "json"],
        # Results go to SQL through the collector, never through a result backend.
        "task_ignore_result": True,
        "result_backend": None,
        # Ack after the task ran, and re-queue a task whose worker died mid-chunk:
        # at-least-once delivery, made harmless by idempotent upserts.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Each process holds one chunk at a time, so a dead worker strands one chunk only
        # and a slow worker does not hoard work.
        "worker_prefetch_multiplier": 1,
        # Redis re-delivers an unacked message (its worker died) after visibility_timeout;
        # settings.visibility_timeout says in one place why it must outlast the slowest
        # chunk. Workers sweep for such messages every restore interval: a tenth of the
        # timeout, at most 10 s, so a lost chunk waits little longer than the timeout.
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 10)),
            "unacked_restore_throttle": 1,
        },
        # A pool process replacing a dead one (the OOM killer's kill -9) loads the model in
        # worker_process_init before it reports up. Celery kills a child that is not up after
        # worker_proc_alive_timeout (4 s): a 6-20 s model load then loops forever and the
        # worker never serves again. Measured on 2 busy cores: a replacement child loads
        # all-MiniLM-L6-v2 in 3.9-7.5 s (4.2 s for the first); settings.model_load_timeout
        # (120 s) leaves room for large models on slow disks. A child that truly hangs in its
        # load is still killed, two minutes later.
        "worker_proc_alive_timeout": float(settings.model_load_timeout),
        "task_queues": QUEUES,
        "task_routes": ROUTES,
        "task_default_queue": EMBED_QUEUE,
        # Flower shows chunks from queued to done.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "broker_connection_retry_on_startup": True,
        # The model is loaded per process after fork; a hijacked root logger would hide
        # our structured lines, so keep the application's logging.
        "worker_hijack_root_logger": False,
        # Every worker and beat line carries its time, level and process, and our lines their
        # logger (embedfleet.workers.tasks: encoded job=... chunk=...): a log an operator can
        # line up with the ledger. Celery's defaults, plus the logger's name.
        "worker_log_format": WORKER_LOG_FORMAT,
        "worker_task_log_format": WORKER_TASK_LOG_FORMAT,
    }
