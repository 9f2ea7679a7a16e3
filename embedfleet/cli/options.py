"""What the commands share, public so a command module of any size can use it: the common
options, settings from flags, the job request from the corpus options, and how a job's
figures are printed.

Conventions every command follows (tests/cli/test_conventions.py checks them on `--help`):
a command that talks to the database takes DB_OPTION, one that talks to the broker takes
BROKER_OPTION, both read from the environment through click's `envvar` (a flag wins over
the environment, and apply_settings puts what was given over the rest of the Settings);
a command that prints data takes JSON_OPTION and then prints one JSON document on stdout.
"""

from __future__ import annotations

import json
from typing import Any

import click
from sqlalchemy import Engine

from ..corpus.readers import Corpus, Source, SqlSource
from ..corpus.records import FieldSpec
from ..jobs.stats import NO_WORKER, JobStats
from ..jobs.submit import JobRequest, Submission
from ..settings import MAX_CHUNK_SIZE, Settings, set_settings

DB_OPTION = click.option(
    "--db", envvar="EMBEDFLEET_DATABASE_URL", show_envvar=True, default=None, metavar="URL",
    help="SQLAlchemy database URL of the ledger and vectors [default: sqlite:///embedfleet.db].")
BROKER_OPTION = click.option(
    "--broker-url", envvar="EMBEDFLEET_BROKER_URL", show_envvar=True, default=None, metavar="URL",
    help="The fleet's Celery broker [default: redis://127.0.0.1:6379/0].")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document on stdout.")
# The collection a command acts on (reindex, migrate, versions, search, export).
COLLECTION_OPTION = click.option("--collection", required=True, help="The collection, by name.")
STRICT_OPTION = click.option(
    "--strict", is_flag=True, help="Exit 3 when the job finished with dead letters (records not embedded).")
CHUNK_SIZE_OPTION = click.option("--chunk-size", type=click.IntRange(min=1, max=MAX_CHUNK_SIZE), default=None,
                                 envvar="EMBEDFLEET_CHUNK_SIZE", show_envvar=True,
                                 help="Most records per chunk [default: 256].")
BATCH_SIZE_OPTION = click.option("--batch-size", type=click.IntRange(min=1), default=None,
                                 envvar="EMBEDFLEET_BATCH_SIZE", show_envvar=True,
                                 help="Most texts per forward pass [default: 32].")
MODEL_OPTION = click.option("--model", default=None, envvar="EMBEDFLEET_MODEL", show_envvar=True,
                            help="sentence-transformers model name or directory "
                                 "[default: sentence-transformers/all-MiniLM-L6-v2].")


def _old_version_flag(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise click.UsageError(f"--version is the program's version now (`embedfleet --version`); "
                               f"use --collection-version {value}", ctx)


# `--version` named a collection version on export, cutover and drop-version until it came to
# mean the program's version: a script still passing it gets this one line, not a silent change.
OLD_VERSION_FLAG = click.option("--version", "old_version", hidden=True, default=None, expose_value=False,
                                callback=_old_version_flag, is_eager=True)


def collection_version_option(help: str, required: bool = False) -> Any:
    """--collection-version N (not `--version`: that is the program's, `embedfleet --version`)."""
    def decorate(func: Any) -> Any:
        option = click.option("--collection-version", "number", type=click.IntRange(min=1), default=None,
                              required=required, metavar="N", help=help)
        return OLD_VERSION_FLAG(option(func))
    return decorate


COLLECTION_VERSION_OPTION = collection_version_option("A version other than the current one.")


def apply_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the flags given on the command line on top; they
    become the process's settings (the layers below read them)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    settings = Settings(**given) if given else Settings()
    set_settings(settings)
    return settings


def corpus_options(func: Any) -> Any:
    """The options that say what to read and how: shared by run and submit."""
    options = [
        click.argument("corpus", required=False),
        click.option("--collection", required=True, help="Where the vectors go (letters, digits, _ and -)."),
        click.option("--source-url", default=None,
                     help="Read a SQL table or query instead of CORPUS (SQLAlchemy URL)."),
        click.option("--table", default=None, help="With --source-url: the table to read."),
        click.option("--query", default=None, help="With --source-url: the query to read (give it an ORDER BY)."),
        click.option("--id-field", default="id", show_default=True, help="The field holding each record's id."),
        click.option("--text-field", default="text", show_default=True, help="The field holding the text."),
        click.option("--fields", default=None, help="Build the text from these comma-separated fields instead."),
        click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "csv", "parquet"]), default="auto",
                     show_default=True,
                     help="How CORPUS is read; auto: from its suffix (.jsonl, .csv, .parquet; stdin is JSONL)."),
        CHUNK_SIZE_OPTION,
        MODEL_OPTION,
        click.option("--skip-invalid", is_flag=True, help="Send the valid records and report the invalid ones."),
        click.option("--sync", type=click.Choice(["none", "full"]), default="none", show_default=True,
                     help="full: also delete stored vectors whose ids the source no longer holds."),
        click.option("--store-text", is_flag=True,
                     help="Keep each record's text beside its vector (search results and exports show it)."),
        click.option("--metadata-fields", default=None, metavar="A,B",
                     help="Keep these comma-separated fields beside the vector as JSON (not embedded)."),
        click.option("--vector-type", type=click.Choice(["auto", "vector", "halfvec", "bytea"]), default="auto",
                     envvar="EMBEDFLEET_VECTOR_TYPE", show_envvar=True, show_default=True,
                     help="How a new collection stores vectors: pgvector's vector or halfvec (half the space), "
                          "or float32 bytes; auto takes vector where the server has pgvector."),
        DB_OPTION,
        JSON_OPTION,
        STRICT_OPTION,
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
    # Corpus.format is a Literal, the Source protocol's a plain (settable) str: readers.py's to fix.
    return Corpus(opts["corpus"], opts["fmt"])


def job_request(settings: Settings, opts: dict[str, Any]) -> JobRequest:
    """The job the corpus options describe."""
    fields = opts["fields"]
    text_fields = tuple(f.strip() for f in fields.split(",") if f.strip()) if fields else (opts["text_field"],)
    metadata = opts.get("metadata_fields")
    metadata_fields = tuple(f.strip() for f in metadata.split(",") if f.strip()) if metadata else ()
    if metadata is not None and not metadata_fields:
        raise click.UsageError("--metadata-fields needs at least one field name")
    return JobRequest(
        corpus=_source(opts),
        collection=opts["collection"],
        model=settings.model,
        spec=FieldSpec(id_field=opts["id_field"], text_fields=text_fields, metadata_fields=metadata_fields),
        chunk_size=settings.chunk_size,
        token_budget=settings.chunk_token_budget,
        window=settings.max_tokens_per_record,
        skip_invalid=opts["skip_invalid"],
        sync=opts["sync"],
        sort_window=settings.sort_window,
        store_text=bool(opts.get("store_text")),
        vector_type=opts.get("vector_type") or "auto",
    )


def report_invalid(submission: Submission) -> None:
    if submission.skipped_invalid:
        click.echo(f"skipped {submission.skipped_invalid} invalid records:\n{submission.invalid_report}", err=True)


def summary(stats: JobStats) -> str:
    return (
        f"job {stats.job_id} {stats.state}: read {stats.records_read}, stored {stats.stored}, "
        f"skipped {stats.skipped}, dead {stats.dead}, truncated {stats.truncated}, "
        f"{stats.elapsed:.1f} s, {stats.rate:.1f} records/s\n"
        f"changes: added {stats.added}, updated {stats.updated}, unchanged {stats.unchanged}, "
        f"deleted {stats.deleted}, deduplicated {stats.deduplicated}"
    )


def condition(stats: JobStats, lease_seconds: float) -> str | None:
    """In words, why a job has no ETA: it ended without finishing, or nothing moves."""
    if stats.state == "cancelled":
        return "cancelled: no more chunks are stored; the vectors stored before it stay"
    runner = (stats.runner or "").split()
    if stats.state == "abandoned" and runner[:1] == ["embedded"]:
        host, pid = ([*runner[1:3], "?", "?"])[:2]
        return (f"abandoned: the embedded run that ran it (pid {pid} on {host}) is gone; run the same "
                "`embedfleet run` again to finish (records already stored are skipped)")
    if stats.state == "abandoned":
        return ("abandoned: its producer stopped before sending every chunk; submit the corpus again "
                "(records already stored are skipped as unchanged)")
    if stats.no_worker and not stats.stalled:
        return NO_WORKER
    if stats.stalled and runner[:1] == ["embedded"]:
        return (f"stalled: no chunk sent, started or done for over {lease_seconds:.0f} s in the embedded run "
                "that runs it, which is still alive")
    if stats.stalled and stats.no_worker:
        return (f"stalled: no chunk sent, started or done for over {lease_seconds:.0f} s, and {NO_WORKER}")
    if stats.stalled:
        return (f"stalled: no chunk sent, started or done for over {lease_seconds:.0f} s; if the broker lost "
                f"its messages, `embedfleet resume {stats.job_id}` sends the open chunks again")
    return None


def stats_json(engine: Engine, stats: JobStats) -> dict[str, Any]:
    """The job's figures with its latency and utilisation."""
    from ..jobs.metrics import job_metrics

    return {**stats.as_dict(), **job_metrics(engine, stats.job_id, stats)}


def print_json(data: Any) -> None:
    """One JSON document on stdout: what --json prints, whatever the command."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def submission_json(submission: Submission) -> dict[str, Any]:
    return {"job_id": submission.job_id, "records_read": submission.records_read,
            "skipped_invalid": submission.skipped_invalid, "truncated": submission.truncated,
            "chunks": submission.chunks}


def exit_for(stats: JobStats, strict: bool) -> None:
    """--strict: a job that finished with dead letters is exit 3, after its summary is printed."""
    from .errors import EXIT_DEAD_LETTERS

    if strict and stats.dead:
        click.echo(f"error: job {stats.job_id} finished with {stats.dead} dead letters "
                   f"(`embedfleet dlq list --job {stats.job_id[:8]}`)", err=True)
        raise SystemExit(EXIT_DEAD_LETTERS)
