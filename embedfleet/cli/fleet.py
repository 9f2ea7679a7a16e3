"""Fleet processes: `worker` and `beat` (Celery's, configured from the settings)."""

from __future__ import annotations

import logging
import os
import sys

import click

from ..fleet.replies import use_answers
from ..settings import get_settings, set_settings
from .main import cli
from .options import BATCH_SIZE_OPTION, BROKER_OPTION, DB_OPTION


def _export(name: str, value: str | None) -> None:
    """A flag becomes the environment variable it stands for: Celery's pool processes (and
    beat's tasks) read the settings from the environment, not from this process's flags."""
    if value is not None:
        os.environ[name] = value
    set_settings(None)


def check_database() -> None:
    """The database the worker (or beat) will write to, reached before Celery starts: a
    worker that cannot reach it must not say `ready.` and log heartbeat warnings for ever."""
    from ..safe_errors import reason
    from ..store.engine import redact, wait_for_database

    settings = get_settings()

    def waiting(exc: Exception, left: float) -> None:
        logging.getLogger(__name__).error(
            "database unreachable at %s: %s; trying again for %.0f s more (EMBEDFLEET_DATABASE_WAIT_SECONDS)",
            redact(settings.database_url), reason(exc, settings.database_url), left)

    wait_for_database(settings.database_url, settings.database_wait_seconds, waiting)


def celery_sets_up_logging() -> None:
    """Drop the handler the group installed (no timestamps): Celery keeps a root logger that
    already has one, so without this its worker_log_format (fleet/celeryconfig.py) is never
    used and the worker's lines carry no time."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--queues", "-Q", default="embed,collect,dead_letter,query", show_default=True,
              help="Queues to consume (query: search queries; a `-Q query -c 1` worker answers them even "
                   "while bulk chunks keep the others busy).")
@click.option("--concurrency", "-c", type=int, default=None,
              help="Worker processes [one per core on a CPU, one per GPU with --device cuda].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, envvar="EMBEDFLEET_DEVICE",
              show_envvar=True, help="Where to encode [default: auto].")
@BATCH_SIZE_OPTION
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@BROKER_OPTION
@DB_OPTION
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(queues: str, concurrency: int | None, device: str | None, batch_size: int | None, loglevel: str,
           broker_url: str | None, db: str | None, celery_args: tuple[str, ...]) -> None:
    """A fleet worker (extra arguments go to `celery worker`)."""
    from ..encode.cpus import available_cpus
    from ..encode.precision import gpu_count

    _export("EMBEDFLEET_DEVICE", device)
    _export("EMBEDFLEET_BATCH_SIZE", None if batch_size is None else str(batch_size))
    _export("EMBEDFLEET_BROKER_URL", broker_url)
    _export("EMBEDFLEET_DATABASE_URL", db)
    gpus = gpu_count() if get_settings().device in ("auto", "cuda") else 0
    # Measured on 2 cores: two processes of one torch thread beat one of two threads by
    # 7-10% (docs/benchmarks.md), so a CPU worker runs a process per core; a GPU worker
    # runs a process per GPU, each pinned to its own.
    # Cores as the container's CPU quota and the affinity mask allow, not the host's count.
    cores = available_cpus()
    concurrency = concurrency or gpus or cores
    os.environ.setdefault("EMBEDFLEET_TORCH_THREADS", str(max(1, cores // concurrency)))
    set_settings(None)
    if {"embed", "query"} & set(queues.split(",")):
        # Fail here, with the reason in one line, rather than in every task: a worker that
        # cannot load its encoder or find its model's files must not take chunks at all.
        from ..encode.availability import model_problem
        from ..encode.encoder import EncoderConfigError, encoder_class

        try:
            encoder_class(get_settings())
        except EncoderConfigError as exc:
            raise click.ClickException(str(exc)) from exc
        problem = None if get_settings().encoder else model_problem(get_settings().model)
        if problem:
            raise click.ClickException(f"cannot load model {get_settings().model!r}: {problem}")
    check_database()
    from ..fleet.celery_app import app
    from ..fleet.celeryconfig import use_broker_config

    use_broker_config(app, get_settings())  # the broker's URL, queues (quorum on RabbitMQ) and options
    use_answers(app, app.conf.broker_url)  # a query's answer goes back on the broker (fleet/replies.py)
    argv = ["worker", "-Q", queues, "-c", str(concurrency), "-l", loglevel, *celery_args]
    celery_sets_up_logging()
    app.worker_main(argv)
    from ..fleet.resident import model_load_failed
    from ..fleet.watchdog import restart_requested

    if model_load_failed():
        sys.exit(1)  # a pool process could not load the model and stopped the worker; it logged why
    if restart_requested():
        # The pool lost a chunk and the node shut down to give it back (fleet/watchdog.py):
        # start again in this process, same command line and environment, with a fresh pool.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, sys.orig_argv)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@BROKER_OPTION
@DB_OPTION
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(loglevel: str, broker_url: str | None, db: str | None, celery_args: tuple[str, ...]) -> None:
    """The scheduler: the nightly reindex and the stalled-job reconciler (extra arguments go to `celery beat`)."""
    from ..fleet.celery_app import app
    from ..fleet.celeryconfig import use_broker_config

    _export("EMBEDFLEET_BROKER_URL", broker_url)
    _export("EMBEDFLEET_DATABASE_URL", db)
    check_database()
    use_broker_config(app, get_settings())  # the broker's URL, queues (quorum on RabbitMQ) and options
    celery_sets_up_logging()
    app.start(["beat", "-l", loglevel, *celery_args])
