"""The `embedfleet` group and its entry point. Commands live in modules of their own
(`jobs`, `fleet`, `collections`, `dlq`, `ops`, `bench`) and register on `cli` when the
package is imported. Commands that need the model import it inside themselves, so
`submit`, `status` and `export` run on a host without torch."""

from __future__ import annotations

import logging
import sys

import click

from .errors import error_map


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def cli(verbose: bool) -> None:
    """Turn large text corpora into vectors on a fleet of Celery workers."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    """Every error a user can cause or meet (a service down) ends as one line on stderr and
    an exit code, never a traceback; `-v` logs the traceback too."""
    try:
        cli(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        for types, message, code in error_map():
            if isinstance(exc, types):
                logging.getLogger(__name__).info("%s", type(exc).__name__, exc_info=True)  # -v: the traceback too
                click.echo(f"error: {message(exc)}", err=True)
                sys.exit(code)
        raise
