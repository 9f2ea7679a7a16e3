"""What the commands share, public so a command module of any size can use it: the common
options, settings from flags, the job request from the corpus options, and how a job's
figures are printed."""

from __future__ import annotations

import json
from typing import Any

import click
from sqlalchemy import Engine

from ..config.settings import Settings, set_settings
from ..producers.readers import Corpus, Source, SqlSource
from ..producers.records import FieldSpec
from ..producers.submit import JobRequest, Submission
from ..storage.jobs import JobStats

DB_OPTION = click.option("--db", default=None, help="SQLAlchemy database URL [EMBEDFLEET_DATABASE_URL].")


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
                     show_default=True),
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
    # Corpus.format is a Literal, the Source protocol's a plain (settable) str: readers.py's to fix.
    return Corpus(opts["corpus"], opts["fmt"])


def job_request(settings: Settings, opts: dict[str, Any]) -> JobRequest:
    """The job the corpus options describe."""
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
    if stats.state == "abandoned":
        return ("abandoned: its producer stopped before sending every chunk; submit the corpus again "
                "(records already stored are skipped as unchanged)")
    if stats.stalled:
        return (f"stalled: no chunk sent, started or done for over {lease_seconds:.0f} s; if the broker lost "
                f"its messages, `embedfleet resume {stats.job_id}` sends the open chunks again")
    return None


def stats_json(engine: Engine, stats: JobStats) -> dict[str, Any]:
    """The job's figures with its latency and utilisation."""
    from ..storage.metrics import job_metrics

    return {**stats.as_dict(), **job_metrics(engine, stats.job_id, stats)}


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))
