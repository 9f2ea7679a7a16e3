"""The `embedfleet` command. Commands that need the model import workers inside themselves,
so `submit`, `status` and `export` run on a host without torch."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from config.settings import Settings, get_settings, set_settings
from producers.readers import Corpus, CorpusError
from producers.records import FieldSpec
from producers.submit import JobRequest
from producers.validation import InvalidInput
from storage.engine import get_engine, redact
from storage.ledger import JobStats, LedgerError, job_stats


def _apply(**overrides: Any) -> Settings:
    """Settings from the environment, with the flags given on the command line on top."""
    given = {k: v for k, v in overrides.items() if v is not None}
    settings = Settings(**given) if given else Settings()
    set_settings(settings)
    return settings


def corpus_options(func: Any) -> Any:
    options = [
        click.argument("corpus"),
        click.option("--collection", required=True, help="Where the vectors go (letters, digits, _ and -)."),
        click.option("--id-field", default="id", show_default=True, help="The field holding each record's id."),
        click.option("--text-field", default="text", show_default=True, help="The field holding the text."),
        click.option("--fields", default=None, help="Build the text from these comma-separated fields instead."),
        click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "csv"]), default="auto", show_default=True),
        click.option("--chunk-size", type=int, default=None, help="Most records per chunk [256]."),
        click.option("--skip-invalid", is_flag=True, help="Send the valid records and report the invalid ones."),
        click.option("--db", default=None, help="SQLAlchemy database URL [EMBEDFLEET_DATABASE_URL]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _request(settings: Settings, corpus: str, collection: str, id_field: str, text_field: str,
             fields: str | None, fmt: str, skip_invalid: bool) -> JobRequest:
    text_fields = tuple(f.strip() for f in fields.split(",") if f.strip()) if fields else (text_field,)
    return JobRequest(
        corpus=Corpus(corpus, fmt),  # type: ignore[arg-type]
        collection=collection,
        model=settings.model,
        spec=FieldSpec(id_field=id_field, text_fields=text_fields),
        chunk_size=settings.chunk_size,
        token_budget=settings.chunk_token_budget,
        window=settings.max_tokens_per_record,
        skip_invalid=skip_invalid,
    )


def _summary(stats: JobStats) -> str:
    return (
        f"job {stats.job_id} {stats.state}: read {stats.records_read}, stored {stats.stored}, "
        f"skipped {stats.skipped}, dead {stats.dead}, truncated {stats.truncated}, "
        f"{stats.elapsed:.1f} s, {stats.rate:.1f} records/s"
    )


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def cli(verbose: bool) -> None:
    """Turn large text corpora into vectors on a fleet of Celery workers."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _fleet_sender(settings: Settings):  # type: ignore[no-untyped-def]
    from config.celery_app import app
    from producers.submit import celery_sender

    app.conf.broker_url = settings.broker_url
    return celery_sender(app)


@cli.command()
@corpus_options
def run(corpus: str, collection: str, id_field: str, text_field: str, fields: str | None, fmt: str,
        chunk_size: int | None, skip_invalid: bool, db: str | None) -> None:
    """Embed CORPUS on the embedded default: in-process worker, SQLite file, no servers."""
    settings = _apply(database_url=db, chunk_size=chunk_size)
    request = _request(settings, corpus, collection, id_field, text_field, fields, fmt, skip_invalid)
    from workers.embedded import run_embedded

    submission, stats = run_embedded(request)
    click.echo(_summary(stats))
    if submission.skipped_invalid:
        click.echo(f"skipped {submission.skipped_invalid} invalid records:\n{submission.invalid_report}", err=True)


@cli.command()
@corpus_options
@click.option("--wait", is_flag=True, help="Follow the job until it ends.")
def submit(corpus: str, collection: str, id_field: str, text_field: str, fields: str | None, fmt: str,
           chunk_size: int | None, skip_invalid: bool, db: str | None, wait: bool) -> None:
    """Enqueue CORPUS on the fleet (EMBEDFLEET_BROKER_URL) and print the job id."""
    settings = _apply(database_url=db, chunk_size=chunk_size)
    request = _request(settings, corpus, collection, id_field, text_field, fields, fmt, skip_invalid)
    from producers.progress import JobProgress
    from producers.submit import submit as submit_job

    engine = get_engine(settings.database_url)
    submission = submit_job(engine, request, _fleet_sender(settings))
    click.echo(submission.job_id)
    if submission.skipped_invalid:
        click.echo(f"skipped {submission.skipped_invalid} invalid records:\n{submission.invalid_report}", err=True)
    if wait:
        with JobProgress(engine, submission.job_id) as progress:
            stats = progress.wait_done()
        click.echo(_summary(stats))


@cli.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--db", default=None, help="SQLAlchemy database URL [EMBEDFLEET_DATABASE_URL].")
def status(job: str, as_json: bool, db: str | None) -> None:
    """State, counts, rate and ETA of JOB."""
    settings = _apply(database_url=db)
    stats = job_stats(get_engine(settings.database_url), job)
    if as_json:
        click.echo(json.dumps(stats.as_dict(), indent=2))
        return
    eta = "-" if stats.eta_seconds is None else f"{stats.eta_seconds:.0f} s"
    click.echo(_summary(stats))
    click.echo(f"chunks {stats.chunks_done}/{stats.chunks_total}, ETA {eta}")


@cli.command()
@click.option("--collection", required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PATH.npy")
@click.option("--db", default=None, help="SQLAlchemy database URL [EMBEDFLEET_DATABASE_URL].")
def export(collection: str, out: Path, db: str | None) -> None:
    """Write the collection's (N, d) float32 matrix in corpus order, and PATH.ids.txt beside it."""
    from storage.export import export_npy, ids_path_for

    settings = _apply(database_url=db)
    rows, dim = export_npy(get_engine(settings.database_url), collection, out)
    click.echo(f"wrote {rows} x {dim} to {out} and ids to {ids_path_for(out)}")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--queues", "-Q", default="embed,collect,dead_letter", show_default=True, help="Queues to consume.")
@click.option("--concurrency", "-c", type=int, default=1, show_default=True, help="Worker processes.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="[EMBEDFLEET_DEVICE]")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(queues: str, concurrency: int, device: str | None, loglevel: str, celery_args: tuple[str, ...]) -> None:
    """A fleet worker on EMBEDFLEET_BROKER_URL (extra arguments go to `celery worker`)."""
    if device:
        os.environ["EMBEDFLEET_DEVICE"] = device
    # Split the cores between the processes so torch threads do not fight each other.
    os.environ.setdefault("EMBEDFLEET_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, concurrency))))
    set_settings(None)
    if "embed" in queues.split(","):
        # Fail here, with the reason, rather than in every task: a worker that cannot load its
        # encoder must not take chunks at all.
        from workers.encoder import EncoderConfigError, encoder_class

        try:
            encoder_class(get_settings())
        except EncoderConfigError as exc:
            raise click.ClickException(str(exc)) from exc
    from config.celery_app import app

    app.conf.broker_url = get_settings().broker_url
    argv = ["worker", "-Q", queues, "-c", str(concurrency), "-l", loglevel, *celery_args]
    app.worker_main(argv)


@cli.command()
@click.argument("corpus")
@click.option("--id-field", default="id", show_default=True)
@click.option("--text-field", default="text", show_default=True)
@click.option("--fields", default=None, help="Build the text from these comma-separated fields.")
@click.option("--only", default="direct,run,fleet,memory", show_default=True, help="Sections to run.")
@click.option("--limit", type=int, default=None, help="Use the first N valid records.")
@click.option("--broker-url", default="redis://127.0.0.1:6379/14", show_default=True,
              help="A broker database of the bench's own: fleet and memory purge its queues.")
@click.option("--json", "as_json", is_flag=True)
def bench(corpus: str, id_field: str, text_field: str, fields: str | None, only: str, limit: int | None,
          broker_url: str, as_json: bool) -> None:
    """Measure embedfleet against a plain SentenceTransformer.encode loop, in one run."""
    from workers.bench import run_bench

    text_fields = tuple(f.strip() for f in fields.split(",") if f.strip()) if fields else (text_field,)
    run_bench(corpus, FieldSpec(id_field, text_fields), only.split(","), limit, broker_url, as_json)


@cli.command()
@click.argument("job")
@click.option("--db", default=None, help="SQLAlchemy database URL [EMBEDFLEET_DATABASE_URL].")
def resume(job: str, db: str | None) -> None:
    """Send again every chunk of JOB that is not done (after the broker lost its queues)."""
    from producers.recovery import resend_open_chunks

    settings = _apply(database_url=db)
    count = resend_open_chunks(get_engine(settings.database_url), _fleet_sender(settings), job)
    click.echo(f"re-sent {count} open chunks of job {job}")


@cli.group()
def dlq() -> None:
    """Inspect and redrive dead letters: records that could not be embedded."""


@dlq.command("list")
@click.option("--job", default=None, help="Only this job's letters.")
@click.option("--all", "include_resolved", is_flag=True, help="Include letters already redriven.")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--db", default=None, help="SQLAlchemy database URL [EMBEDFLEET_DATABASE_URL].")
def dlq_list(job: str | None, include_resolved: bool, limit: int, db: str | None) -> None:
    """One line per letter: id, job, record id, position, error."""
    from storage.dead_letters import list_letters

    settings = _apply(database_url=db)
    letters = list_letters(get_engine(settings.database_url), job, include_resolved, limit)
    for letter in letters:
        state = "resolved" if letter.resolved_at else "open"
        click.echo(f"{letter.id}\t{letter.job_id[:8]}\t{letter.record_id}\t{letter.position}\t{state}\t"
                   f"{letter.error_type}: {letter.message[:120]}")
    if not letters:
        click.echo("no dead letters", err=True)


@dlq.command("show")
@click.argument("letter_id", type=int)
@click.option("--db", default=None, help="SQLAlchemy database URL [EMBEDFLEET_DATABASE_URL].")
def dlq_show(letter_id: int, db: str | None) -> None:
    """Everything about one letter, its text included, as JSON."""
    import dataclasses

    from storage.dead_letters import get_letters

    settings = _apply(database_url=db)
    (letter,) = get_letters(get_engine(settings.database_url), [letter_id])
    click.echo(json.dumps(dataclasses.asdict(letter), indent=2, ensure_ascii=False))


@dlq.command("redrive")
@click.argument("letter_ids", nargs=-1, type=int)
@click.option("--job", default=None, help="Redrive every open letter of this job.")
@click.option("--db", default=None, help="SQLAlchemy database URL [EMBEDFLEET_DATABASE_URL].")
def dlq_redrive(letter_ids: tuple[int, ...], job: str | None, db: str | None) -> None:
    """Send letters' records through the normal path again; each letter clears when its record is stored."""
    from producers.recovery import redrive
    from storage.dead_letters import get_letters, list_letters

    if bool(letter_ids) == bool(job):
        raise click.UsageError("give either letter ids or --job")
    settings = _apply(database_url=db)
    engine = get_engine(settings.database_url)
    letters = get_letters(engine, letter_ids) if letter_ids else list_letters(engine, job)
    job_ids = redrive(engine, _fleet_sender(settings), letters, settings.chunk_size, settings.chunk_token_budget,
                      settings.max_tokens_per_record)
    for job_id in job_ids:
        click.echo(job_id)
    if not job_ids:
        click.echo("no open dead letters to redrive", err=True)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(loglevel: str, celery_args: tuple[str, ...]) -> None:
    """The scheduler: reconciles stalled jobs (extra arguments go to `celery beat`)."""
    from config.celery_app import app

    app.conf.broker_url = get_settings().broker_url
    app.start(["beat", "-l", loglevel, *celery_args])


# Operations commands (flower, jobs, metrics) live in their own module and register on `cli`.
from producers import cli_ops  # noqa: E402,F401


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (InvalidInput, CorpusError, LedgerError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
