"""Operations commands: registered on the `embedfleet` group by importing this module.

Like `producers`, nothing here imports
torch: a monitoring host needs no model.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import threading
from collections.abc import Mapping

import click

from ..store.engine import existing_engine, redact
from .main import cli
from .options import BROKER_OPTION, DB_OPTION, JSON_OPTION, apply_settings, print_json

log = logging.getLogger(__name__)

# The servers' listening address. Loopback by default: Flower's UI can revoke tasks and shut
# workers down, and neither server's /metrics asks for credentials. Opening one to the
# network is a choice the operator makes with --address 0.0.0.0 (compose.yaml does, inside
# its containers, and publishes the ports on the host's loopback).
ADDRESS_OPTION = click.option(
    "--address", default="127.0.0.1", show_default=True, envvar="EMBEDFLEET_LISTEN_ADDRESS",
    help="Address to listen on [env: EMBEDFLEET_LISTEN_ADDRESS]; 0.0.0.0 or :: opens it to every interface.")


def flower_auth_argument(user: str, password: str) -> str:
    """Flower's `--basic-auth=user:password`, refusing what Flower would misread.

    Flower's option takes a comma-separated list of user:password pairs, and a basic-auth
    user name ends at the first colon, so neither may appear where they would split.
    """
    if not user or not password:
        raise click.ClickException(
            "refusing to start Flower without credentials: set EMBEDFLEET_FLOWER_USER and "
            "EMBEDFLEET_FLOWER_PASSWORD, or pass --no-auth to run it open to anyone who can reach the port"
        )
    if ":" in user or "," in user or "," in password:
        raise click.ClickException("Flower credentials may not contain ',' (and the user name no ':')")
    return f"--basic-auth={user}:{password}"


# Flower's tasks page hides kwargs and result by default, and they are what tell our rows
# apart: kwargs holds the label (`chunk 3 docs job 1a2b3c4d, 64 records`), result what a
# chunk came to (`stored 63, dead 1`). The rest is Flower's default, in its order.
TASKS_COLUMNS = "name,uuid,state,kwargs,result,received,runtime,worker"


def flower_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What `embedfleet flower` adds to the environment before starting Flower.

    Our columns go in as FLOWER_TASKS_COLUMNS, the lowest-precedence way Flower reads an
    option (its environment < flowerconfig.py < the command line), so a user's own
    FLOWER_TASKS_COLUMNS, `tasks_columns` in a config file or `--tasks_columns=...` on the
    command line still wins. A command-line default would override the first two."""
    return {} if "FLOWER_TASKS_COLUMNS" in environ else {"FLOWER_TASKS_COLUMNS": TASKS_COLUMNS}


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--port", type=int, default=5555, show_default=True, help="HTTP port of the UI, API and /metrics.")
@ADDRESS_OPTION
@click.option("--no-auth", is_flag=True, help="Run without authentication (the UI is open to anyone on the port).")
@BROKER_OPTION
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(port: int, address: str, no_auth: bool, broker_url: str | None, flower_args: tuple[str, ...]) -> None:
    """Flower on the fleet's broker, with basic auth from EMBEDFLEET_FLOWER_USER/_PASSWORD,
    on this host's loopback unless --address says otherwise.

    Extra arguments go to Flower (`--read_only=True`, ...). The tasks page shows the kwargs
    (job and chunk) and result columns unless `--tasks_columns=...` or FLOWER_TASKS_COLUMNS
    says otherwise. Flower's /metrics and /healthcheck answer without credentials.
    """
    from ..extras import require

    require("flower", "flower", "embedfleet flower")  # before Celery, which would say "no such command"
    settings = apply_settings(broker_url=broker_url)
    os.environ.update(flower_environment(os.environ))
    argv = ["flower", f"--port={port}", f"--address={address}", *flower_args]
    if no_auth:
        # Flower's /api answers 401 to everyone when no auth is configured, unless the
        # operator also sets FLOWER_UNAUTHENTICATED_API=true themselves.
        click.echo("warning: Flower runs without authentication (--no-auth)", err=True)
    else:
        # In the argv list given to app.start, not the process's command line: `ps` never shows it.
        argv.insert(1, flower_auth_argument(settings.flower_user, settings.flower_password))
    from ..fleet.celery_app import app
    from ..fleet.celeryconfig import use_broker_config

    use_broker_config(app, settings)  # the broker's URL, queues (quorum on RabbitMQ) and options
    log.info("starting Flower on %s, port %d", redact(settings.broker_url), port)
    app.start(argv)


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


@cli.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Most jobs to list.")
@JSON_OPTION
@DB_OPTION
def jobs(limit: int, as_json: bool, db: str | None) -> None:
    """Recent jobs, newest first, one line each (plus any older job still running)."""
    from ..jobs.metrics import recent_job_ids
    from ..jobs.stats import job_stats

    settings = apply_settings(database_url=db)
    engine = existing_engine(settings.database_url)
    ids = recent_job_ids(engine, limit)
    if as_json:
        found = [job_stats(engine, job_id) for job_id in ids]
        print_json([{**s.as_dict(), "created_at": s.created_at, "finished_at": s.finished_at} for s in found])
        return
    if not ids:
        click.echo("no jobs", err=True)
        return
    click.echo(f"{'JOB':<32}  {'COLLECTION':<16} {'STATE':<10} {'READ':>9} {'STORED':>9} {'SKIPPED':>8} "
               f"{'DEAD':>6} {'REC/S':>9}  CREATED")
    for job_id in ids:
        s = job_stats(engine, job_id)
        click.echo(f"{s.job_id:<32}  {s.collection:<16} {s.state:<10} {s.records_read:>9} {s.stored:>9} "
                   f"{s.skipped:>8} {s.dead:>6} {s.rate:>9.1f}  {_when(s.created_at)}")


@cli.command()
@click.option("--port", type=int, default=9808, show_default=True, help="HTTP port of /metrics.")
@ADDRESS_OPTION
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Export the newest N jobs (and every running one).")
@DB_OPTION
def metrics(port: int, address: str, limit: int, db: str | None) -> None:
    """A Prometheus exporter of per-job figures read from the ledger on each scrape."""
    from prometheus_client import start_http_server

    from ..jobs.metrics import collect_registry

    settings = apply_settings(database_url=db)
    engine = existing_engine(settings.database_url)
    registry = collect_registry(engine, limit, settings.dead_after_seconds)
    server, thread = start_http_server(port, addr=address, registry=registry)
    click.echo(f"serving job metrics of {redact(settings.database_url)} on http://{address}:{port}/metrics",
               err=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    thread.join(timeout=5)
