"""config, storage and producers never import torch: a producer host needs no model."""

import subprocess
import sys

from tests.conftest import REPO


def test_producer_side_imports_no_torch() -> None:
    """Importing the CLI, the Celery app, submission and storage leaves torch unloaded."""
    code = (
        "import sys\n"
        "import embedfleet.cli, embedfleet.producers.submit, embedfleet.producers.progress, embedfleet.config.celery_app\n"
        "import embedfleet.storage.vectors, embedfleet.storage.export, embedfleet.storage.ledger\n"
        "bad = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
