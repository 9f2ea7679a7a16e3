"""The public Python API: what the CLI does, callable from a notebook or an Airflow/Prefect task.

Every function takes an explicit `Settings` (or reads EMBEDFLEET_* from the environment when
none is given), and records from a file path or from any iterable of dicts. docs/api.md
documents each function; the CLI's job and collection commands call these.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, overload

from sqlalchemy import Engine

from .chunks.dead_letters import Letter
from .corpus.readers import Corpus, Records
from .corpus.records import FieldSpec
from .errors import LedgerError, ModelNotFound
from .jobs.stats import JobStats, job_stats, resolve_job_id
from .jobs.submit import JobRequest, Submission
from .settings import Settings, get_settings, set_settings
from .store.collections import CollectionSummary, Deleted, Version
from .store.engine import existing_engine, get_engine
from .store.ledger import cancel_job

RecordsLike = str | Path | Iterable[Mapping[str, Any]]
# How a corpus file is read: auto tells it from the suffix (.jsonl, .csv, .parquet).
CorpusFormat = Literal["auto", "jsonl", "csv", "parquet"]
VectorType = Literal["auto", "vector", "halfvec", "bytea"]

# run, submit and search make their settings the process's settings for the call (the layers
# below, and the embedded worker thread, read them there). One such call at a time: a second
# thread's call waits rather than run under the first one's database or broker.
_scope = threading.RLock()


@dataclass(frozen=True)
class Hit:
    """One search result: a record id and its cosine similarity to the query, with its text
    and metadata when the collection keeps them (--store-text, --metadata-fields)."""

    id: str
    score: float
    text: str | None = None
    metadata: Any = None


@dataclass(frozen=True)
class Exported:
    """What export wrote: for npy, the (rows, dim) float32 matrix at `path` and its ids, one
    JSON string a line, at `ids_path`; for parquet, one file at `path` (ids_path None) whose
    columns are `columns`."""

    path: Path
    ids_path: Path | None
    rows: int
    dim: int
    format: Literal["npy", "parquet"] = "npy"
    columns: tuple[str, ...] = ()


@contextmanager
def _using(settings: Settings | None) -> Iterator[Settings]:
    """Make `settings` the process's settings for one call, then put back what was there."""
    with _scope:
        previous = get_settings()
        current = settings if settings is not None else previous
        set_settings(current)
        try:
            yield current
        finally:
            set_settings(previous)


def _resolved(settings: Settings | None) -> Settings:
    return settings if settings is not None else get_settings()


def _engine(settings: Settings) -> Engine:
    return get_engine(settings.database_url)


def _reader(settings: Settings) -> Engine:
    """The engine of a call that reads or changes what exists: a SQLite file that is not
    there raises store.engine.NoDatabase (a LedgerError) instead of being created empty."""
    return existing_engine(settings.database_url)


def resolve_job(job_id: str, *, settings: Settings | None = None) -> str:
    """The full id of the one job whose id starts with `job_id` (any unique prefix, such as
    the 8 characters progress lines print). LedgerError when no job or several match (the
    latter, jobs.stats.AmbiguousJob, lists the candidates)."""
    return resolve_job_id(_reader(_resolved(settings)), job_id)


def _source(records: RecordsLike, fmt: CorpusFormat) -> Corpus | Records:
    if isinstance(records, (str, Path)):
        return Corpus(str(records), fmt)
    return Records(records)


def _close(source: object) -> None:
    """Delete a generator's spool as soon as its job is submitted, not when it is collected."""
    if isinstance(source, Records):
        source.close()


@dataclass(frozen=True)
class _Kept:
    """What a job keeps beside the vectors, and how a new collection stores them."""

    store_text: bool = False
    metadata_fields: Sequence[str] = ()
    vector_type: VectorType = "auto"


def _request(records: RecordsLike, collection: str, settings: Settings, id_field: str, text_field: str,
             fields: Sequence[str] | None, skip_invalid: bool, sync: Literal["none", "full"],
             fmt: CorpusFormat, kept: _Kept) -> JobRequest:
    if isinstance(fields, str) or isinstance(kept.metadata_fields, str):
        raise TypeError("fields and metadata_fields are sequences of field names, e.g. ['title', 'body']")
    return JobRequest(
        corpus=_source(records, fmt),
        collection=collection,
        model=settings.model,
        spec=FieldSpec(id_field=id_field, text_fields=tuple(fields) if fields else (text_field,),
                       metadata_fields=tuple(kept.metadata_fields)),
        chunk_size=settings.chunk_size,
        token_budget=settings.chunk_token_budget,
        window=settings.max_tokens_per_record,
        skip_invalid=skip_invalid,
        sync=sync,
        sort_window=settings.sort_window,
        store_text=kept.store_text,
        vector_type=kept.vector_type,
    )


def run(records: RecordsLike, *, collection: str, settings: Settings | None = None, id_field: str = "id",
        text_field: str = "text", fields: Sequence[str] | None = None, skip_invalid: bool = False,
        sync: Literal["none", "full"] = "none", format: CorpusFormat = "auto",
        timeout: float | None = None, store_text: bool = False, metadata_fields: Sequence[str] = (),
        vector_type: VectorType = "auto", progress: bool = True) -> JobStats:
    """Embed `records` on the embedded default (an in-process worker, no servers) and return
    the finished job's figures. `store_text` and `metadata_fields` keep the texts and those
    fields beside the vectors; `vector_type` is how a new collection stores its vectors.
    `progress=False`: nothing on stderr (no loading line, no progress display)."""
    # imports torch: only when something is embedded in this process
    from .embedded import run_embedded

    with _using(settings) as current:
        request = _request(records, collection, current, id_field, text_field, fields, skip_invalid, sync, format,
                           _Kept(store_text, metadata_fields, vector_type))
        try:
            _, stats = run_embedded(request, job_timeout=timeout, progress=progress)
        finally:
            _close(request.corpus)
        return stats


def submit(records: RecordsLike, *, collection: str, settings: Settings | None = None, id_field: str = "id",
           text_field: str = "text", fields: Sequence[str] | None = None, skip_invalid: bool = False,
           sync: Literal["none", "full"] = "none", format: CorpusFormat = "auto", store_text: bool = False,
           metadata_fields: Sequence[str] = (), vector_type: VectorType = "auto") -> str:
    """Validate `records`, enqueue them on the fleet at settings.broker_url and return the job
    id once every chunk is sent (the workers may still be encoding). The keyword arguments
    are run's."""
    from .fleet.sending import fleet_sender
    from .jobs.submit import submit as submit_job

    with _using(settings) as current:
        request = _request(records, collection, current, id_field, text_field, fields, skip_invalid, sync, format,
                           _Kept(store_text, metadata_fields, vector_type))
        try:
            # The broker is checked before anything is written: BrokerUnavailable leaves no job.
            return submit_job(_engine(current), request, fleet_sender(current)).job_id
        finally:
            _close(request.corpus)


def wait(job_id: str, *, settings: Settings | None = None, timeout: float | None = None,
         progress: bool = True) -> JobStats:
    """Block until the job is done and return its figures; meanwhile re-send the chunks held
    by dead workers. Prints a progress line to stderr every 10 s (a bar on a terminal);
    `progress=False`: nothing."""
    from .fleet.sending import fleet_sender
    from .jobs.follow import follow

    current = _resolved(settings)
    engine = _reader(current)
    return follow(engine, resolve_job_id(engine, job_id), current, lambda: fleet_sender(current), timeout=timeout,
                  show=progress)


def status(job_id: str, *, settings: Settings | None = None) -> JobStats:
    """The job's state and counts now (stalled is set when nothing moved for lease_seconds).
    `job_id` may be any unique prefix of the id, here and in wait and cancel."""
    from .store.ledger import abandon_orphaned

    current = _resolved(settings)
    engine = _reader(current)
    full_id = resolve_job_id(engine, job_id)
    abandon_orphaned(engine)  # an embedded run's job whose process is gone is abandoned, not running
    return job_stats(engine, full_id, lease_seconds=current.lease_seconds,
                     dead_after=current.dead_after_seconds)


def cancel_counted(job_id: str, *, settings: Settings | None = None) -> tuple[int, JobStats]:
    """cancel, with the number of open chunks it cancelled (what the CLI prints)."""
    current = _resolved(settings)
    engine = _reader(current)
    job_id = resolve_job_id(engine, job_id)
    count = cancel_job(engine, job_id)
    return count, job_stats(engine, job_id)


def cancel(job_id: str, *, settings: Settings | None = None) -> JobStats:
    """Cancel the job: its queued chunks are skipped when they arrive, chunks being encoded
    are not stored, the vectors already stored stay. Returns its figures after."""
    return cancel_counted(job_id, settings=settings)[1]


def export(collection: str, path: str | Path, *, version: int | None = None, settings: Settings | None = None,
           format: Literal["npy", "parquet"] | None = None) -> Exported:
    """Write the collection's vectors in corpus order to `path`. format "npy": the (N, d)
    float32 matrix (.npy) and its ids beside it (PATH.ids.jsonl, one JSON string a line:
    store.export.read_ids reads it). format "parquet": one Parquet file with columns id,
    position, vector (fixed-size list of float32) and, when the version keeps them, text and
    metadata (JSON text). None: parquet when `path` ends in .parquet, else npy."""
    from .store.collections import get_collection
    from .store.export import export_npy, export_parquet, format_for, ids_path_for

    current = _resolved(settings)
    engine = _reader(current)
    info = get_collection(engine, collection)
    key = info.current_key if version is None else next(
        (v.key for v in info.versions if v.version == version), None)
    if key is None:
        raise LedgerError(f"collection {collection!r} has no version {version}")
    out = Path(path)
    chosen = format or format_for(out)
    if chosen == "parquet":
        rows, dim, columns = export_parquet(engine, key, out)
        return Exported(out, None, rows, dim, "parquet", tuple(columns))
    if chosen != "npy":
        raise ValueError(f"unknown export format {chosen!r}: use 'npy' or 'parquet'")
    rows, dim = export_npy(engine, key, out)
    return Exported(out, ids_path_for(out), rows, dim)


def collections(*, settings: Settings | None = None) -> list[CollectionSummary]:
    """Every collection with its versions and their row counts (`.as_dict()` is what
    `embedfleet collections --json` prints)."""
    from .store.collections import list_collections

    return list_collections(_reader(_resolved(settings)))


def delete_collection(name: str, *, settings: Settings | None = None) -> Deleted:
    """Delete a collection: its versions' vectors, its versions and its jobs' history.
    Refused (LedgerError) while one of its jobs has not ended."""
    from .store.collections import delete_collection as delete
    from .store.ledger import abandon_orphaned

    engine = _reader(_resolved(settings))
    abandon_orphaned(engine, name)  # a dead embedded run's job holds nothing up
    return delete(engine, name)


@overload
def search(collection: str, query: str, *, k: int = 10,  # type: ignore[overload-overlap]  # str first
           fleet: bool = False, timeout: float = 10.0, settings: Settings | None = None) -> list[Hit]: ...


@overload
def search(collection: str, query: Sequence[str], *, k: int = 10, fleet: bool = False, timeout: float = 10.0,
           settings: Settings | None = None) -> list[list[Hit]]: ...


def search(collection: str, query: str | Sequence[str], *, k: int = 10, fleet: bool = False,
           timeout: float = 10.0, settings: Settings | None = None) -> list[Hit] | list[list[Hit]]:
    """The k records most like `query` in the collection's current version, best first. A
    sequence of queries gives one list of hits per query, in order.

    The queries are encoded by a model resident in this process (loaded once, on the first
    search, and kept), or with `fleet=True` by a fleet worker that already holds it, so even
    a one-off search from a fresh process costs milliseconds; `timeout` bounds the wait for
    a worker's answer (QueryUnanswered)."""
    from .fleet.resident import get_encoder  # imports torch, on first use
    from .store.collections import get_collection
    from .store.search import top_k
    from .store.vectors import stored_extras

    with _using(settings) as current:
        engine = _reader(current)
        version = get_collection(engine, collection).current
        queries = [query] if isinstance(query, str) else list(query)
        if not queries:
            return []
        if fleet:
            from .fleet.queries import encode_on_fleet

            vectors = encode_on_fleet(current, version.model, queries, timeout)
        else:
            vectors = get_encoder(version.model, announce=True).encode_batch(queries)
        rows = top_k(engine, version.key, vectors, k)
        extras = stored_extras(engine, version.key, {record_id for row in rows for record_id, _ in row})
    hits = [[Hit(record_id, score, *extras.get(record_id, (None, None))) for record_id, score in row] for row in rows]
    return hits[0] if isinstance(query, str) else hits


# --- Jobs a collection's own options describe, versions, re-sends and dead letters ----------


@dataclass(frozen=True)
class Started:
    """A job that reindex or migrate started: what its submission read and sent, and, when it
    ran here (`local=True`), its final figures. On the fleet `stats` is None: `wait(job_id)`."""

    submission: Submission
    stats: JobStats | None = None

    @property
    def job_id(self) -> str:
        return self.submission.job_id


def start(request: JobRequest, *, local: bool, settings: Settings | None = None,
          on_job: Callable[[str], None] | None = None) -> Started:
    """Run `request` on the embedded default (`local`, returning when it is done) or submit it
    to the fleet (returning once every chunk is sent). `on_job` hears the job id before any
    chunk is sent. What the CLI's run, submit, reindex and migrate call."""
    with _using(settings) as current:
        if local:
            from .embedded import run_embedded

            submission, stats = run_embedded(request)
            return Started(submission, stats)
        from .fleet.sending import fleet_sender
        from .jobs.submit import submit as submit_job
        from .store.engine import redact

        # The broker is checked before anything is written: BrokerUnavailable leaves no job.
        submission = submit_job(_engine(current), request, fleet_sender(current), on_job=on_job,
                                broker=f"the broker at {redact(current.broker_url)}")
        return Started(submission)


def reindex(collection: str, *, sync: Literal["none", "full"] | None = None, local: bool = False,
            settings: Settings | None = None, on_job: Callable[[str], None] | None = None) -> Started:
    """Read the collection's registered source again, the same way (fields, chunking, what it
    keeps): only new and changed records are embedded; `sync="full"` also deletes the records
    the source no longer has. On the fleet, or here with `local=True`."""
    from .jobs.reindex import registered_request

    current = _resolved(settings)
    request = registered_request(_reader(current), collection, current, sync=sync)
    return start(request, local=local, settings=current, on_job=on_job)


def migrate(collection: str, model: str, *, cutover: bool = True, check_model: bool = True, local: bool = False,
            settings: Settings | None = None, on_job: Callable[[str], None] | None = None,
            on_version: Callable[[Version], None] | None = None) -> Started:
    """Re-embed the collection with `model` (any dimension) into a new version. Reads stay on
    the current version until the new one is complete, then switch in one transaction
    (`cutover=False`: leave that to `cutover`). `check_model` checks the model's files here
    first (a host without them: False). Nothing sent (bad input, broker down): no version left."""
    from .corpus.readers import CorpusError
    from .corpus.validation import InvalidInput
    from .fleet.sending import BrokerUnavailable
    from .jobs.reindex import registered_request
    from .store.collections import drop_version as drop
    from .store.collections import new_version

    if check_model:
        # Its files, not a load: this host may be a producer without torch. A worker that
        # cannot load it anyway dead-letters its chunks (ModelUnavailable) after the cap.
        from .encode.availability import model_problem

        problem = model_problem(model)
        if problem:
            raise ModelNotFound(f"cannot load model {model!r}: {problem}; no version was created "
                                "(--no-model-check if only the workers have it)")
    current = _resolved(settings)
    engine = _reader(current)
    request = registered_request(engine, collection, current)  # fails early if the source is gone
    version = new_version(engine, collection, model)
    if on_version is not None:
        on_version(version)
    request = replace(request, model=model, version_key=version.key, cutover=cutover, sync="none")
    try:
        return start(request, local=local, settings=current, on_job=on_job)
    except (InvalidInput, CorpusError, BrokerUnavailable):
        drop(engine, collection, version.version)  # nothing was sent: leave no empty version behind
        raise


def cutover(collection: str, version: int | None = None, *, settings: Settings | None = None) -> Version:
    """Switch reads to a complete version (default: the newest); the current one becomes the
    rollback target. Returns the version now read."""
    from .store.collections import cutover as switch

    return switch(_reader(_resolved(settings)), collection, version)


def rollback(collection: str, *, settings: Settings | None = None) -> Version:
    """Switch reads back to the previous version, until it is dropped. Returns it."""
    from .store.collections import rollback as back

    return back(_reader(_resolved(settings)), collection)


def drop_version(collection: str, version: int, *, settings: Settings | None = None) -> int:
    """Delete a version that is not current (and with it, the rollback to it). Returns the
    vectors deleted."""
    from .store.collections import drop_version as drop

    return drop(_reader(_resolved(settings)), collection, version)


def resume(job_id: str, *, settings: Settings | None = None) -> tuple[str, int]:
    """Send again every chunk of the job that is not done (after the broker lost its queues).
    Returns the job's full id and the chunks re-sent."""
    from .chunks.resend import resend_open_chunks
    from .chunks.sending import payload_sender
    from .fleet.sending import fleet_sender

    current = _resolved(settings)
    engine = _reader(current)
    full_id = resolve_job_id(engine, job_id)
    return full_id, resend_open_chunks(engine, payload_sender(fleet_sender(current)), full_id)


def dead_letters(*, job: str | None = None, include_resolved: bool = False, limit: int | None = None,
                 ids: Sequence[int] = (), settings: Settings | None = None) -> list[Letter]:
    """Dead letters, oldest first: those of `job` (any unique start of its id; an unknown job
    raises), the letters `ids`, or every open one; `include_resolved` adds redriven ones."""
    from .chunks.dead_letters import get_letters, list_letters

    engine = _reader(_resolved(settings))
    if ids:
        return get_letters(engine, ids)
    # An unknown job is an error, not "no dead letters": a typo must not look like a clean job.
    job_id = resolve_job_id(engine, job) if job else None
    return list_letters(engine, job_id, include_resolved, limit)


def redrive(letters: Sequence[Letter], *, settings: Settings | None = None) -> list[str]:
    """Send the letters' records through the normal path again (on the fleet): a new job per
    version, each letter resolved when its record is stored. Returns the job ids."""
    from .fleet.sending import fleet_sender
    from .jobs.redrive import redrive as send_again

    current = _resolved(settings)
    return send_again(_reader(current), fleet_sender(current), letters, current.chunk_size,
                      current.chunk_token_budget, current.max_tokens_per_record)
