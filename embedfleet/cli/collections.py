"""Collection commands: list and delete, versions and migration, the registered-source
reindex, and search."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import click
from sqlalchemy import Engine

from .. import api
from ..settings import Settings
from ..store.collections import get_collection, version_rows
from ..store.engine import existing_engine
from .jobs import announce, print_finished
from .main import cli
from .options import (
    BROKER_OPTION,
    COLLECTION_OPTION,
    DB_OPTION,
    JSON_OPTION,
    STRICT_OPTION,
    apply_settings,
    collection_version_option,
    exit_for,
    print_json,
    report_invalid,
    submission_json,
)


def collection_status(engine: Engine, name: str, as_json: bool) -> None:
    from ..store.pgvector import describe

    info = get_collection(engine, name)
    with engine.connect() as conn:
        rows = [
            {**dataclasses.asdict(v), "rows": version_rows(engine, v.key),
             "role": "current" if v.key == info.current_key else "previous" if v.key == info.previous_key else "",
             "stored_as": describe(conn, v.storage, v.index_seconds)}
            for v in info.versions
        ]
    if as_json:
        print_json({"collection": name, "versions": rows})
        return
    click.echo(f"collection {name}")
    for row in rows:
        click.echo(f"  v{row['version']} {row['key']:<24} {row['state']:<9} {row['rows']:>9} rows  "
                   f"dim {row['dim']}  {row['model']}  {row['role']}")
        click.echo(f"      stored as {row['stored_as']}")


@dataclasses.dataclass(frozen=True)
class Following:
    """How a reindex or migration job is run and reported: --local, --wait, --json, --strict."""

    local: bool
    wait: bool
    as_json: bool
    strict: bool

    def check(self) -> None:
        if self.strict and not (self.wait or self.local):
            raise click.UsageError("--strict needs --wait (or --local)")


def _report_started(started: api.Started, how: Following, settings: Settings) -> None:
    """A reindex or migration job: its summary once it ran here (--local) or, on the fleet,
    followed when asked (--wait)."""
    report_invalid(started.submission)
    if started.stats is not None:
        print_finished(started.stats, how.as_json, started.submission)
        exit_for(started.stats, how.strict)
        return
    if not how.wait:
        if how.as_json:
            print_json(submission_json(started.submission))
        return
    stats = api.wait(started.job_id, settings=settings)
    print_finished(stats, how.as_json, started.submission)
    exit_for(stats, how.strict)


def following(func: Any) -> Any:
    """--wait, --local, --json, --strict and the broker: how reindex and migrate run their job."""
    options = [
        click.option("--wait", is_flag=True, help="Follow the job until it ends."),
        click.option("--local", is_flag=True,
                     help="Run on the embedded default (in-process worker) instead of the fleet."),
        JSON_OPTION,
        STRICT_OPTION,
        DB_OPTION,
        BROKER_OPTION,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _following(opts: dict[str, Any]) -> Following:
    how = Following(opts.pop("local"), opts.pop("wait"), opts.pop("as_json"), opts.pop("strict"))
    how.check()
    return how


@cli.command("collections")
@JSON_OPTION
@DB_OPTION
def collections_command(as_json: bool, db: str | None) -> None:
    """Every collection: its current version, model, dimension and rows, and all its versions."""
    found = api.collections(settings=apply_settings(database_url=db))
    if as_json:
        print_json([c.as_dict() for c in found])
        return
    if not found:
        click.echo("no collections", err=True)
        return
    click.echo(f"{'COLLECTION':<24} {'VERSION':>7} {'ROWS':>10} {'DIM':>5}  MODEL")
    for item in found:
        c = item.as_dict()
        click.echo(f"{c['name']:<24} {c['current_version']:>7} {c['rows']:>10} {c['dim'] or '-':>5}  {c['model']}")
        for v in c["versions"]:
            if v["role"] != "current":
                click.echo(f"{'':<24} {v['version']:>7} {v['rows']:>10} {v['dim'] or '-':>5}  {v['model']}  "
                           f"({v['state']}{', ' + v['role'] if v['role'] else ''})")


@cli.command("delete-collection")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@JSON_OPTION
@DB_OPTION
def delete_collection_command(name: str, yes: bool, as_json: bool, db: str | None) -> None:
    """Delete collection NAME: every version's vectors, its versions and its jobs' history.
    Refused while one of its jobs is running. Asks first unless --yes."""
    settings = apply_settings(database_url=db)
    engine = existing_engine(settings.database_url)
    info = get_collection(engine, name)  # an unknown name fails before the question
    if not yes:
        rows = sum(version_rows(engine, v.key) for v in info.versions)
        # On stderr: stdout stays the command's result (one JSON document under --json).
        try:
            confirmed = click.confirm(f"delete collection {name!r}: {len(info.versions)} versions, {rows} vectors?",
                                      err=True)
        except click.Abort:  # stdin closed (a script without --yes): no answer is no
            confirmed = False
        if not confirmed:
            raise click.ClickException("not confirmed: nothing was deleted (--yes to skip the question)")
    deleted = api.delete_collection(name, settings=settings)
    if as_json:
        print_json(dataclasses.asdict(deleted))
        return
    click.echo(f"deleted collection {name}: {deleted.versions} versions, {deleted.vectors} vectors, "
               f"{deleted.jobs} jobs")


@cli.command()
@COLLECTION_OPTION
@click.option("--sync", type=click.Choice(["none", "full"]), default=None, help="Override the registered sync mode.")
@following
def reindex(collection: str, sync: Literal["none", "full"] | None, db: str | None, broker_url: str | None,
            **opts: Any) -> None:
    """Re-run the collection's registered source: only new and changed records are embedded."""
    how = _following(opts)
    settings = apply_settings(database_url=db, broker_url=broker_url)
    started = api.reindex(collection, sync=sync, local=how.local, settings=settings,
                          on_job=lambda job_id: announce(job_id, how.as_json))
    _report_started(started, how, settings)


@cli.command()
@COLLECTION_OPTION
@click.option("--model", required=True, help="The new model (name or directory); any dimension.")
@click.option("--no-cutover", is_flag=True, help="Leave the switch to `embedfleet cutover`.")
@click.option("--no-model-check", is_flag=True,
              help="Skip checking that the model's files are here (when only the workers have it).")
@following
def migrate(collection: str, model: str, no_cutover: bool, no_model_check: bool, db: str | None,
            broker_url: str | None, **opts: Any) -> None:
    """Re-embed the collection with another model into a new version; reads stay on the current
    one until the new version is complete, then switch in one transaction."""
    how = _following(opts)
    settings = apply_settings(database_url=db, broker_url=broker_url)

    def filling(version: Any) -> None:
        click.echo(f"filling version {version.version} ({version.key}) with {model}", err=True)

    started = api.migrate(collection, model, cutover=not no_cutover, check_model=not no_model_check,
                          local=how.local, settings=settings, on_version=filling,
                          on_job=lambda job_id: announce(job_id, how.as_json))
    _report_started(started, how, settings)


def _now_reads(collection: str, version: Any, as_json: bool) -> None:
    if as_json:
        print_json({"collection": collection, "current_version": version.version, "key": version.key,
                    "model": version.model})
        return
    click.echo(f"{collection} now reads version {version.version} ({version.model})")


@cli.command("cutover")
@COLLECTION_OPTION
@collection_version_option("Default: the newest complete version.")
@JSON_OPTION
@DB_OPTION
def cutover_command(collection: str, number: int | None, as_json: bool, db: str | None) -> None:
    """Switch reads to a complete version (the current one becomes the rollback target)."""
    _now_reads(collection, api.cutover(collection, number, settings=apply_settings(database_url=db)), as_json)


@cli.command("rollback")
@COLLECTION_OPTION
@JSON_OPTION
@DB_OPTION
def rollback_command(collection: str, as_json: bool, db: str | None) -> None:
    """Switch reads back to the previous version, until it is dropped."""
    _now_reads(collection, api.rollback(collection, settings=apply_settings(database_url=db)), as_json)


@cli.command("drop-version")
@COLLECTION_OPTION
@collection_version_option("The version to drop.", required=True)
@JSON_OPTION
@DB_OPTION
def drop_version_command(collection: str, number: int, as_json: bool, db: str | None) -> None:
    """Delete a version that is not current (and with it, the rollback to it)."""
    rows = api.drop_version(collection, number, settings=apply_settings(database_url=db))
    if as_json:
        print_json({"collection": collection, "dropped_version": number, "vectors_deleted": rows})
        return
    click.echo(f"dropped version {number} of {collection}: {rows} vectors deleted")


@cli.command()
@click.argument("query", required=False)
@COLLECTION_OPTION
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many hits per query.")
@click.option("--batch-query", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="One query a line; prints JSONL, one line per query, in order.")
@click.option("--fleet", is_flag=True,
              help="Encode the query on a fleet worker that holds the model (milliseconds, no model load here).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="With --fleet: seconds to wait for a worker's answer.")
@JSON_OPTION
@DB_OPTION
@BROKER_OPTION
def search(query: str | None, collection: str, k: int, batch_query: Path | None, fleet: bool, timeout: float,
           as_json: bool, db: str | None, broker_url: str | None) -> None:
    """Top-k records by cosine similarity, from the collection's current version: rank, score,
    id, and the text when the collection keeps it. pgvector collections are searched in SQL
    through their HNSW index; others by an exact scan.
    --batch-query prints JSONL already (one document a query); --json makes it one array."""
    if bool(query) == bool(batch_query):
        raise click.UsageError("give either a QUERY or --batch-query FILE")
    settings = apply_settings(database_url=db, broker_url=broker_url)
    if query:
        queries = [query]
    else:
        assert batch_query is not None  # one of the two, checked above
        queries = [line.strip() for line in batch_query.read_text().splitlines() if line.strip()]
    results = api.search(collection, queries, k=k, fleet=fleet, timeout=timeout, settings=settings)
    answers = [{"query": text, "results": [_hit_json(h) for h in hits]}
               for text, hits in zip(queries, results, strict=True)]
    if as_json:
        print_json(answers if batch_query else answers[0])
        return
    if batch_query:
        for answer in answers:
            click.echo(json.dumps(answer, ensure_ascii=False))
        return
    for rank, hit in enumerate(results[0], start=1):
        shown = "" if hit.text is None else "\t" + _one_line(hit.text)
        click.echo(f"{rank}\t{hit.score:.4f}\t{hit.id}{shown}")


def _hit_json(hit: api.Hit) -> dict[str, Any]:
    found: dict[str, Any] = {"id": hit.id, "score": round(hit.score, 6)}
    if hit.text is not None:
        found["text"] = hit.text
    if hit.metadata is not None:
        found["metadata"] = hit.metadata
    return found


def _one_line(text: str, limit: int = 100) -> str:
    """A text as one short line of a terminal listing (newlines and tabs as spaces)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
