"""The fleet's sender: chunks sent by task name on the configured broker, checked first."""

from __future__ import annotations

from typing import Any

from celery import Celery

from ..chunks.messages import ChunkTexts
from ..chunks.sending import Sender, time_limit
from ..safe_errors import reason
from ..settings import Settings, get_settings
from ..store.engine import redact
from .celeryconfig import use_broker_config
from .queues import ENCODE_TASK, task_queues

# Celery's own publish retry policy: three quick tries. For a sender that runs again soon
# anyway (the heartbeat's sweep, every beat) and must not stall what else its thread does.
QUICK_RETRY_POLICY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def celery_sender(app: Celery, retry_policy: dict[str, float] | None = None) -> Sender:
    """Send by task name, so the sender needs no model and no worker code. retry_policy:
    how long a send waits for a broker that went away; None means the app's
    task_publish_retry_policy (about a minute, fleet/celeryconfig.py)."""

    def send(chunk: ChunkTexts) -> None:
        # kwargsrepr: Flower and logs show job and chunk, never the texts. time_limit: a
        # per-message hard limit (the prefork pool kills the process; the embedded run's
        # encoder processes get the same limit: encode/pool.py).
        app.send_task(ENCODE_TASK, kwargs={"chunk": chunk.to_wire()}, kwargsrepr=chunk.label(),
                      time_limit=time_limit(len(chunk.ids)), retry_policy=retry_policy)

    return send


# Seconds a producer waits for the broker to accept a connection before it gives up.
BROKER_CONNECT_TIMEOUT = 5.0


class BrokerUnavailable(Exception):
    """The broker did not answer before anything was written."""


def use_broker(app: Any, url: str) -> None:
    """Point the Celery app at `url`. Its producer pool keeps the broker it was first made
    for, so when the URL changes (an embedded run then a fleet submit in one notebook, or
    two fleets from one process) the app lets go of it and takes the pool for the new URL on
    next use; otherwise messages would go on to the old broker. The pools are not closed:
    kombu keeps one per URL in a process-wide registry and hands the same one out again.
    The queue declarations follow the broker's kind (quorum queues on RabbitMQ, plain ones on
    Redis and in memory: fleet/queues.py), and so do the transport's options."""
    if app.conf.broker_url == url and app.conf.task_queues is task_queues(url):
        return
    use_broker_config(app, get_settings().model_copy(update={"broker_url": url}))
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


def fleet_sender(settings: Settings) -> Sender:
    """A sender on settings.broker_url, checked first: an unreachable broker fails here,
    before a job row or a chunk is written, instead of leaving a job `submitting`."""
    from .celery_app import app

    use_broker(app, settings.broker_url)
    try:
        with app.connection_for_write(connect_timeout=BROKER_CONNECT_TIMEOUT) as conn:
            conn.transport_options.update(socket_connect_timeout=BROKER_CONNECT_TIMEOUT)
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5,
                                   timeout=BROKER_CONNECT_TIMEOUT)
    except Exception as exc:
        raise BrokerUnavailable(
            f"broker unreachable at {redact(settings.broker_url)}: {reason(exc, settings.broker_url)}"
        ) from exc
    return celery_sender(app)
