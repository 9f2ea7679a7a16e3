"""The Celery app: configured from settings at import, registers every routed task through its
`include`, and loads no model when a producer imports it."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO, assert_imports_no_model


def _in_fresh_interpreter(code: str, **env: str) -> dict:
    import os

    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **env})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_the_app_loads_no_model() -> None:
    """A producer or monitor imports the app to send by task name: no torch, transformers or sentence-transformers."""
    assert_imports_no_model("embedfleet.fleet.celery_app")


def test_app_includes_the_worker_and_producer_task_modules() -> None:
    """A worker imports both task modules through `include`; together they register every routed task."""
    got = _in_fresh_interpreter(
        "import json\n"
        "from embedfleet.fleet.celery_app import app\n"
        "from embedfleet.fleet.queues import ROUTES\n"
        "include = list(app.conf.include)\n"
        "app.loader.import_default_modules()\n"
        "print(json.dumps({'include': include, 'missing': sorted(set(ROUTES) - set(app.tasks))}))\n"
    )
    assert set(got["include"]) == {"embedfleet.fleet.tasks", "embedfleet.fleet.job_tasks"}
    assert got["missing"] == []


def test_app_is_configured_from_the_environment_at_import() -> None:
    """EMBEDFLEET_* settings in the environment reach the app's broker, its timeouts and its beat schedule."""
    got = _in_fresh_interpreter(
        "import json\n"
        "from embedfleet.fleet.celery_app import app\n"
        "print(json.dumps({'main': app.main, 'broker': app.conf.broker_url,\n"
        "    'visibility': app.conf.broker_transport_options['visibility_timeout'],\n"
        "    'acks_late': app.conf.task_acks_late, 'beat': sorted(app.conf.beat_schedule)}))\n",
        EMBEDFLEET_BROKER_URL="redis://broker.example:6390/3", EMBEDFLEET_VISIBILITY_TIMEOUT="777",
        EMBEDFLEET_REINDEX_COLLECTIONS="docs",
    )
    assert got["main"] == "embedfleet"
    assert got["broker"] == "redis://broker.example:6390/3"
    assert got["visibility"] == 777 and got["acks_late"] is True
    assert got["beat"] == ["reconcile-stalled-jobs", "reindex-docs"]
