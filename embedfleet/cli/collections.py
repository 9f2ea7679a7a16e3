"""Collection commands: versions and migration, the registered-source reindex, and search."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Engine

from .. import api
from ..producers.readers import CorpusError
from ..producers.sending import BrokerUnavailable
from ..producers.validation import InvalidInput
from ..storage.collections import (
    cutover,
    drop_version,
    get_collection,
    new_version,
    rollback,
    version_rows,
)
from ..storage.engine import get_engine
from .jobs import submit_to_fleet
from .main import cli
from .options import DB_OPTION, apply_settings, report_invalid, summary


def collection_status(engine: Engine, name: str, as_json: bool) -> None:
    info = get_collection(engine, name)
    rows = [
        {**dataclasses.asdict(v), "rows": version_rows(engine, v.key),
         "role": "current" if v.key == info.current_key else "previous" if v.key == info.previous_key else ""}
        for v in info.versions
    ]
    if as_json:
        click.echo(json.dumps({"collection": name, "versions": rows}, indent=2))
        return
    click.echo(f"collection {name}")
    for row in rows:
        click.echo(f"  v{row['version']} {row['key']:<24} {row['state']:<9} {row['rows']:>9} rows  "
                   f"dim {row['dim']}  {row['model']}  {row['role']}")


def _run_request(request: Any, local: bool, wait: bool, settings: Any) -> None:
    """The job on the fleet (or in-process with --local), followed when asked."""
    if local:
        from ..embedded import run_embedded

        submission, stats = run_embedded(request)
        click.echo(summary(stats))
        report_invalid(submission)
        return
    engine = get_engine(settings.database_url)
    submission = submit_to_fleet(engine, request, settings)
    report_invalid(submission)
    if wait:
        click.echo(summary(api.wait(submission.job_id, settings=settings)))


LOCAL = click.option("--local", is_flag=True,
                     help="Run on the embedded default (in-process worker) instead of the fleet.")
WAIT = click.option("--wait", is_flag=True, help="Follow the job until it ends.")


@cli.command()
@click.option("--collection", required=True)
@click.option("--sync", type=click.Choice(["none", "full"]), default=None, help="Override the registered sync mode.")
@WAIT
@LOCAL
@DB_OPTION
def reindex(collection: str, sync: str | None, wait: bool, local: bool, db: str | None) -> None:
    """Re-run the collection's registered source: only new and changed records are embedded."""
    from ..producers.reindex import registered_request

    settings = apply_settings(database_url=db)
    request = registered_request(get_engine(settings.database_url), collection, settings, sync=sync)
    _run_request(request, local, wait, settings)


@cli.command()
@click.option("--collection", required=True)
@click.option("--model", required=True, help="The new model (name or directory); any dimension.")
@click.option("--no-cutover", is_flag=True, help="Leave the switch to `embedfleet cutover`.")
@click.option("--no-model-check", is_flag=True,
              help="Skip checking that the model's files are here (when only the workers have it).")
@WAIT
@LOCAL
@DB_OPTION
def migrate(collection: str, model: str, no_cutover: bool, no_model_check: bool, wait: bool, local: bool,
            db: str | None) -> None:
    """Re-embed the collection with another model into a new version; reads stay on the current
    one until the new version is complete, then switch in one transaction."""
    from ..producers.reindex import registered_request

    if not no_model_check:
        # Its files, not a load: this host may be a producer without torch. A worker that
        # cannot load it anyway dead-letters its chunks (ModelUnavailable) after the cap.
        from ..workers.availability import model_problem

        problem = model_problem(model)
        if problem:
            raise click.ClickException(f"cannot load model {model!r}: {problem}; no version was created "
                                       "(--no-model-check if only the workers have it)")
    settings = apply_settings(database_url=db)
    engine = get_engine(settings.database_url)
    request = registered_request(engine, collection, settings)  # fails early if the source is gone
    version = new_version(engine, collection, model)
    click.echo(f"filling version {version.version} ({version.key}) with {model}", err=True)
    request = dataclasses.replace(request, model=model, version_key=version.key, cutover=not no_cutover, sync="none")
    try:
        _run_request(request, local, wait, settings)
    except (InvalidInput, CorpusError, BrokerUnavailable):
        # Nothing was sent: leave no empty version behind.
        drop_version(engine, collection, version.version)
        raise


@cli.command("cutover")
@click.option("--collection", required=True)
@click.option("--version", "number", type=int, default=None, help="Default: the newest complete version.")
@DB_OPTION
def cutover_command(collection: str, number: int | None, db: str | None) -> None:
    """Switch reads to a complete version (the current one becomes the rollback target)."""
    settings = apply_settings(database_url=db)
    version = cutover(get_engine(settings.database_url), collection, number)
    click.echo(f"{collection} now reads version {version.version} ({version.model})")


@cli.command("rollback")
@click.option("--collection", required=True)
@DB_OPTION
def rollback_command(collection: str, db: str | None) -> None:
    """Switch reads back to the previous version, until it is dropped."""
    settings = apply_settings(database_url=db)
    version = rollback(get_engine(settings.database_url), collection)
    click.echo(f"{collection} now reads version {version.version} ({version.model})")


@cli.command("drop-version")
@click.option("--collection", required=True)
@click.option("--version", "number", type=int, required=True)
@DB_OPTION
def drop_version_command(collection: str, number: int, db: str | None) -> None:
    """Delete a version that is not current (and with it, the rollback to it)."""
    settings = apply_settings(database_url=db)
    rows = drop_version(get_engine(settings.database_url), collection, number)
    click.echo(f"dropped version {number} of {collection}: {rows} vectors deleted")


@cli.command()
@click.argument("query", required=False)
@click.option("--collection", required=True)
@click.option("-k", "k", type=int, default=10, show_default=True)
@click.option("--batch-query", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="One query a line; prints JSONL, one line per query, in order.")
@DB_OPTION
def search(query: str | None, collection: str, k: int, batch_query: Path | None, db: str | None) -> None:
    """Top-k record ids by cosine similarity, from the collection's current version."""
    if bool(query) == bool(batch_query):
        raise click.UsageError("give either a QUERY or --batch-query FILE")
    settings = apply_settings(database_url=db)
    if query:
        queries = [query]
    else:
        assert batch_query is not None  # one of the two, checked above
        queries = [line.strip() for line in batch_query.read_text().splitlines() if line.strip()]
    results = api.search(collection, queries, k=k, settings=settings)
    if batch_query:
        for text, hits in zip(queries, results, strict=True):
            click.echo(json.dumps({"query": text, "results": [{"id": h.id, "score": round(h.score, 6)} for h in hits]},
                                  ensure_ascii=False))
        return
    for rank, hit in enumerate(results[0], start=1):
        click.echo(f"{rank}\t{hit.score:.4f}\t{hit.id}")
