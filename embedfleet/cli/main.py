"""The `embedfleet` group and its entry point. Commands live in modules of their own
(`jobs`, `fleet`, `collections`, `dlq`, `ops`, `bench`) and register on `cli` when the
package is imported. Commands that need the model import it inside themselves, so
`submit`, `status` and `export` run on a host without torch."""

from __future__ import annotations

import gc
import logging
import sys

import click

from .errors import error_map, exit_codes_epilog


@click.group(epilog=exit_codes_epilog(), context_settings={"help_option_names": ["-h", "--help"]})
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
