"""The `embedfleet` command: a thin layer over the Python API's building blocks."""

from . import bench, collections, dlq, fleet, jobs, ops  # noqa: F401  (each registers its commands)
from .main import cli, main
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

__all__ = ["BROKER_OPTION", "DB_OPTION", "JSON_OPTION", "STRICT_OPTION", "apply_settings", "cli", "corpus_options",
           "job_request", "main", "summary"]
