"""Celery settings. Every one that is not a default says why it is set."""

from __future__ import annotations

from typing import Any

from ..settings import Settings
from .queues import EMBED_QUEUE, ROUTES, is_amqp, task_queues

WORKER_LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"
WORKER_TASK_LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"


# Seconds between AMQP heartbeats on a worker's connection (see broker_heartbeat below).
BROKER_HEARTBEAT_SECONDS = 10

# How long a send waits for a broker that went away: sum(min(i, 5) for i in range(15)) = 60 s.
PUBLISH_RETRY_POLICY = {"max_retries": 15, "interval_start": 0, "interval_step": 1, "interval_max": 5}


def broker_config(settings: Settings) -> dict[str, Any]:
    """The settings that follow the broker's kind: its queues' declarations and its
    transport's options. Applied again whenever a process points the app at another broker
    (use_broker_config, below)."""
    url = settings.broker_url
    if is_amqp(url):
        # Publisher confirms: a send returns once RabbitMQ has the message (on a quorum queue:
        # on a majority of its replicas), so a chunk the ledger counts as sent is really
        # queued. Redis answers every write anyway. No visibility timeout: RabbitMQ re-queues
        # a dead consumer's unacked messages when its connection closes.
        options: dict[str, Any] = {"confirm_publish": True}
    else:
        # Redis re-delivers an unacked message (its worker died) after visibility_timeout;
        # settings.visibility_timeout says in one place why it must outlast the slowest
        # chunk. Workers sweep for such messages every restore interval: a tenth of the
        # timeout, at most 10 s, so a lost chunk waits little longer than the timeout.
        options = {
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 10)),
            "unacked_restore_throttle": 1,
        }
    return {"broker_url": url, "task_queues": task_queues(url), "broker_transport_options": options}


def use_broker_config(app: Any, settings: Settings) -> None:
    """Point `app` at settings.broker_url with that broker's queues and options. Celery caches
    the queue declarations and the router built from them on first use; both are dropped so
    the next send or worker start uses the new ones."""
    app.conf.update(broker_config(settings))
    for cached in ("queues", "default_queue", "router"):
        app.amqp.__dict__.pop(cached, None)


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        **broker_config(settings),
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
        # A pool process replacing a dead one (the OOM killer's kill -9) loads the model in
        # worker_process_init before it reports up. Celery kills a child that is not up after
        # worker_proc_alive_timeout (4 s): a 6-20 s model load then loops forever and the
        # worker never serves again. Measured on 2 busy cores: a replacement child loads
        # all-MiniLM-L6-v2 in 3.9-7.5 s (4.2 s for the first); settings.model_load_timeout
        # (120 s) leaves room for large models on slow disks. A child that truly hangs in its
        # load is still killed, two minutes later.
        "worker_proc_alive_timeout": float(settings.model_load_timeout),
        "task_routes": ROUTES,
        "task_default_queue": EMBED_QUEUE,
        # Flower shows chunks from queued to done.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "broker_connection_retry_on_startup": True,
        # A send that finds the broker gone (restarted, failing over, a link flapping) keeps
        # reconnecting for about a minute (1, 2, 3, 4 s, then every 5 s) before it fails.
        # Celery's default gives up after 3 tries in under a second: a worker whose encode
        # could not send its collect message during a 3-second broker restart lost that
        # chunk until the reconciler re-sent it a whole lease (120 s) later, although the
        # broker was back within seconds. `submit` checks the broker before it sends
        # (fleet/sending.py), so an unreachable broker still fails it at once.
        "task_publish_retry": True,
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        # RabbitMQ: a worker host cut off from the broker (its link down, the host frozen)
        # sends no heartbeat; RabbitMQ closes a connection two heartbeats after its last
        # frame and at once re-queues every message that connection held unacked, so its
        # chunks go to live workers about 20-30 s after the cut (Celery's default, 120 s,
        # meant 4-6 minutes). The worker checks the broker's side at the same pace and
        # starts reconnecting. Heartbeats come from the worker's main process, never from
        # the pool process busy encoding, so a long chunk does not stop them; much lower
        # than 10 s risks closing a healthy connection on an overloaded host. Redis has
        # no heartbeats: there the ledger's node heartbeat (settings.dead_after_seconds)
        # notices a dead worker.
        "broker_heartbeat": BROKER_HEARTBEAT_SECONDS,
        # Keep reconnecting after a lost connection, for as long as the outage lasts (the
        # default gives up after 100 tries, about 45 minutes, and the worker exits): a host
        # whose link comes back serves again without anyone restarting it.
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        # RabbitMQ: quorum queues do not support global QoS; Celery detects them from
        # x-queue-type (fleet/queues.py) and sets the prefetch per consumer. Its default,
        # pinned: the one chunk per process above holds on RabbitMQ only through it.
        "worker_detect_quorum_queues": True,
        # The queue type of Celery's native delayed delivery queues (celery_delayed_*),
        # through which a retry's countdown waits on RabbitMQ: quorum, like ours, so a
        # backing-off chunk survives a broker restart too. Celery's default, pinned.
        "broker_native_delayed_delivery_queue_type": "quorum",
        # The model is loaded per process after fork; a hijacked root logger would hide
        # our structured lines, so keep the application's logging.
        "worker_hijack_root_logger": False,
        # Every worker and beat line carries its time, level and process, and our lines their
        # logger (embedfleet.fleet.tasks: encoded job=... chunk=...): a log an operator can
        # line up with the ledger. Celery's defaults, plus the logger's name.
        "worker_log_format": WORKER_LOG_FORMAT,
        "worker_task_log_format": WORKER_TASK_LOG_FORMAT,
    }
