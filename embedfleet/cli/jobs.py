"""Job commands: run, submit, status, cancel, resume and export."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import click
from sqlalchemy import Engine

from .. import api
from ..config.settings import Settings
from ..producers.sending import fleet_sender
from ..producers.submit import JobRequest, Submission
from ..storage.engine import get_engine, redact
from .main import cli
from .options import (
    DB_OPTION,
    apply_settings,
    condition,
    corpus_options,
    job_request,
    print_json,
    report_invalid,
    stats_json,
    summary,
)


def announce(job_id: str) -> None:
    """The job id on stdout as soon as the job exists, before its first chunk is sent."""
    click.echo(job_id)
    sys.stdout.flush()


def submit_to_fleet(engine: Engine, request: JobRequest, settings: Settings) -> Submission:
    from ..producers.submit import submit as submit_job

    return submit_job(engine, request, fleet_sender(settings), on_job=announce,
                      broker=f"the broker at {redact(settings.broker_url)}")


@cli.command()
@corpus_options
@click.option("--batch-size", type=int, default=None, help="Most texts per forward pass [32].")
def run(batch_size: int | None, **opts: Any) -> None:
    """Embed CORPUS on the embedded default: in-process worker, SQLite file, no servers."""
    settings = apply_settings(database_url=opts["db"], chunk_size=opts["chunk_size"], batch_size=batch_size)
    from ..embedded import run_embedded

    submission, stats = run_embedded(job_request(settings, opts))
    click.echo(summary(stats))
    report_invalid(submission)


@cli.command()
@corpus_options
@click.option("--wait", is_flag=True, help="Follow the job until it ends.")
def submit(wait: bool, **opts: Any) -> None:
    """Enqueue CORPUS on the fleet (EMBEDFLEET_BROKER_URL) and print the job id."""
    settings = apply_settings(database_url=opts["db"], chunk_size=opts["chunk_size"])
    request = job_request(settings, opts)
    engine = get_engine(settings.database_url)
    submission = submit_to_fleet(engine, request, settings)
    report_invalid(submission)
    if wait:
        click.echo(summary(api.wait(submission.job_id, settings=settings)))


@cli.command()
@click.argument("job", required=False)
@click.option("--collection", default=None, help="Show a collection and its versions instead of a job.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--watch", is_flag=True, help="Follow the job with a progress display until it is done.")
@DB_OPTION
def status(job: str | None, collection: str | None, as_json: bool, watch: bool, db: str | None) -> None:
    """State, counts, rate and ETA of JOB (or the versions of --collection)."""
    settings = apply_settings(database_url=db)
    engine = get_engine(settings.database_url)
    if collection:
        from .collections import collection_status

        collection_status(engine, collection, as_json)
        return
    if not job:
        raise click.UsageError("give a JOB id or --collection NAME")
    stats = api.wait(job, settings=settings) if watch else api.status(job, settings=settings)
    words = condition(stats, settings.lease_seconds)
    if as_json:
        print_json({**stats_json(engine, stats), "condition": words})
        return
    eta = "-" if stats.eta_seconds is None else f"{stats.eta_seconds:.0f} s"
    click.echo(summary(stats))
    click.echo(f"chunks {stats.chunks_done}/{stats.chunks_total}, retries {stats.retries}, splits {stats.splits}, "
               f"ETA {eta}")
    if words:
        click.echo(f"job {stats.job_id} is {words}")


@cli.command()
@click.argument("job")
@DB_OPTION
def cancel(job: str, db: str | None) -> None:
    """Cancel JOB: its open chunks are skipped when they arrive, chunks being encoded are not
    stored, and the vectors already stored stay. Its version can then be dropped."""
    count, stats = api.cancel_counted(job, settings=apply_settings(database_url=db))
    click.echo(f"cancelled job {job}: {count} open chunks will not be stored")
    click.echo(summary(stats))


@cli.command()
@click.argument("job")
@DB_OPTION
def resume(job: str, db: str | None) -> None:
    """Send again every chunk of JOB that is not done (after the broker lost its queues)."""
    from ..config.sending import payload_sender
    from ..storage.resend import resend_open_chunks

    settings = apply_settings(database_url=db)
    count = resend_open_chunks(get_engine(settings.database_url), payload_sender(fleet_sender(settings)), job)
    click.echo(f"re-sent {count} open chunks of job {job}")


@cli.command()
@click.option("--collection", required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="PATH.npy, or PATH.parquet.")
@click.option("--version", "number", type=int, default=None, help="A version other than the current one.")
@click.option("--format", "fmt", type=click.Choice(["npy", "parquet"]), default=None,
              help="npy: the matrix and PATH.ids.jsonl; parquet: one file with id, position, vector, and text "
                   "and metadata when kept. [default: from the suffix of --out: parquet for .parquet, else npy]")
@DB_OPTION
def export(collection: str, out: Path, number: int | None, fmt: Literal["npy", "parquet"] | None,
           db: str | None) -> None:
    """Write the collection's vectors in corpus order: an (N, d) float32 matrix and PATH.ids.jsonl
    beside it, or one Parquet file (--format parquet, or --out PATH.parquet)."""
    done = api.export(collection, out, version=number, settings=apply_settings(database_url=db), format=fmt)
    if done.format == "parquet":
        click.echo(f"wrote {done.rows} x {done.dim} to {done.path} (Parquet: {', '.join(done.columns)})")
    else:
        click.echo(f"wrote {done.rows} x {done.dim} to {done.path} and ids to {done.ids_path}")
