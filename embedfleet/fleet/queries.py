"""Search queries encoded by the fleet: a worker that already holds the model answers in
milliseconds, where loading the model in the searching process takes seconds."""

from __future__ import annotations

import numpy as np

from ..settings import Settings
from ..store import codec
from .queues import QUERY_QUEUE, QUERY_TASK
from .replies import use_answers
from .sending import use_broker


class QueryUnanswered(Exception):
    """No worker answered a search query in time."""


def encode_on_fleet(settings: Settings, model: str, texts: list[str], timeout: float) -> np.ndarray:
    """The texts' vectors from a fleet worker's resident model, as an (n, d) float32 array.
    The message expires with the wait, so a query nobody took is not answered later for nobody."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    from .celery_app import app

    use_broker(app, settings.broker_url)
    use_answers(app, settings.broker_url)
    result = app.send_task(QUERY_TASK, kwargs={"texts": texts, "model": model}, expires=timeout,
                           kwargsrepr=f"{len(texts)} queries, {model}")
    try:
        answer = result.get(timeout=timeout)
    except CeleryTimeout:
        raise QueryUnanswered(
            f"no worker answered the query in {timeout:g} s: start workers that consume the {QUERY_QUEUE!r} "
            "queue (`embedfleet worker` does by default), or search without --fleet") from None
    finally:
        result.forget()
    return codec.unpack(answer["vectors"], int(answer["dim"]))
