"""`embedfleet cancel`: stop a job; registered on the `embedfleet` group by importing this module."""

from __future__ import annotations

import click

from .cli import DB_OPTION, _apply, _summary, cli
from ..storage.engine import get_engine
from ..storage.ledger import cancel_job, job_stats


@cli.command()
@click.argument("job")
@DB_OPTION
def cancel(job: str, db: str | None) -> None:
    """Cancel JOB: its open chunks are skipped when they arrive, chunks being encoded are not
    stored, and the vectors already stored stay. Its version can then be dropped."""
    settings = _apply(database_url=db)
    engine = get_engine(settings.database_url)
    count = cancel_job(engine, job)
    click.echo(f"cancelled job {job}: {count} open chunks will not be stored")
    click.echo(_summary(job_stats(engine, job)))
