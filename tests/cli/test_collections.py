"""`embedfleet collections` and `delete-collection` as processes, on a ledger `embedfleet run` filled."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.cli.conftest import ENV, hash_cli
from tests.conftest import BIN


def test_collections_lists_versions_with_rows(finished_job: str, sqlite_url: str) -> None:
    """One line per collection (current version, rows, dim, model); --json gives every version's rows too."""
    lines = hash_cli("collections", "--db", sqlite_url).stdout.splitlines()
    assert lines[0].split() == ["COLLECTION", "VERSION", "ROWS", "DIM", "MODEL"]
    assert lines[1].split()[:4] == ["tiny", "1", "16", "8"]
    (listed,) = json.loads(hash_cli("collections", "--json", "--db", sqlite_url).stdout)
    assert (listed["name"], listed["current_version"], listed["rows"], listed["dim"]) == ("tiny", 1, 16, 8)
    assert [(v["version"], v["rows"], v["state"], v["role"]) for v in listed["versions"]] == [(1, 16, "ready", "current")]


def test_delete_collection_asks_unless_yes(finished_job: str, sqlite_url: str, tmp_path: Path) -> None:
    """No answer (stdin closed) or 'n': exit 1, nothing deleted. 'y', or --yes: the collection and its job are gone."""
    def delete(*args: str, answer: str | None) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "embedfleet"), "delete-collection", "tiny", "--db", sqlite_url, *args],
                              env=ENV, input=answer, capture_output=True, text=True, timeout=120)

    for answer in (None, "n\n"):
        declined = delete(answer=answer)
        assert declined.returncode == 1 and "nothing was deleted" in declined.stderr, declined.stderr
    assert json.loads(hash_cli("collections", "--json", "--db", sqlite_url).stdout)[0]["rows"] == 16
    confirmed = delete(answer="y\n")
    assert confirmed.returncode == 0 and "delete collection 'tiny': 1 versions, 16 vectors?" in confirmed.stderr
    assert confirmed.stdout.strip() == "deleted collection tiny: 1 versions, 16 vectors, 1 jobs"
    assert json.loads(hash_cli("collections", "--json", "--db", sqlite_url).stdout) == []
    gone = hash_cli("status", finished_job[:8], "--db", sqlite_url, check=False)
    assert gone.returncode == 2 and "no job" in gone.stderr
    again = delete("--yes", "--json", answer=None)
    assert again.returncode == 2 and "no collection 'tiny'" in again.stderr


def test_delete_collection_is_refused_while_a_job_runs(redis_url: str, pg_url: str, tmp_path: Path) -> None:
    """On PostgreSQL: a submitted job nobody works on keeps its collection; cancelled, it can go (--yes --json)."""
    env = {**ENV, "EMBEDFLEET_DATABASE_URL": pg_url, "EMBEDFLEET_BROKER_URL": redis_url}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "embedfleet"), *args], env=env, capture_output=True, text=True, timeout=120)

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"r{i}", "text": f"text {i}"}) + "\n" for i in range(4)))
    job_id = cli("submit", str(corpus), "--collection", "busy").stdout.strip()
    refused = cli("delete-collection", "busy", "--yes")
    assert refused.returncode == 2 and f"job {job_id} on collection 'busy' has not ended" in refused.stderr
    assert cli("cancel", job_id[:8]).returncode == 0
    deleted = json.loads(cli("delete-collection", "busy", "--yes", "--json").stdout)
    assert deleted == {"name": "busy", "versions": 1, "vectors": 0, "jobs": 1}


def test_collection_version_replaces_version(finished_job: str, sqlite_url: str, tmp_path: Path) -> None:
    """export --collection-version N picks a version; the old --version N is refused with the new name."""
    out = tmp_path / "v1.npy"
    done = json.loads(hash_cli("export", "--collection", "tiny", "--collection-version", "1", "--out", str(out),
                               "--json", "--db", sqlite_url).stdout)
    assert (done["rows"], done["dim"], done["path"]) == (16, 8, str(out)) and out.exists()
    old = hash_cli("export", "--collection", "tiny", "--version", "1", "--out", str(out), "--db", sqlite_url,
                   check=False)
    assert old.returncode == 2 and "use --collection-version 1" in old.stderr
