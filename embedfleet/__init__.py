"""embedfleet: turn large text corpora into vectors on a fleet of Celery workers.

The public Python API (docs/api.md):

    from embedfleet import Settings, run, search

    settings = Settings(database_url="sqlite:///vectors.db")
    stats = run([{"id": "a", "text": "hello"}], collection="docs", settings=settings)
    hits = search("docs", "greeting", k=3, settings=settings)

The names below load on first use (PEP 562), so `import embedfleet` stays cheap and never
imports torch; only `run` and `search` load the model, when called.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = [
    "BrokerUnavailable",
    "CorpusError",
    "Exported",
    "Hit",
    "InvalidInput",
    "JobEnded",
    "JobStats",
    "LedgerError",
    "ModelNotFound",
    "QueryUnanswered",
    "Settings",
    "Started",
    "cancel",
    "cutover",
    "dead_letters",
    "drop_version",
    "export",
    "migrate",
    "redrive",
    "reindex",
    "resume",
    "rollback",
    "run",
    "search",
    "status",
    "submit",
    "wait",
]

# name -> the module that defines it
_HOME = {
    "run": ".api", "submit": ".api", "wait": ".api", "status": ".api", "cancel": ".api",
    "export": ".api", "search": ".api", "Hit": ".api", "Exported": ".api", "Started": ".api",
    "reindex": ".api", "migrate": ".api", "cutover": ".api", "rollback": ".api", "drop_version": ".api",
    "resume": ".api", "dead_letters": ".api", "redrive": ".api",
    "Settings": ".settings",
    "JobStats": ".jobs.stats",
    "InvalidInput": ".corpus.validation",
    "JobEnded": ".errors",
    "LedgerError": ".errors",
    "ModelNotFound": ".errors",
    "CorpusError": ".corpus.readers",
    "BrokerUnavailable": ".fleet.sending",
    "QueryUnanswered": ".fleet.queries",
}

if TYPE_CHECKING:
    from .api import (
        Exported,
        Hit,
        Started,
        cancel,
        cutover,
        dead_letters,
        drop_version,
        export,
        migrate,
        redrive,
        reindex,
        resume,
        rollback,
        run,
        search,
        status,
        submit,
        wait,
    )
    from .corpus.readers import CorpusError
    from .corpus.validation import InvalidInput
    from .errors import JobEnded, LedgerError, ModelNotFound
    from .fleet.queries import QueryUnanswered
    from .fleet.sending import BrokerUnavailable
    from .jobs.stats import JobStats
    from .settings import Settings


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'embedfleet' has no attribute {name!r}")
    value = getattr(import_module(home, __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
