"""`embedfleet dlq`: inspect and redrive dead letters."""

from __future__ import annotations

import dataclasses

import click

from ..fleet.sending import fleet_sender
from ..jobs.stats import resolve_job_id
from ..store.engine import existing_engine
from .main import cli
from .options import BROKER_OPTION, DB_OPTION, JSON_OPTION, apply_settings, print_json


@cli.group()
def dlq() -> None:
    """Inspect and redrive dead letters: records that could not be embedded."""


@dlq.command("list")
@click.option("--job", default=None, help="Only this job's letters (any unique start of its id).")
@click.option("--all", "include_resolved", is_flag=True, help="Include letters already redriven.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@JSON_OPTION
@DB_OPTION
def dlq_list(job: str | None, include_resolved: bool, limit: int, as_json: bool, db: str | None) -> None:
    """One line per letter: id, job, record id, position, error."""
    from ..chunks.dead_letters import list_letters

    settings = apply_settings(database_url=db)
    engine = existing_engine(settings.database_url)
    # An unknown job is an error, not "no dead letters": a typo must not look like a clean job.
    job_id = resolve_job_id(engine, job) if job else None
    letters = list_letters(engine, job_id, include_resolved, limit)
    if as_json:
        # Without the texts (`dlq show` has them): a listing stays small and leaks no corpus.
        print_json([{**{k: v for k, v in dataclasses.asdict(letter).items() if k != "text"},
                     "state": "resolved" if letter.resolved_at else "open"} for letter in letters])
        return
    for letter in letters:
        state = "resolved" if letter.resolved_at else "open"
        click.echo(f"{letter.id}\t{letter.job_id[:8]}\t{letter.record_id}\t{letter.position}\t{state}\t"
                   f"{letter.error_type}: {letter.message[:120]}")
    if not letters:
        click.echo("no dead letters", err=True)


@dlq.command("show")
@click.argument("letter_id", type=int)
@JSON_OPTION
@DB_OPTION
def dlq_show(letter_id: int, as_json: bool, db: str | None) -> None:
    """Everything about one letter, its text included, as JSON (--json is accepted for
    symmetry: the output is JSON either way)."""
    from ..chunks.dead_letters import get_letters

    settings = apply_settings(database_url=db)
    (letter,) = get_letters(existing_engine(settings.database_url), [letter_id])
    print_json(dataclasses.asdict(letter))


@dlq.command("redrive")
@click.argument("letter_ids", nargs=-1, type=int)
@click.option("--job", default=None, help="Redrive every open letter of this job (any unique start of its id).")
@JSON_OPTION
@DB_OPTION
@BROKER_OPTION
def dlq_redrive(letter_ids: tuple[int, ...], job: str | None, as_json: bool, db: str | None,
                broker_url: str | None) -> None:
    """Send letters' records through the normal path again; each letter clears when its record is stored."""
    from ..chunks.dead_letters import get_letters, list_letters
    from ..jobs.redrive import redrive

    if bool(letter_ids) == bool(job):
        raise click.UsageError("give either letter ids or --job")
    settings = apply_settings(database_url=db, broker_url=broker_url)
    engine = existing_engine(settings.database_url)
    if job:
        letters = list_letters(engine, resolve_job_id(engine, job))
    else:
        letters = get_letters(engine, letter_ids)
    job_ids = redrive(engine, fleet_sender(settings), letters, settings.chunk_size, settings.chunk_token_budget,
                      settings.max_tokens_per_record)
    if as_json:
        print_json({"letters": len(letters), "jobs": job_ids})
        return
    for job_id in job_ids:
        click.echo(job_id)
    if not job_ids:
        click.echo("no open dead letters to redrive", err=True)
