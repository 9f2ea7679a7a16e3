"""`embedfleet dlq`: inspect and redrive dead letters."""

from __future__ import annotations

import dataclasses

import click

from .. import api
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
    letters = api.dead_letters(job=job, include_resolved=include_resolved, limit=limit,
                               settings=apply_settings(database_url=db))
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
    (letter,) = api.dead_letters(ids=[letter_id], settings=apply_settings(database_url=db))  # LedgerError if none
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
    if bool(letter_ids) == bool(job):
        raise click.UsageError("give either letter ids or --job")
    settings = apply_settings(database_url=db, broker_url=broker_url)
    letters = api.dead_letters(job=job, ids=letter_ids, settings=settings)
    job_ids = api.redrive(letters, settings=settings)
    if as_json:
        print_json({"letters": len(letters), "jobs": job_ids})
        return
    for job_id in job_ids:
        click.echo(job_id)
    if not job_ids:
        click.echo("no open dead letters to redrive", err=True)
