"""Job commands: run, submit, status, cancel, resume and export."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import click

from .. import api
from ..jobs.stats import JobStats
from ..jobs.submit import Submission
from ..store.engine import existing_engine
from .main import cli
from .options import (
    BATCH_SIZE_OPTION,
    BROKER_OPTION,
    COLLECTION_OPTION,
    COLLECTION_VERSION_OPTION,
    DB_OPTION,
    JSON_OPTION,
    STRICT_OPTION,
    apply_settings,
    condition,
    corpus_options,
    exit_for,
    job_request,
    print_json,
    report_invalid,
    stats_json,
    submission_json,
    summary,
)


def announce(job_id: str, as_json: bool = False) -> None:
    """The job id as soon as the job exists, before its first chunk is sent: on stdout, or on
    stderr under --json (stdout then holds the one JSON document, printed at the end)."""
    if as_json:
        click.echo(f"job {job_id} submitting", err=True)
        return
    click.echo(job_id)
    sys.stdout.flush()


def print_finished(stats: JobStats, as_json: bool, submission: Submission | None = None) -> None:
    """A finished job's summary (run, submit --wait, reindex and migrate --wait)."""
    if as_json:
        print_json({**(submission_json(submission) if submission else {}), **stats.as_dict()})
    else:
        click.echo(summary(stats))


@cli.command()
@corpus_options
@BATCH_SIZE_OPTION
def run(batch_size: int | None, **opts: Any) -> None:
    """Embed CORPUS on the embedded default: in-process worker, SQLite file, no servers."""
    settings = apply_settings(database_url=opts["db"], chunk_size=opts["chunk_size"], batch_size=batch_size,
                              model=opts["model"])
    started = api.start(job_request(settings, opts), local=True, settings=settings)
    assert started.stats is not None  # a local job has run to its end
    print_finished(started.stats, opts["as_json"], started.submission)
    report_invalid(started.submission)
    exit_for(started.stats, opts["strict"])


@cli.command()
@corpus_options
@BROKER_OPTION
@click.option("--wait", is_flag=True, help="Follow the job until it ends.")
def submit(wait: bool, broker_url: str | None, **opts: Any) -> None:
    """Enqueue CORPUS on the fleet and print the job id (with --wait, follow it to the end)."""
    if opts["strict"] and not wait:
        raise click.UsageError("--strict needs --wait (without it, submit ends before any record is embedded)")
    settings = apply_settings(database_url=opts["db"], chunk_size=opts["chunk_size"], model=opts["model"],
                              broker_url=broker_url)
    submission = api.start(job_request(settings, opts), local=False, settings=settings,
                           on_job=lambda job_id: announce(job_id, opts["as_json"])).submission
    report_invalid(submission)
    if not wait:
        if opts["as_json"]:
            print_json(submission_json(submission))
        return
    stats = api.wait(submission.job_id, settings=settings)
    print_finished(stats, opts["as_json"], submission)
    exit_for(stats, opts["strict"])


@cli.command()
@click.argument("job", required=False)
@click.option("--collection", default=None, help="Show a collection and its versions instead of a job.")
@JSON_OPTION
@click.option("--watch", is_flag=True, help="Follow the job with a progress display until it is done.")
@STRICT_OPTION
@DB_OPTION
@BROKER_OPTION
def status(job: str | None, collection: str | None, as_json: bool, watch: bool, strict: bool, db: str | None,
           broker_url: str | None) -> None:
    """State, counts, rate and ETA of JOB, any unique start of its id (or the versions of
    --collection). --watch re-sends chunks held by dead workers, hence --broker-url."""
    if bool(job) == bool(collection):
        raise click.UsageError("give a JOB id or --collection NAME")
    if strict and not watch:
        raise click.UsageError("--strict needs --watch")
    settings = apply_settings(database_url=db, broker_url=broker_url)
    engine = existing_engine(settings.database_url)
    if collection:
        from .collections import collection_status

        collection_status(engine, collection, as_json)
        return
    assert job is not None  # one of the two, checked above
    stats = api.wait(job, settings=settings) if watch else api.status(job, settings=settings)
    words = condition(stats, settings.lease_seconds)
    if as_json:
        print_json({**stats_json(engine, stats), "condition": words})
    else:
        eta = "-" if stats.eta_seconds is None else f"{stats.eta_seconds:.0f} s"
        click.echo(summary(stats))
        click.echo(f"chunks {stats.chunks_done}/{stats.chunks_total}, retries {stats.retries}, "
                   f"splits {stats.splits}, ETA {eta}")
        if words:
            click.echo(f"job {stats.job_id} is {words}")
    if watch:
        exit_for(stats, strict)


@cli.command()
@click.argument("job")
@JSON_OPTION
@DB_OPTION
def cancel(job: str, as_json: bool, db: str | None) -> None:
    """Cancel JOB (any unique start of its id): its open chunks are skipped when they arrive,
    chunks being encoded are not stored, and the vectors already stored stay. Its version can
    then be dropped."""
    count, stats = api.cancel_counted(job, settings=apply_settings(database_url=db))
    if as_json:
        print_json({**stats.as_dict(), "cancelled_chunks": count})
        return
    click.echo(f"cancelled job {stats.job_id}: {count} open chunks will not be stored")
    click.echo(summary(stats))


@cli.command()
@click.argument("job")
@JSON_OPTION
@DB_OPTION
@BROKER_OPTION
def resume(job: str, as_json: bool, db: str | None, broker_url: str | None) -> None:
    """Send again every chunk of JOB (any unique start of its id) that is not done (after the
    broker lost its queues)."""
    job_id, count = api.resume(job, settings=apply_settings(database_url=db, broker_url=broker_url))
    if as_json:
        print_json({"job_id": job_id, "resent_chunks": count})
        return
    click.echo(f"re-sent {count} open chunks of job {job_id}")


@cli.command()
@COLLECTION_OPTION
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="PATH.npy, or PATH.parquet.")
@COLLECTION_VERSION_OPTION
@click.option("--format", "fmt", type=click.Choice(["npy", "parquet"]), default=None,
              help="npy: the matrix and PATH.ids.jsonl; parquet: one file with id, position, vector, and text "
                   "and metadata when kept. [default: from the suffix of --out: parquet for .parquet, else npy]")
@JSON_OPTION
@DB_OPTION
def export(collection: str, out: Path, number: int | None, fmt: Literal["npy", "parquet"] | None, as_json: bool,
           db: str | None) -> None:
    """Write the collection's vectors in corpus order: an (N, d) float32 matrix and PATH.ids.jsonl
    beside it, or one Parquet file (--format parquet, or --out PATH.parquet)."""
    done = api.export(collection, out, version=number, settings=apply_settings(database_url=db), format=fmt)
    if as_json:
        print_json({"collection": collection, "format": done.format, "path": str(done.path),
                    "ids_path": None if done.ids_path is None else str(done.ids_path), "columns": done.columns,
                    "rows": done.rows, "dim": done.dim})
        return
    if done.format == "parquet":
        click.echo(f"wrote {done.rows} x {done.dim} to {done.path} (Parquet: {', '.join(done.columns)})")
    else:
        click.echo(f"wrote {done.rows} x {done.dim} to {done.path} and ids to {done.ids_path}")
