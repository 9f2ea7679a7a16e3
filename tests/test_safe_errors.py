"""Errors that may leave a worker: no SQL parameters, no record text."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

from embedfleet.safe_errors import RedactedError, error_type, redacted, safe_error
from tests.store.helpers import SECRET


def test_safe_error_drops_parameters_sql_and_detail_lines():
    """A SQLAlchemy error renders as the driver's class and first message line: no SQL, parameters, DETAIL."""
    orig = ValueError(f"new row violates check constraint\nDETAIL:  Failing row contains ({SECRET}).")
    wrapped = sa_exc.IntegrityError("INSERT INTO dead_letters (text) VALUES (%(text)s)", {"text": SECRET}, orig)
    assert SECRET in str(wrapped)  # what SQLAlchemy alone would show
    assert safe_error(wrapped) == "ValueError: new row violates check constraint"
    assert error_type(wrapped) == "IntegrityError"


def test_safe_error_prefers_the_servers_primary_message():
    """A driver error with diagnostics renders its primary message only; long messages are cut."""
    class Diag:
        message_primary = "value too long for type character varying(512)"

    class StringDataRightTruncation(Exception):
        diag = Diag()

    assert safe_error(StringDataRightTruncation("value too long\nCONTEXT: COPY vectors_in, line 1")) == (
        "StringDataRightTruncation: value too long for type character varying(512)")
    assert len(safe_error(RuntimeError("x" * 5000))) < 400


def test_redacted_keeps_retryable_errors_and_hides_the_rest():
    """Errors the task retries keep their type; others become a RedactedError naming the original type."""
    transient = sa_exc.OperationalError("SELECT 1", None, ConnectionError("server closed the connection"))
    assert redacted(transient, keep=(sa_exc.OperationalError,)) is transient
    data = sa_exc.DataError("INSERT ...", {"text": SECRET}, ValueError("value too long"))
    safe = redacted(data, keep=(sa_exc.OperationalError,))
    assert isinstance(safe, RedactedError) and SECRET not in str(safe) and SECRET not in repr(safe)
    assert (error_type(safe), str(safe)) == ("DataError", "ValueError: value too long")
    assert safe_error(safe) == str(safe) and redacted(safe) is safe


def test_redacted_error_pickles_with_its_type():
    """Celery pickles task exceptions (and wraps those it cannot, hiding their type): a RedactedError
    round-trips with its message and error type."""
    import pickle

    safe = RedactedError("ValueError: value too long", "DataError")
    back = pickle.loads(pickle.dumps(safe))
    assert (str(back), error_type(back), repr(back)) == (
        "ValueError: value too long", "DataError", "RedactedError('ValueError: value too long', 'DataError')")
