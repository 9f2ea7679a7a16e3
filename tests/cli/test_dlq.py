"""`embedfleet dlq` as a process: letters of a job found by its id's prefix, as lines or one JSON document."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.encoders import POISON
from tests.conftest import embedfleet


def test_dlq_list_by_prefix_as_lines_and_json(tmp_path: Path, sqlite_url: str) -> None:
    """A run with a poison record leaves one letter; `dlq list --job <8 chars>` shows it, --json without its text."""
    corpus = tmp_path / "c.jsonl"
    rows = [{"id": f"r{i}", "text": f"text {i}" + (f" {POISON}" if i == 2 else "")} for i in range(4)]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {"EMBEDFLEET_ENCODER": "tests.cli.encoders:HashPoison", "EMBEDFLEET_DATABASE_URL": sqlite_url}
    job_id = json.loads(embedfleet("run", str(corpus), "--collection", "c", "--json", cwd=tmp_path, **env).stdout)[
        "job_id"]
    line = embedfleet("dlq", "list", "--job", job_id[:8], cwd=tmp_path, **env).stdout.split("\t")
    assert line[1:5] == [job_id[:8], "r2", "2", "open"]
    (letter,) = json.loads(embedfleet("dlq", "list", "--job", job_id[:8], "--json", cwd=tmp_path, **env).stdout)
    assert (letter["job_id"], letter["record_id"], letter["state"]) == (job_id, "r2", "open") and "text" not in letter
    shown = json.loads(embedfleet("dlq", "show", str(letter["id"]), "--json", cwd=tmp_path, **env).stdout)
    assert POISON in shown["text"]
