"""Where a task that answers (the query encoder) leaves its answer: on the broker itself.

Every other task reports through SQL (the collector, the ledger), so the app ignores
results; only `embed.encode_query` keeps one, for the search that waits on it. Redis keeps
the answer under a key of its own; RabbitMQ sends it to the caller's reply queue (rpc).
"""

from __future__ import annotations

from typing import Any

# An answer nobody waits for any more is gone after this many seconds.
ANSWER_EXPIRES_SECONDS = 300


def answers_backend(broker_url: str) -> str:
    """The result backend a broker URL implies."""
    scheme = broker_url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss", "sentinel"):
        return broker_url
    if scheme in ("amqp", "amqps", "pyamqp"):
        return "rpc://"
    if scheme == "memory":
        return "cache+memory://"
    raise ValueError(f"no way to return answers over a {scheme!r} broker: use Redis or RabbitMQ")


def use_answers(app: Any, broker_url: str) -> None:
    """Point the app's result backend at the broker, before its backend is first used (a
    worker at start, a searching process before its first query)."""
    backend = answers_backend(broker_url)
    if app.conf.result_backend != backend:
        app.conf.result_backend = backend
        app.conf.result_expires = ANSWER_EXPIRES_SECONDS
        app._local.__dict__.pop("backend", None)  # Celery caches the backend per thread
