"""`embedfleet jobs`, `metrics` and `status --watch` as processes, on a SQLite ledger holding a job that
`embedfleet run` finished (with the model-free HashEncoder: these read the ledger, not vectors)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import BIN, COMMIT_FIELDS, REPO, SAMPLE

ENV = {
    **os.environ,
    "EMBEDFLEET_ENCODER": "tests.workers.fake_encoders:HashEncoder",
    "PYTHONPATH": str(REPO),
    "HF_HUB_OFFLINE": "1",
}


def embedfleet(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "embedfleet"), *args], env=ENV, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"embedfleet {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def finished_job(tmp_path: Path, sqlite_url: str) -> str:
    """A done job of 16 records in 4 chunks, collection `tiny`."""
    corpus = tmp_path / "c16.jsonl"
    corpus.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:16]))
    result = embedfleet("run", str(corpus), "--collection", "tiny", "--fields", ",".join(COMMIT_FIELDS),
                        "--chunk-size", "4", "--db", sqlite_url)
    assert "stored 16" in result.stdout, result.stdout
    return re.search(r"job ([0-9a-f]{32}) done", result.stdout).group(1)


def test_jobs_lists_one_line_per_job(finished_job: str, sqlite_url: str) -> None:
    """A header, then the job: id, collection, state, read/stored/skipped/dead, rate and created time."""
    lines = embedfleet("jobs", "--db", sqlite_url).stdout.splitlines()
    assert lines[0].split()[:3] == ["JOB", "COLLECTION", "STATE"]
    assert len(lines) == 2
    fields = lines[1].split()
    assert fields[:7] == [finished_job, "tiny", "done", "16", "16", "0", "0"]
    assert float(fields[7]) > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", fields[8]) and re.fullmatch(r"\d\d:\d\d:\d\d", fields[9])


def test_jobs_on_an_empty_ledger_says_so(sqlite_url: str) -> None:
    """No jobs: nothing on stdout, a note on stderr, exit 0."""
    result = embedfleet("jobs", "--db", sqlite_url)
    assert result.stdout == "" and "no jobs" in result.stderr


def test_the_exporter_serves_the_jobs_figures(finished_job: str, sqlite_url: str) -> None:
    """`embedfleet metrics --port` answers a scrape with the job's stored count, labelled by job and collection."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(BIN / "embedfleet"), "metrics", "--port", str(port), "--address", "127.0.0.1",
                             "--db", sqlite_url], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=20)
    assert rc == 0, "the exporter should stop cleanly on SIGTERM"


def test_status_watch_prints_the_summary_of_a_done_job(finished_job: str, sqlite_url: str) -> None:
    """`status --watch` follows the job to done and prints the same summary line as `run`."""
    result = embedfleet("status", finished_job, "--watch", "--db", sqlite_url)
    assert f"job {finished_job} done: read 16, stored 16, skipped 0, dead 0" in result.stdout


def test_status_watch_of_an_unknown_job_is_an_error(sqlite_url: str) -> None:
    """An unknown job exits 2 with `error: ...`."""
    result = embedfleet("status", "0" * 32, "--watch", "--db", sqlite_url, check=False)
    assert result.returncode == 2 and "error:" in result.stderr


def test_operations_commands_import_no_torch() -> None:
    """`flower`, `jobs` and `metrics` run on a monitoring host without the model."""
    import sys

    code = (
        "import sys\n"
        "import embedfleet.cli.ops, embedfleet.storage.metrics, flower.command, prometheus_client\n"
        "bad = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
