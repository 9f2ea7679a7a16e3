"""`embedfleet dlq`: inspect and redrive dead letters."""

from __future__ import annotations

import json

import click

from ..producers.sending import fleet_sender
from ..storage.engine import get_engine
from .main import cli
from .options import DB_OPTION, apply_settings


@cli.group()
def dlq() -> None:
    """Inspect and redrive dead letters: records that could not be embedded."""


@dlq.command("list")
@click.option("--job", default=None, help="Only this job's letters.")
@click.option("--all", "include_resolved", is_flag=True, help="Include letters already redriven.")
@click.option("--limit", type=int, default=100, show_default=True)
@DB_OPTION
def dlq_list(job: str | None, include_resolved: bool, limit: int, db: str | None) -> None:
    """One line per letter: id, job, record id, position, error."""
    from ..storage.dead_letters import list_letters

    settings = apply_settings(database_url=db)
    letters = list_letters(get_engine(settings.database_url), job, include_resolved, limit)
    for letter in letters:
        state = "resolved" if letter.resolved_at else "open"
        click.echo(f"{letter.id}\t{letter.job_id[:8]}\t{letter.record_id}\t{letter.position}\t{state}\t"
                   f"{letter.error_type}: {letter.message[:120]}")
    if not letters:
        click.echo("no dead letters", err=True)


@dlq.command("show")
@click.argument("letter_id", type=int)
@DB_OPTION
def dlq_show(letter_id: int, db: str | None) -> None:
    """Everything about one letter, its text included, as JSON."""
    import dataclasses

    from ..storage.dead_letters import get_letters

    settings = apply_settings(database_url=db)
    (letter,) = get_letters(get_engine(settings.database_url), [letter_id])
    click.echo(json.dumps(dataclasses.asdict(letter), indent=2, ensure_ascii=False))


@dlq.command("redrive")
@click.argument("letter_ids", nargs=-1, type=int)
@click.option("--job", default=None, help="Redrive every open letter of this job.")
@DB_OPTION
def dlq_redrive(letter_ids: tuple[int, ...], job: str | None, db: str | None) -> None:
    """Send letters' records through the normal path again; each letter clears when its record is stored."""
    from ..producers.recovery import redrive
    from ..storage.dead_letters import get_letters, list_letters

    if bool(letter_ids) == bool(job):
        raise click.UsageError("give either letter ids or --job")
    settings = apply_settings(database_url=db)
    engine = get_engine(settings.database_url)
    letters = get_letters(engine, letter_ids) if letter_ids else list_letters(engine, job)
    job_ids = redrive(engine, fleet_sender(settings), letters, settings.chunk_size, settings.chunk_token_budget,
                      settings.max_tokens_per_record)
    for job_id in job_ids:
        click.echo(job_id)
    if not job_ids:
        click.echo("no open dead letters to redrive", err=True)
