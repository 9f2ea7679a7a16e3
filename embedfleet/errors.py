"""Errors a caller catches that every layer may raise, and the collection-name check that guards SQL."""

from __future__ import annotations

import re

COLLECTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,63}")


class LedgerError(Exception):
    """A request storage refuses: unknown job or collection, bad name, model mismatch."""


def check_collection_name(name: str) -> str:
    # fullmatch: `$` in re.match also matches before a trailing newline, so "c7\n" passed.
    if not COLLECTION_NAME.fullmatch(name):
        raise LedgerError(
            f"invalid collection name {name!r}: use a letter, then up to 63 letters, digits, '_' or '-'"
        )
    if "__" in name:
        # Version keys are `name` and `name__vN`: a collection called `c7__v2` would take the
        # key of c7's version 2.
        raise LedgerError(f"invalid collection name {name!r}: '__' is reserved for version keys (name__v2)")
    return name


class JobEnded(LedgerError):
    """The job was cancelled or abandoned: it will not finish, so waiting on it stops."""


class SourceNotStored(TimeoutError):
    """A repeated text's first record is not stored yet: transient, the collector retries."""


class ModelNotFound(ValueError):
    """A model asked for by name or directory whose files are not on this host (checked
    without loading it: migrate, worker start)."""
