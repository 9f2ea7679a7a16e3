"""The `embedfleet` command: a thin layer over the Python API. Commands load when asked for
(cli/main.py: LazyGroup); the shared options below load on first use (PEP 562)."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .main import cli, main

__all__ = ["BROKER_OPTION", "DB_OPTION", "JSON_OPTION", "STRICT_OPTION", "apply_settings", "cli", "corpus_options",
           "job_request", "main", "summary"]

if TYPE_CHECKING:
    from .options import (
        BROKER_OPTION,
        DB_OPTION,
        JSON_OPTION,
        STRICT_OPTION,
        apply_settings,
        corpus_options,
        job_request,
        summary,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(import_module(".options", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'embedfleet.cli' has no attribute {name!r}")
