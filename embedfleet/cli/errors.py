"""What a command prints for each error a user can cause or meet, and its exit code.

Exit codes (EXIT_CODES, printed at the end of `embedfleet --help`):
0 ok; 1 a failure (a service unreachable, a job cancelled or abandoned); 2 usage or invalid
input (click's own usage errors, a bad corpus, an unknown or ambiguous job id, a missing
SQLite file); 3 the job finished with dead letters, under --strict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

# The error types and what prints them are imported when an error is met (error_map), not
# at start: `embedfleet --version` must not load SQLAlchemy, Celery or numpy.

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INPUT = 2
EXIT_DEAD_LETTERS = 3

EXIT_CODES = {
    EXIT_OK: "ok",
    EXIT_FAILURE: "failure: a service unreachable, a job cancelled or abandoned",
    EXIT_INPUT: "usage or invalid input: a bad option or corpus, an unknown or ambiguous job id, no database",
    EXIT_DEAD_LETTERS: "with --strict: the job finished with dead letters",
}


def exit_codes_epilog() -> str:
    r"""The exit codes as `--help` shows them (\b keeps click from rewrapping the lines)."""
    return "\b\nExit codes:\n" + "\n".join(f"  {code}  {what}" for code, what in EXIT_CODES.items())


class InputError(click.ClickException):
    """A command's own refusal of what it was given: one line, exit 2 (a ClickException is 1)."""

    exit_code = EXIT_INPUT


def _reason(exc: BaseException) -> str:
    from ..safe_errors import reason
    from ..settings import get_settings

    return reason(exc, get_settings().database_url, get_settings().broker_url)


def _database_error(exc: BaseException) -> str:
    from ..settings import get_settings
    from ..store.engine import redact

    return f"database unreachable at {redact(get_settings().database_url)}: {_reason(exc)}"


def _broker_error(exc: BaseException) -> str:
    from ..settings import get_settings
    from ..store.engine import redact

    return f"broker unreachable at {redact(get_settings().broker_url)}: {_reason(exc)}"


def _settings_error(exc: Any) -> str:
    """Each invalid setting by the environment variable that sets it (a flag sets the same
    setting: --db is EMBEDFLEET_DATABASE_URL), with the value given and why it is refused."""
    problems = []
    for error in exc.errors():
        name = ".".join(map(str, error["loc"]))
        variable = f"EMBEDFLEET_{name.upper()}" if name else "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        given = error.get("input")
        shown = f"={given!r}" if isinstance(given, (str, int, float)) and name else ""
        problems.append(f"{variable}{shown}: {message}")
    return "invalid setting: " + "; ".join(problems) + " (set by the environment or by the command's flag)"


def error_map() -> list[tuple[tuple[type[BaseException], ...], Callable[[Any], str], int]]:
    """(exception types, message, exit code): the first match wins, so subclasses come first."""
    import kombu.exceptions
    import pydantic
    import redis.exceptions
    import sqlalchemy.exc

    from ..corpus.readers import CorpusError
    from ..corpus.validation import InvalidInput

    # numpy only, no torch: the model is imported inside the encoder's functions.
    from ..encode.encoder import EncoderConfigError
    from ..errors import JobEnded, LedgerError, ModelNotFound
    from ..extras import MissingExtra
    from ..fleet.queries import QueryUnanswered
    from ..fleet.sending import BrokerUnavailable

    plain = str
    return [
        ((JobEnded,), plain, EXIT_FAILURE),
        ((InvalidInput, CorpusError, LedgerError, EncoderConfigError, ModelNotFound, MissingExtra), plain,
         EXIT_INPUT),
        ((pydantic.ValidationError,), _settings_error, EXIT_INPUT),
        ((sqlalchemy.exc.ArgumentError,), lambda e: f"invalid database URL: {_reason(e)}", EXIT_INPUT),
        ((BrokerUnavailable, QueryUnanswered), plain, EXIT_FAILURE),
        ((sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError), _database_error, EXIT_FAILURE),
        ((sqlalchemy.exc.DBAPIError,), lambda e: f"database error: {_reason(e)}", EXIT_FAILURE),
        ((kombu.exceptions.OperationalError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError),
         _broker_error, EXIT_FAILURE),
        ((TimeoutError, ConnectionError), lambda e: f"{type(e).__name__}: {_reason(e)}", EXIT_FAILURE),
    ]
