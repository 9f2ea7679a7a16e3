"""config, storage and producers never import torch: a producer host needs no model."""

from tests.conftest import assert_imports_no_model


def test_producer_side_imports_no_torch() -> None:
    """Importing the CLI, the Celery app, submission and storage leaves torch unloaded."""
    assert_imports_no_model("embedfleet.cli", "embedfleet.producers.submit", "embedfleet.producers.progress",
                            "embedfleet.config.celery_app", "embedfleet.storage.vectors",
                            "embedfleet.storage.export", "embedfleet.storage.ledger")
