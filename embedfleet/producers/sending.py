"""The fleet's sender: chunks sent by task name on the configured broker, checked first."""

from __future__ import annotations

from typing import Any

from ..config.celeryconfig import use_broker_config
from ..config.queues import task_queues
from ..config.sending import Sender, celery_sender
from ..config.settings import Settings, get_settings
from ..storage.engine import redact
from ..storage.safe_errors import reason

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
    Redis and in memory: config/queues.py), and so do the transport's options."""
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
    from ..config.celery_app import app

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
