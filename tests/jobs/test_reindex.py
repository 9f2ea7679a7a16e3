"""A collection's registered source read again: the request a reindex or a migration submits
is the one the collection was created with, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedfleet.chunks.messages import ChunkTexts
from embedfleet.corpus.readers import Corpus, CorpusError, Records, SqlSource
from embedfleet.corpus.records import FieldSpec
from embedfleet.errors import LedgerError
from embedfleet.jobs.reindex import registered_request
from embedfleet.jobs.submit import JobRequest, submit
from embedfleet.settings import Settings
from embedfleet.store.collections import open_collection
from embedfleet.store.engine import get_engine

SPEC = FieldSpec("key", ("title", "body"))


def corpus(tmp_path: Path, n: int = 5) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"key": f"k{i}", "title": f"title {i}", "body": f"body {i}"}) + "\n"
                            for i in range(n)))
    return path


def first_submit(engine, path: Path) -> list[ChunkTexts]:
    sent: list[ChunkTexts] = []
    request = JobRequest(corpus=Corpus(str(path)), collection="docs", model="model-a", spec=SPEC, chunk_size=2,
                         token_budget=999, skip_invalid=True, sync="full", sort_window=1)
    submit(engine, request, sent.append)
    return sent


def test_the_request_reads_the_registered_source_the_same_way(db_url: str, tmp_path: Path) -> None:
    """Same file, same id and text fields, chunk sizes and options as the first submission, and
    the collection's current model; the window and sort window come from the settings."""
    engine = get_engine(db_url)
    path = corpus(tmp_path)
    first_submit(engine, path)
    settings = Settings(max_tokens_per_record=128, sort_window=64)
    request = registered_request(engine, "docs", settings)
    assert isinstance(request.corpus, Corpus) and request.corpus.path == path.resolve()
    assert (request.collection, request.model, request.spec) == ("docs", "model-a", SPEC)
    assert (request.chunk_size, request.token_budget, request.skip_invalid, request.sync) == (2, 999, True, "full")
    assert (request.window, request.sort_window) == (128, 64)
    assert (request.version_key, request.cutover) == (None, False)


def test_the_registered_request_reads_the_same_records(db_url: str, tmp_path: Path) -> None:
    """Submitted again (nothing was stored yet), the registered request sends the same ids with
    the same texts and content hashes, in the same chunking, as the first submission."""
    engine = get_engine(db_url)
    first = first_submit(engine, corpus(tmp_path))
    again: list[ChunkTexts] = []
    submit(engine, registered_request(engine, "docs", Settings(sort_window=1)), again.append)

    def records(chunks: list[ChunkTexts]) -> list[list[tuple[str, str, str]]]:
        return [list(zip(c.ids, c.texts, c.hashes)) for c in chunks]

    assert records(again) == records(first)
    assert [len(c.ids) for c in again] == [2, 2, 1]
    assert again[0].texts[0] == "title 0\nbody 0"


def test_a_migration_overrides_model_version_cutover_and_sync(db_url: str, tmp_path: Path) -> None:
    """A migration asks for another model, its own version and a cutover; sync may be overridden."""
    engine = get_engine(db_url)
    first_submit(engine, corpus(tmp_path))
    request = registered_request(engine, "docs", Settings(), model="model-b", version_key="docs__v2", cutover=True,
                                 sync="none")
    assert (request.model, request.version_key, request.cutover, request.sync) == ("model-b", "docs__v2", True, "none")


def test_defaults_fill_options_an_older_collection_lacks(sqlite_url: str, tmp_path: Path) -> None:
    """A collection registered without options reads "id" and "text" and takes chunk sizes from settings."""
    engine = get_engine(sqlite_url)
    path = corpus(tmp_path)
    open_collection(engine, "old", "model-a", Corpus(str(path)).spec(), {})
    request = registered_request(engine, "old", Settings(chunk_size=7, chunk_token_budget=77))
    assert request.spec == FieldSpec("id", ("text",))
    assert (request.chunk_size, request.token_budget, request.skip_invalid, request.sync) == (7, 77, False, "none")


def test_a_sql_source_is_read_again_from_its_url(sqlite_url: str) -> None:
    """A collection made from a table is re-read from the same database, table and query."""
    engine = get_engine(sqlite_url)
    source = SqlSource(sqlite_url, "documents", None)
    open_collection(engine, "fromsql", "model-a", source.spec(), {})
    request = registered_request(engine, "fromsql", Settings())
    assert isinstance(request.corpus, SqlSource)
    assert request.corpus.spec() == source.spec()


def test_a_collection_without_a_rereadable_source_is_refused(sqlite_url: str) -> None:
    """Records from memory or stdin register no source: the reason says to submit them again."""
    engine = get_engine(sqlite_url)
    open_collection(engine, "inmemory", "model-a", Records([{"id": "a", "text": "x"}]).spec(), {})
    with pytest.raises(CorpusError, match="no source to read again"):
        registered_request(engine, "inmemory", Settings())


def test_an_unknown_collection_is_refused(sqlite_url: str) -> None:
    """Reindexing a collection that does not exist is a LedgerError naming it."""
    with pytest.raises(LedgerError, match="nope"):
        registered_request(get_engine(sqlite_url), "nope", Settings())
