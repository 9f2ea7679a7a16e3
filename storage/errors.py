"""The storage layer's one error type, and the collection-name check that guards SQL."""

from __future__ import annotations

import re

COLLECTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")


class LedgerError(Exception):
    """A request storage refuses: unknown job or collection, bad name, model mismatch."""


def check_collection_name(name: str) -> str:
    if not COLLECTION_NAME.match(name):
        raise LedgerError(
            f"invalid collection name {name!r}: use a letter, then up to 63 letters, digits, '_' or '-'"
        )
    return name


class SourceNotStored(TimeoutError):
    """A repeated text's first record is not stored yet: transient, the collector retries."""
