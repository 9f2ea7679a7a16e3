"""What a command prints for each error a user can cause or meet, and its exit code.

Exit codes: 0 ok; 1 a failure (a service unreachable, a job cancelled or abandoned);
2 usage or invalid input (click's own usage errors exit 2 as well)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config.settings import get_settings
from ..producers.readers import CorpusError
from ..producers.sending import BrokerUnavailable
from ..producers.validation import InvalidInput
from ..storage.engine import redact
from ..storage.errors import JobEnded, LedgerError
from ..storage.safe_errors import reason

EXIT_FAILURE = 1
EXIT_INPUT = 2


def _reason(exc: BaseException) -> str:
    return reason(exc, get_settings().database_url, get_settings().broker_url)


def _database_error(exc: BaseException) -> str:
    return f"database unreachable at {redact(get_settings().database_url)}: {_reason(exc)}"


def _broker_error(exc: BaseException) -> str:
    return f"broker unreachable at {redact(get_settings().broker_url)}: {_reason(exc)}"


def _settings_error(exc: Any) -> str:
    fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
    return f"invalid setting (EMBEDFLEET_... or a flag): {fields}"


def error_map() -> list[tuple[tuple[type[BaseException], ...], Callable[[Any], str], int]]:
    """(exception types, message, exit code): the first match wins, so subclasses come first."""
    import kombu.exceptions
    import pydantic
    import redis.exceptions
    import sqlalchemy.exc

    plain = str
    return [
        ((JobEnded,), plain, EXIT_FAILURE),
        ((InvalidInput, CorpusError, LedgerError), plain, EXIT_INPUT),
        ((pydantic.ValidationError,), _settings_error, EXIT_INPUT),
        ((sqlalchemy.exc.ArgumentError,), lambda e: f"invalid database URL: {_reason(e)}", EXIT_INPUT),
        ((BrokerUnavailable,), plain, EXIT_FAILURE),
        ((sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError), _database_error, EXIT_FAILURE),
        ((sqlalchemy.exc.DBAPIError,), lambda e: f"database error: {_reason(e)}", EXIT_FAILURE),
        ((kombu.exceptions.OperationalError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError),
         _broker_error, EXIT_FAILURE),
        ((TimeoutError, ConnectionError), lambda e: f"{type(e).__name__}: {_reason(e)}", EXIT_FAILURE),
    ]
