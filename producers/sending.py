"""The fleet's sender: chunks sent by task name on the configured broker, checked first."""

from __future__ import annotations

from ..config.sending import Sender, celery_sender
from ..config.settings import Settings
from ..storage.engine import redact
from ..storage.safe_errors import reason

# Seconds a producer waits for the broker to accept a connection before it gives up.
BROKER_CONNECT_TIMEOUT = 5.0


class BrokerUnavailable(Exception):
    """The broker did not answer before anything was written."""


def fleet_sender(settings: Settings) -> Sender:
    """A sender on settings.broker_url, checked first: an unreachable broker fails here,
    before a job row or a chunk is written, instead of leaving a job `submitting`."""
    from ..config.celery_app import app

    app.conf.broker_url = settings.broker_url
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
