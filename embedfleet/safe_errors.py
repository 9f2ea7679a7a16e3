"""Exceptions rendered without record data, for dead letters, logs and what a task raises.

A database error can carry the data that caused it: SQLAlchemy appends the statement's
parameters (ids, texts) to its message unless the engine hides them, and PostgreSQL adds
DETAIL and CONTEXT lines that may quote a whole row ("Failing row contains (...)").
`safe_error` keeps the error's class and the first line of its primary message, which
names the problem ("value too long for type character varying(512)"), not the values.
"""

from __future__ import annotations

from sqlalchemy.exc import StatementError

# Longest message kept: enough for any database's primary message, too short to hold a text.
MAX_MESSAGE = 300


class RedactedError(Exception):
    """A task's exception re-raised without its data: the message is `safe_error` of the
    original, `error_type` the original class's name. Built from its args alone, so Celery
    can pickle it (it wraps exceptions it cannot, and the wrapper hides the type)."""

    def __init__(self, message: str, error_type: str = "Error") -> None:
        super().__init__(message, error_type)

    @property
    def error_type(self) -> str:
        return str(self.args[1])

    def __str__(self) -> str:
        return str(self.args[0])


def error_type(exc: BaseException) -> str:
    """The name dead letters and notices record for an exception."""
    return exc.error_type if isinstance(exc, RedactedError) else type(exc).__name__


def safe_error(exc: BaseException) -> str:
    """'Class: first line of the primary message', without SQL, parameters, DETAIL or CONTEXT.

    For a SQLAlchemy error the class is the driver's (psycopg names the SQLSTATE, e.g.
    StringDataRightTruncation); for anything else, the exception's own."""
    if isinstance(exc, RedactedError):
        return str(exc)
    inner: BaseException = exc
    if isinstance(exc, StatementError) and isinstance(exc.orig, BaseException):
        inner = exc.orig
    diag = getattr(inner, "diag", None)
    message = getattr(diag, "message_primary", None) if diag is not None else None
    if not message and inner is exc and isinstance(exc, StatementError):
        message = str(exc.args[0]) if exc.args else ""  # the message alone, not SQL and parameters
    elif not message:
        message = str(inner)
    lines = message.strip().splitlines()
    first = lines[0] if lines else ""
    if len(first) > MAX_MESSAGE:
        first = first[:MAX_MESSAGE] + "..."
    return f"{type(inner).__name__}: {first}" if first else type(inner).__name__


def redacted(exc: BaseException, keep: tuple[type[BaseException], ...] = ()) -> BaseException:
    """The exception to raise instead of exc: exc itself if it is one of `keep` (errors the
    task retries, which must keep their type; with parameters hidden their messages hold
    no record data), otherwise a RedactedError with the same error type."""
    if isinstance(exc, (*keep, RedactedError)):
        return exc
    return RedactedError(safe_error(exc), error_type(exc))


def reason(exc: BaseException, *urls: str) -> str:
    """The first line of what a driver said (SQLAlchemy appends SQL and a link), with the
    passwords of `urls` replaced by ***: what a command prints when a service is down."""
    orig = getattr(exc, "orig", None) or exc
    line = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    for url in urls:
        try:
            from sqlalchemy.engine import make_url

            password = make_url(url).password
        except Exception:
            password = url.partition("://")[2].partition("@")[0].partition(":")[2] if "@" in url else None
        if password:
            line = line.replace(str(password), "***")
    return line[:MAX_MESSAGE]
