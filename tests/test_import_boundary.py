"""config, storage and producers never import torch: a producer host needs no model."""

from tests.conftest import assert_imports_no_model


def test_producer_side_imports_no_torch() -> None:
    """Importing the CLI, the Celery app, submission and storage leaves torch unloaded."""
    assert_imports_no_model("embedfleet.cli", "embedfleet.jobs.submit", "embedfleet.jobs.follow",
                            "embedfleet.fleet.celery_app", "embedfleet.store.vectors",
                            "embedfleet.store.export", "embedfleet.store.ledger")
