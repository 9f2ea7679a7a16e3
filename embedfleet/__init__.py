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
    "QueryUnanswered",
    "Settings",
    "cancel",
    "export",
    "run",
    "search",
    "status",
    "submit",
    "wait",
]

# name -> the module that defines it
_HOME = {
    "run": ".api", "submit": ".api", "wait": ".api", "status": ".api", "cancel": ".api",
    "export": ".api", "search": ".api", "Hit": ".api", "Exported": ".api",
    "Settings": ".config.settings",
    "JobStats": ".storage.jobs",
    "InvalidInput": ".producers.validation",
    "JobEnded": ".storage.errors",
    "LedgerError": ".storage.errors",
    "CorpusError": ".producers.readers",
    "BrokerUnavailable": ".producers.sending",
    "QueryUnanswered": ".producers.queries",
}

if TYPE_CHECKING:
    from .api import Exported, Hit, cancel, export, run, search, status, submit, wait
    from .config.settings import Settings
    from .producers.queries import QueryUnanswered
    from .producers.readers import CorpusError
    from .producers.sending import BrokerUnavailable
    from .producers.validation import InvalidInput
    from .storage.errors import JobEnded, LedgerError
    from .storage.jobs import JobStats


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'embedfleet' has no attribute {name!r}")
    value = getattr(import_module(home, __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
