"""CLI fixtures: the real `embedfleet` command with the model-free HashEncoder, and a ledger
holding one job that `embedfleet run` finished (the operations commands read the ledger, not vectors)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN, COMMIT_FIELDS, REPO, SAMPLE

ENV = {
    **os.environ,
    "EMBEDFLEET_ENCODER": "tests.encode.fake_encoders:HashEncoder",
    "PYTHONPATH": str(REPO),
    "HF_HUB_OFFLINE": "1",
}


def hash_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`embedfleet ARGS` as a process, encoding with the HashEncoder."""
    result = subprocess.run([str(BIN / "embedfleet"), *args], env=ENV, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"embedfleet {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def finished_job(tmp_path: Path, sqlite_url: str) -> str:
    """A done job of 16 records in 4 chunks, collection `tiny`."""
    corpus = tmp_path / "c16.jsonl"
    corpus.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:16]))
    result = hash_cli("run", str(corpus), "--collection", "tiny", "--fields", ",".join(COMMIT_FIELDS),
                        "--chunk-size", "4", "--db", sqlite_url)
    assert "stored 16" in result.stdout, result.stdout
    return re.search(r"job ([0-9a-f]{32}) done", result.stdout).group(1)
