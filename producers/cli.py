"""The `embedfleet` command. Commands that need the model import workers inside themselves,
so `submit`, `status` and `export` run on a host without torch."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..config.settings import Settings, get_settings, set_settings
from .readers import Corpus, CorpusError, Source, SqlSource
from .records import FieldSpec
from .submit import JobRequest, Submission
from .validation import InvalidInput
from ..storage.engine import get_engine, redact
from ..storage.errors import JobEnded
from ..storage.ledger import JobStats, LedgerError, job_stats


def _apply(**overrides: Any) -> Settings:
    """Settings from the environment, with the flags given on the command line on top."""
    given = {k: v for k, v in overrides.items() if v is not None}
    settings = Settings(**given) if given else Settings()
    set_settings(settings)
    return settings


DB_OPTION = click.option("--db", default=None, help="SQLAlchemy database URL [EMBEDFLEET_DATABASE_URL].")


def corpus_options(func: Any) -> Any:
    """The options that say what to read and how: shared by run and submit."""
    options = [
        click.argument("corpus", required=False),
        click.option("--collection", required=True, help="Where the vectors go (letters, digits, _ and -)."),
        click.option("--source-url", default=None, help="Read a SQL table or query instead of CORPUS (SQLAlchemy URL)."),
        click.option("--table", default=None, help="With --source-url: the table to read."),
        click.option("--query", default=None, help="With --source-url: the query to read (give it an ORDER BY)."),
        click.option("--id-field", default="id", show_default=True, help="The field holding each record's id."),
        click.option("--text-field", default="text", show_default=True, help="The field holding the text."),
        click.option("--fields", default=None, help="Build the text from these comma-separated fields instead."),
        click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "csv"]), default="auto", show_default=True),
        click.option("--chunk-size", type=int, default=None, help="Most records per chunk [256]."),
        click.option("--skip-invalid", is_flag=True, help="Send the valid records and report the invalid ones."),
        click.option("--sync", type=click.Choice(["none", "full"]), default="none", show_default=True,
                     help="full: also delete stored vectors whose ids the source no longer holds."),
        DB_OPTION,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _source(opts: dict[str, Any]) -> Source:
    if opts["source_url"]:
        if opts["corpus"]:
            raise click.UsageError("give either CORPUS or --source-url, not both")
        return SqlSource(opts["source_url"], opts["table"], opts["query"])
    if not opts["corpus"]:
        raise click.UsageError("give a CORPUS file (or - for stdin), or --source-url with --table or --query")
    return Corpus(opts["corpus"], opts["fmt"])


def _request(settings: Settings, opts: dict[str, Any]) -> JobRequest:
    fields = opts["fields"]
    text_fields = tuple(f.strip() for f in fields.split(",") if f.strip()) if fields else (opts["text_field"],)
    return JobRequest(
        corpus=_source(opts),
        collection=opts["collection"],
        model=settings.model,
        spec=FieldSpec(id_field=opts["id_field"], text_fields=text_fields),
        chunk_size=settings.chunk_size,
        token_budget=settings.chunk_token_budget,
        window=settings.max_tokens_per_record,
        skip_invalid=opts["skip_invalid"],
        sync=opts["sync"],
        sort_window=settings.sort_window,
    )


def _report(submission: Submission) -> None:
    if submission.skipped_invalid:
        click.echo(f"skipped {submission.skipped_invalid} invalid records:\n{submission.invalid_report}", err=True)


def _summary(stats: JobStats) -> str:
    return (
        f"job {stats.job_id} {stats.state}: read {stats.records_read}, stored {stats.stored}, "
        f"skipped {stats.skipped}, dead {stats.dead}, truncated {stats.truncated}, "
        f"{stats.elapsed:.1f} s, {stats.rate:.1f} records/s\n"
        f"changes: added {stats.added}, updated {stats.updated}, unchanged {stats.unchanged}, "
        f"deleted {stats.deleted}, deduplicated {stats.deduplicated}"
    )


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def cli(verbose: bool) -> None:
    """Turn large text corpora into vectors on a fleet of Celery workers."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


class BrokerUnavailable(Exception):
    """The broker did not answer before anything was written."""


# Seconds a producer waits for the broker to accept a connection before it gives up.
BROKER_CONNECT_TIMEOUT = 5.0


def _fleet_sender(settings: Settings):  # type: ignore[no-untyped-def]
    """A sender on the configured broker, checked first: an unreachable broker fails here,
    before a job row or a chunk is written, instead of leaving a job `submitting`."""
    from ..config.celery_app import app
    from .submit import celery_sender

    app.conf.broker_url = settings.broker_url
    try:
        with app.connection_for_write(connect_timeout=BROKER_CONNECT_TIMEOUT) as conn:
            conn.transport_options.update(socket_connect_timeout=BROKER_CONNECT_TIMEOUT)
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5,
                                   timeout=BROKER_CONNECT_TIMEOUT)
    except Exception as exc:
        raise BrokerUnavailable(f"broker unreachable at {redact(settings.broker_url)}: {_reason(exc)}") from exc
    return celery_sender(app)


def _announce(job_id: str) -> None:
    """The job id on stdout as soon as the job exists, before its first chunk is sent."""
    click.echo(job_id)
    sys.stdout.flush()


def _submit_fleet(engine: Any, request: JobRequest, settings: Settings) -> Submission:
    from .submit import submit as submit_job

    sender = _fleet_sender(settings)
    return submit_job(engine, request, sender, on_job=_announce,
                      broker=f"the broker at {redact(settings.broker_url)}")


@cli.command()
@corpus_options
@click.option("--batch-size", type=int, default=None, help="Most texts per forward pass [32].")
def run(batch_size: int | None, **opts: Any) -> None:
    """Embed CORPUS on the embedded default: in-process worker, SQLite file, no servers."""
    settings = _apply(database_url=opts["db"], chunk_size=opts["chunk_size"], batch_size=batch_size)
    from ..workers.embedded import run_embedded

    submission, stats = run_embedded(_request(settings, opts))
    click.echo(_summary(stats))
    _report(submission)


@cli.command()
@corpus_options
@click.option("--wait", is_flag=True, help="Follow the job until it ends.")
def submit(wait: bool, **opts: Any) -> None:
    """Enqueue CORPUS on the fleet (EMBEDFLEET_BROKER_URL) and print the job id."""
    settings = _apply(database_url=opts["db"], chunk_size=opts["chunk_size"])
    request = _request(settings, opts)
    engine = get_engine(settings.database_url)
    submission = _submit_fleet(engine, request, settings)
    _report(submission)
    if wait:
        click.echo(_summary(follow(engine, submission.job_id)))


def follow(engine: Any, job_id: str) -> JobStats:
    """A live bar on a terminal (plain lines otherwise) until the job is done; through
    database drops it retries with backoff (producers/progress.py)."""
    from .progress import JobProgress
    from .recovery import resend_stranded

    settings = get_settings()
    senders: list[Any] = []

    def send(chunk: Any) -> None:
        # Made on first use: following needs no broker (`status --watch` on a monitoring
        # host) until a dead worker's chunk has to be re-sent.
        if not senders:
            senders.append(_fleet_sender(settings))
        senders[0](chunk)

    with JobProgress(engine, job_id, lease_seconds=settings.lease_seconds,
                     sweep=lambda: resend_stranded(engine, send, settings.dead_after_seconds, job_id),
                     sweep_every=settings.heartbeat_seconds) as progress:
        return progress.wait_done()


def condition(stats: JobStats, lease_seconds: float) -> str | None:
    """In words, why a job has no ETA: it ended without finishing, or nothing moves."""
    if stats.state == "cancelled":
        return "cancelled: no more chunks are stored; the vectors stored before it stay"
    if stats.state == "abandoned":
        return ("abandoned: its producer stopped before sending every chunk; submit the corpus again "
                "(records already stored are skipped as unchanged)")
    if stats.stalled:
        return (f"stalled: no chunk sent, started or done for over {lease_seconds:.0f} s; if the broker lost "
                f"its messages, `embedfleet resume {stats.job_id}` sends the open chunks again")
    return None


@cli.command()
@click.argument("job", required=False)
@click.option("--collection", default=None, help="Show a collection and its versions instead of a job.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--watch", is_flag=True, help="Follow the job with a progress display until it is done.")
@DB_OPTION
def status(job: str | None, collection: str | None, as_json: bool, watch: bool, db: str | None) -> None:
    """State, counts, rate and ETA of JOB (or the versions of --collection)."""
    settings = _apply(database_url=db)
    engine = get_engine(settings.database_url)
    if collection:
        from .cli_collections import collection_status

        collection_status(engine, collection, as_json)
        return
    if not job:
        raise click.UsageError("give a JOB id or --collection NAME")
    stats = follow(engine, job) if watch else job_stats(engine, job, lease_seconds=settings.lease_seconds)
    words = condition(stats, settings.lease_seconds)
    if as_json:
        click.echo(json.dumps({**stats_json(engine, stats), "condition": words}, indent=2))
        return
    eta = "-" if stats.eta_seconds is None else f"{stats.eta_seconds:.0f} s"
    click.echo(_summary(stats))
    click.echo(f"chunks {stats.chunks_done}/{stats.chunks_total}, retries {stats.retries}, splits {stats.splits}, "
               f"ETA {eta}")
    if words:
        click.echo(f"job {stats.job_id} is {words}")


def stats_json(engine: Any, stats: JobStats) -> dict[str, Any]:
    """The job's figures and, where the metrics module is there, its latency and utilisation."""
    figures = stats.as_dict()
    try:
        from ..storage.metrics import job_metrics
    except ImportError:
        return figures
    return {**figures, **job_metrics(engine, stats.job_id, stats)}


@cli.command()
@click.option("--collection", required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PATH.npy")
@click.option("--version", "number", type=int, default=None, help="A version other than the current one.")
@DB_OPTION
def export(collection: str, out: Path, number: int | None, db: str | None) -> None:
    """Write the collection's (N, d) float32 matrix in corpus order, and PATH.ids.jsonl beside it."""
    from ..storage.collections import get_collection
    from ..storage.export import export_npy, ids_path_for

    settings = _apply(database_url=db)
    engine = get_engine(settings.database_url)
    info = get_collection(engine, collection)
    key = info.current_key if number is None else next((v.key for v in info.versions if v.version == number), None)
    if key is None:
        raise LedgerError(f"collection {collection!r} has no version {number}")
    rows, dim = export_npy(engine, key, out)
    click.echo(f"wrote {rows} x {dim} to {out} and ids to {ids_path_for(out)}")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--queues", "-Q", default="embed,collect,dead_letter", show_default=True, help="Queues to consume.")
@click.option("--concurrency", "-c", type=int, default=None,
              help="Worker processes [one per core on a CPU, one per GPU with --device cuda].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="[EMBEDFLEET_DEVICE]")
@click.option("--batch-size", type=int, default=None, help="Most texts per forward pass [32].")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(queues: str, concurrency: int | None, device: str | None, batch_size: int | None, loglevel: str,
           celery_args: tuple[str, ...]) -> None:
    """A fleet worker on EMBEDFLEET_BROKER_URL (extra arguments go to `celery worker`)."""
    from ..workers.precision import gpu_count

    if device:
        os.environ["EMBEDFLEET_DEVICE"] = device
    if batch_size:
        os.environ["EMBEDFLEET_BATCH_SIZE"] = str(batch_size)
    set_settings(None)
    gpus = gpu_count() if get_settings().device in ("auto", "cuda") else 0
    # Measured on 2 cores: two processes of one torch thread beat one of two threads by
    # 7-10% (docs/benchmarks.md), so a CPU worker runs a process per core; a GPU worker
    # runs a process per GPU, each pinned to its own.
    concurrency = concurrency or gpus or os.cpu_count() or 1
    os.environ.setdefault("EMBEDFLEET_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // concurrency)))
    set_settings(None)
    if "embed" in queues.split(","):
        # Fail here, with the reason in one line, rather than in every task: a worker that
        # cannot load its encoder or find its model's files must not take chunks at all.
        from ..workers.availability import model_problem
        from ..workers.encoder import EncoderConfigError, encoder_class

        try:
            encoder_class(get_settings())
        except EncoderConfigError as exc:
            raise click.ClickException(str(exc)) from exc
        problem = None if get_settings().encoder else model_problem(get_settings().model)
        if problem:
            raise click.ClickException(f"cannot load model {get_settings().model!r}: {problem}")
    from ..config.celery_app import app

    app.conf.broker_url = get_settings().broker_url
    argv = ["worker", "-Q", queues, "-c", str(concurrency), "-l", loglevel, *celery_args]
    app.worker_main(argv)
    from ..workers.resident import model_load_failed

    if model_load_failed():
        sys.exit(1)  # a pool process could not load the model and stopped the worker; it logged why


@cli.command()
@click.argument("corpus")
@click.option("--id-field", default="id", show_default=True)
@click.option("--text-field", default="text", show_default=True)
@click.option("--fields", default=None, help="Build the text from these comma-separated fields.")
@click.option("--only", default="batching,direct,run,fleet,layout,pipeline,storage,stress,memory", show_default=True,
              help="Sections to run, comma-separated.")
@click.option("--limit", type=int, default=None, help="Use the first N valid records.")
@click.option("--broker-url", default="redis://127.0.0.1:6379/14", show_default=True,
              help="A broker database of the bench's own: the fleet sections purge its queues.")
@click.option("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test", show_default=True,
              help="A PostgreSQL server on which the bench creates (and drops) a database of its own.")
@click.option("--json", "as_json", is_flag=True)
def bench(corpus: str, id_field: str, text_field: str, fields: str | None, only: str, limit: int | None,
          broker_url: str, pg_url: str, as_json: bool) -> None:
    """Measure embedfleet against a plain SentenceTransformer.encode loop, in one run."""
    from ..workers.bench import run_bench

    text_fields = tuple(f.strip() for f in fields.split(",") if f.strip()) if fields else (text_field,)
    run_bench(corpus, FieldSpec(id_field, text_fields), [s.strip() for s in only.split(",")], limit, broker_url,
              pg_url, as_json)


@cli.command()
@click.argument("job")
@DB_OPTION
def resume(job: str, db: str | None) -> None:
    """Send again every chunk of JOB that is not done (after the broker lost its queues)."""
    from .recovery import resend_open_chunks

    settings = _apply(database_url=db)
    count = resend_open_chunks(get_engine(settings.database_url), _fleet_sender(settings), job)
    click.echo(f"re-sent {count} open chunks of job {job}")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(loglevel: str, celery_args: tuple[str, ...]) -> None:
    """The scheduler: the nightly reindex and the stalled-job reconciler (extra arguments go to `celery beat`)."""
    from ..config.celery_app import app

    app.conf.broker_url = get_settings().broker_url
    app.start(["beat", "-l", loglevel, *celery_args])


# Command groups in modules of their own, registered on `cli` when imported.
from . import cli_cancel, cli_collections, cli_dlq, cli_ops  # noqa: E402,F401

# Exit codes: 0 ok; 1 a failure (a service unreachable, a job cancelled or abandoned);
# 2 usage or invalid input (click's own usage errors exit 2 as well).
EXIT_FAILURE = 1
EXIT_INPUT = 2


def _reason(exc: BaseException) -> str:
    """The first line of what the driver said (SQLAlchemy appends SQL and a link), secrets out."""
    orig = getattr(exc, "orig", None) or exc
    line = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    for url in (get_settings().database_url, get_settings().broker_url):
        try:
            from sqlalchemy.engine import make_url

            password = make_url(url).password
        except Exception:
            password = url.partition("://")[2].partition("@")[0].partition(":")[2] if "@" in url else None
        if password:
            line = line.replace(str(password), "***")
    return line[:300]


def _database_error(exc: BaseException) -> str:
    return f"database unreachable at {redact(get_settings().database_url)}: {_reason(exc)}"


def _broker_error(exc: BaseException) -> str:
    return f"broker unreachable at {redact(get_settings().broker_url)}: {_reason(exc)}"


def _settings_error(exc: Any) -> str:
    fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
    return f"invalid setting (EMBEDFLEET_... or a flag): {fields}"


def _error_map() -> list[tuple[tuple[type[BaseException], ...], Any, int]]:
    """(exception types, message, exit code): the first match wins, so subclasses come first."""
    import kombu.exceptions
    import pydantic
    import redis.exceptions
    import sqlalchemy.exc

    plain = str
    return [
        ((JobEnded,), plain, EXIT_FAILURE),
        ((InvalidInput, CorpusError, LedgerError), plain, EXIT_INPUT),
        ((pydantic.ValidationError,), _settings_error, EXIT_INPUT),
        ((sqlalchemy.exc.ArgumentError,), lambda e: f"invalid database URL: {_reason(e)}", EXIT_INPUT),
        ((BrokerUnavailable,), plain, EXIT_FAILURE),
        ((sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError), _database_error, EXIT_FAILURE),
        ((sqlalchemy.exc.DBAPIError,), lambda e: f"database error: {_reason(e)}", EXIT_FAILURE),
        ((kombu.exceptions.OperationalError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError),
         _broker_error, EXIT_FAILURE),
        ((TimeoutError, ConnectionError), lambda e: f"{type(e).__name__}: {_reason(e)}", EXIT_FAILURE),
    ]


def main() -> None:
    """Every error a user can cause or meet (a service down) ends as one line on stderr and
    an exit code, never a traceback; `-v` logs the traceback too."""
    try:
        cli(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        for types, message, code in _error_map():
            if isinstance(exc, types):
                logging.getLogger(__name__).info("%s", type(exc).__name__, exc_info=True)  # -v: the traceback too
                click.echo(f"error: {message(exc)}", err=True)
                sys.exit(code)
        raise


if __name__ == "__main__":
    main()
