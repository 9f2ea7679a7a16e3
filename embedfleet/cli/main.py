"""The `embedfleet` group and its entry point. Commands live in modules of their own
(`jobs`, `fleet`, `collections`, `dlq`, `ops`, `bench`) and register on `cli` when their
module is imported, which happens when the command is asked for (LazyGroup): `--version`,
`--help` and `jobs` do not pay for Celery, numpy or the model. Commands that need the model
import it inside themselves, so `submit`, `status` and `export` run on a host without torch."""

from __future__ import annotations

import gc
import importlib
import logging
import sys
from typing import Any

import click

from .errors import error_map, exit_codes_epilog

# Every command: the module that defines it, and its short help (what `--help` lists without
# importing the module; tests/cli/test_main.py checks each against the command's own).
COMMANDS: dict[str, tuple[str, str]] = {
    "beat": ("fleet", ("The scheduler: the nightly reindex and the stalled-job reconciler (extra "
                       "arguments go to `celery beat`).")),
    "bench": ("bench", ("Measure embedfleet against a plain SentenceTransformer.encode loop, in one "
                        "run.")),
    "cancel": ("jobs", ("Cancel JOB (any unique start of its id): its open chunks are skipped when "
                        "they arrive, chunks being encoded are not stored, and the vectors already "
                        "stored stay.")),
    "collections": ("collections", ("Every collection: its current version, model, dimension and rows,"
                                    " and all its versions.")),
    "cutover": ("collections", ("Switch reads to a complete version (the current one becomes the "
                                "rollback target).")),
    "delete-collection": ("collections", ("Delete collection NAME: every version's vectors, its "
                                          "versions and its jobs' history.")),
    "dlq": ("dlq", "Inspect and redrive dead letters: records that could not be embedded."),
    "drop-version": ("collections", ("Delete a version that is not current (and with it, the rollback "
                                     "to it).")),
    "export": ("jobs", ("Write the collection's vectors in corpus order: an (N, d) float32 matrix and "
                        "PATH.ids.jsonl beside it, or one Parquet file (--format parquet, or --out "
                        "PATH.parquet).")),
    "flower": ("ops", ("Flower on the fleet's broker, with basic auth from "
                       "EMBEDFLEET_FLOWER_USER/_PASSWORD, on this host's loopback unless --address "
                       "says otherwise.")),
    "jobs": ("ops", "Recent jobs, newest first, one line each (plus any older job still running)."),
    "metrics": ("ops", "A Prometheus exporter of per-job figures read from the ledger on each scrape."),
    "migrate": ("collections", ("Re-embed the collection with another model into a new version; reads "
                                "stay on the current one until the new version is complete, then "
                                "switch in one transaction.")),
    "reindex": ("collections", ("Re-run the collection's registered source: only new and changed "
                                "records are embedded.")),
    "resume": ("jobs", ("Send again every chunk of JOB (any unique start of its id) that is not done "
                        "(after the broker lost its queues).")),
    "rollback": ("collections", "Switch reads back to the previous version, until it is dropped."),
    "run": ("jobs", ("Embed CORPUS on the embedded default: in-process worker, SQLite file, no "
                     "servers.")),
    "search": ("collections", ("Top-k records by cosine similarity, from the collection's current "
                               "version: rank, score, id, and the text when the collection keeps it. "
                               "pgvector collections are searched in SQL through their HNSW index; "
                               "others by an exact scan.")),
    "status": ("jobs", ("State, counts, rate and ETA of JOB, any unique start of its id (or the "
                        "versions of --collection).")),
    "submit": ("jobs", ("Enqueue CORPUS on the fleet and print the job id (with --wait, follow it to "
                        "the end).")),
    "worker": ("fleet", "A fleet worker (extra arguments go to `celery worker`)."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when one is asked for, not at start."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            importlib.import_module(f"{__package__}.{COMMANDS[cmd_name][0]}")  # registers it on `cli`
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: Any) -> None:
        """The command list from COMMANDS: the same whatever is loaded, and nothing imported."""
        names = self.list_commands(ctx)
        limit = max(20, formatter.width - 6 - max(len(name) for name in names))
        rows = [(name, _shortened(COMMANDS[name][1], limit) if name in COMMANDS else
                 self.commands[name].get_short_help_str(limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _shortened(text: str, limit: int) -> str:
    """`text` cut at a word to at most `limit` characters, with "..." where it was cut."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 3].rsplit(" ", 1)[0].rstrip(" ,;:")
    return cut + "..."


@click.group(cls=LazyGroup, epilog=exit_codes_epilog(), context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="embedfleet", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def cli(verbose: bool) -> None:
    """Turn large text corpora into vectors on a fleet of Celery workers.

    Every option that names a service or a common setting also reads an environment
    variable (shown in each command's --help); a flag wins over the environment. Job ids
    may be shortened to any unique prefix (progress lines print 8 characters)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    """Every error a user can cause or meet (a service down) ends as one line on stderr and
    an exit code, never a traceback; `-v` logs the traceback too."""
    try:
        _run()
    finally:
        # The interpreter's last garbage collection walks every object the command made
        # (the model, SQLAlchemy's and Celery's state): 0.35-0.45 s of each `embedfleet run`'s
        # exit on 2 cores. Frozen objects are not collected, only freed with the process;
        # atexit handlers still run (the database file is still checkpointed and closed).
        gc.freeze()


def _run() -> None:
    try:
        # Not standalone: errors come here to be mapped to one line and an exit code.
        code = cli(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # What is stored stays; the same command again picks up where this one stopped.
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        for types, message, exit_code in error_map():
            if isinstance(exc, types):
                logging.getLogger(__name__).info("%s", type(exc).__name__, exc_info=True)  # -v: the traceback too
                click.echo(f"error: {message(exc)}", err=True)
                sys.exit(exit_code)
        raise
    # standalone_mode=False returns ctx.exit(N)'s code instead of exiting with it.
    sys.exit(code if isinstance(code, int) else 0)
