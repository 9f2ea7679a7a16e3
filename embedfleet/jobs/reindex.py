"""Jobs that re-run a collection's registered source: the nightly reindex and migrations."""

from __future__ import annotations

from sqlalchemy import Engine

from ..corpus.readers import source_from_spec
from ..corpus.records import FieldSpec
from ..settings import Settings
from ..store.collections import get_collection
from .submit import JobRequest


def registered_request(engine: Engine, name: str, settings: Settings, model: str | None = None,
                       version_key: str | None = None, cutover: bool = False, sync: str | None = None) -> JobRequest:
    """A job request that reads the source the collection was created from, the same way."""
    info = get_collection(engine, name)
    options = info.options
    return JobRequest(
        # Corpus.format is a Literal, the Source protocol's a plain (settable) str: readers.py's to fix.
        corpus=source_from_spec(info.source),
        collection=name,
        model=model or info.current.model,
        spec=FieldSpec(options.get("id_field", "id"), tuple(options.get("text_fields", ["text"])),
                       tuple(options.get("metadata_fields", []))),
        chunk_size=options.get("chunk_size", settings.chunk_size),
        token_budget=options.get("token_budget", settings.chunk_token_budget),
        window=settings.max_tokens_per_record,
        skip_invalid=options.get("skip_invalid", False),
        sync=sync or options.get("sync", "none"),
        version_key=version_key,
        cutover=cutover,
        sort_window=settings.sort_window,
        store_text=options.get("store_text", False),
        vector_type=options.get("vector_type", "auto"),
    )
