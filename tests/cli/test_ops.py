"""`embedfleet jobs`, `metrics` and `status --watch` as processes, on a SQLite ledger holding a job that
`embedfleet run` finished (with the model-free HashEncoder: these read the ledger, not vectors)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
import urllib.request

from embedfleet.store.engine import get_engine
from tests.cli.conftest import ENV, hash_cli
from tests.conftest import BIN, REPO, assert_imports_no_model, listening_addresses


def test_jobs_lists_one_line_per_job(finished_job: str, sqlite_url: str) -> None:
    """A header, then the job: id, collection, state, read/stored/skipped/dead, rate and created time."""
    lines = hash_cli("jobs", "--db", sqlite_url).stdout.splitlines()
    assert lines[0].split()[:3] == ["JOB", "COLLECTION", "STATE"]
    assert len(lines) == 2
    fields = lines[1].split()
    assert fields[:7] == [finished_job, "tiny", "done", "16", "16", "0", "0"]
    assert float(fields[7]) > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", fields[8]) and re.fullmatch(r"\d\d:\d\d:\d\d", fields[9])


def test_jobs_on_an_empty_ledger_says_so(sqlite_url: str) -> None:
    """No jobs: nothing on stdout, a note on stderr, exit 0; with --json, an empty list."""
    get_engine(sqlite_url)  # a ledger with no job yet (jobs never creates one: tests/cli/test_main.py)
    result = hash_cli("jobs", "--db", sqlite_url)
    assert result.stdout == "" and "no jobs" in result.stderr
    assert json.loads(hash_cli("jobs", "--json", "--db", sqlite_url).stdout) == []


def test_jobs_json_is_one_document_of_every_job(finished_job: str, sqlite_url: str) -> None:
    """--json: a list of the jobs' figures, the same keys as `status --json`'s job part."""
    listed = json.loads(hash_cli("jobs", "--json", "--db", sqlite_url).stdout)
    assert [(j["job_id"], j["collection"], j["state"], j["stored"]) for j in listed] == [(finished_job, "tiny", "done", 16)]
    assert listed[0]["created_at"] <= listed[0]["finished_at"]


def test_the_exporter_serves_the_jobs_figures(finished_job: str, sqlite_url: str) -> None:
    """`embedfleet metrics --port` answers a scrape with the job's stored count, labelled by job and collection;
    with no --address it listens on the loopback alone (it has no authentication)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(BIN / "embedfleet"), "metrics", "--port", str(port), "--db", sqlite_url],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    text = response.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, "the exporter never answered"
                time.sleep(0.2)
        labels = f'collection="tiny",job="{finished_job}"'
        assert f"embedfleet_job_records_stored{{{labels}}} 16.0" in text
        assert f"embedfleet_job_records_read{{{labels}}} 16.0" in text
        assert f"embedfleet_job_chunks_done{{{labels}}} 4.0" in text
        assert f"embedfleet_job_error_rate{{{labels}}} 0.0" in text
        assert re.search(rf"embedfleet_job_encode_p95_seconds\{{{labels}\}} \d", text)
        assert "embedfleet_ledger_up 1.0" in text
        assert listening_addresses(port) == {"127.0.0.1"}
        # Fleet figures, one series each: no job label, so they do not grow with the jobs.
        for line in ("embedfleet_live_workers{queue=\"embed\"} 0.0", "embedfleet_chunks_queued 0.0",
                     "embedfleet_chunks_in_flight 0.0", "embedfleet_jobs_running 0.0"):
            assert line in text, text
        # Every metric the Grafana dashboard queries is one this exporter serves.
        dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "embedfleet.json").read_text())
        queried = {name for panel in dashboard["panels"] for target in panel["targets"]
                   for name in re.findall(r"embedfleet_[a-z0-9_]+", target["expr"])}
        served = set(re.findall(r"^# TYPE (embedfleet_[a-z0-9_]+) ", text, re.MULTILINE))
        assert len(queried) >= 10 and queried <= served, sorted(queried - served)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=20)
    assert rc == 0, "the exporter should stop cleanly on SIGTERM"


def test_operations_commands_import_no_torch() -> None:
    """`flower`, `jobs` and `metrics` run on a monitoring host without the model."""
    assert_imports_no_model("embedfleet.cli.ops", "embedfleet.jobs.metrics", "flower.command", "prometheus_client")


def test_flower_shows_kwargs_and_result_unless_the_user_chose_columns() -> None:
    """`embedfleet flower` sets FLOWER_TASKS_COLUMNS (with kwargs and result) only when the user has not:
    Flower reads its environment below flowerconfig.py and the command line, so a user's
    `--tasks_columns=...` wins over it too (checked against a real Flower in tests/fleet/test_flower.py)."""
    from embedfleet.cli.ops import TASKS_COLUMNS, flower_environment

    added = flower_environment({})
    assert added == {"FLOWER_TASKS_COLUMNS": TASKS_COLUMNS}
    columns = TASKS_COLUMNS.split(",")
    assert {"kwargs", "result", "name", "state"} <= set(columns)
    assert columns.index("kwargs") < columns.index("received")
    assert flower_environment({"FLOWER_TASKS_COLUMNS": "name,state"}) == {}
