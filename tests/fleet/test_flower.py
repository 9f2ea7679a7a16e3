"""Real Flower (`embedfleet flower`) on real Redis, watching a real worker run a small job."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import BIN, COMMIT_FIELDS, SAMPLE, read_records

pytestmark = pytest.mark.fleet

ENCODE, COLLECT = "embed.encode_chunk", "embed.collect_chunk"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def poll(fleet, name: str, check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    """Call check() until it returns something truthy; fail early if the process died."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if fleet.procs[name].poll() is not None:
            raise AssertionError(f"{name} exited with {fleet.procs[name].returncode}:\n{fleet.log(name)}")
        try:
            last = check()
        except OSError as exc:  # not listening yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"{what} after {timeout}s (last: {last!r})\n{fleet.log(name)[-3000:]}")


def start_flower(fleet, port: int, auth: tuple[str, str]) -> str:  # type: ignore[no-untyped-def]
    """`embedfleet flower` with credentials from the environment, once it follows the event stream."""
    base = f"http://127.0.0.1:{port}"
    fleet.start("flower", "flower", "--port", str(port), "--address=127.0.0.1",
                EMBEDFLEET_FLOWER_USER=auth[0], EMBEDFLEET_FLOWER_PASSWORD=auth[1])
    fleet.wait_ready(["w1"])
    # Flower follows the event stream once the worker's heartbeats reach its metrics: from
    # then on it sees every task event of the job.
    poll(fleet, "flower", lambda: 'flower_worker_online{worker="w1@' in http_get(f"{base}/metrics")[1],
         60, "Flower never saw worker w1")
    return base


def job_tasks(base: str, auth: tuple[str, str], job_id: str) -> dict[str, dict]:
    """Flower's tasks whose shown kwargs name the job."""
    status, body = http_get(f"{base}/api/tasks", auth)
    assert status == 200, (status, body)
    return {k: t for k, t in json.loads(body).items() if f"job={job_id}" in (t.get("kwargs") or "")}


def small_corpus16(tmp_path: Path) -> Path:
    corpus = tmp_path / "c16.jsonl"
    corpus.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:16]))
    return corpus


def assert_no_texts(tasks: dict[str, dict], records: list[dict]) -> None:
    shown = json.dumps(list(tasks.values()))
    for record in records:
        for field in ("title", "description", "text"):
            text = record.get(field) or ""
            if len(text) >= 12:
                assert text not in shown and json.dumps(text)[1:-1] not in shown, f"record text in Flower: {text!r}"
    # The wire form's keys, as a repr of the kwargs would show them.
    assert "'texts':" not in shown and "'vectors':" not in shown


def test_flower_lists_the_jobs_chunk_tasks_as_succeeded(sqlite_url: str, make_fleet, tmp_path: Path) -> None:
    """Flower shows every encode and collect task of the job as SUCCESS, labelled by job and chunk, never
    with the texts; its API refuses requests without credentials; /metrics serves flower_ metrics."""
    corpus = small_corpus16(tmp_path)
    records = read_records(corpus)
    auth = ("ops", f"pw-{uuid.uuid4().hex[:12]}")
    fleet = make_fleet(sqlite_url, EMBEDFLEET_TORCH_THREADS="1")
    fleet.start_worker("w1")
    base = start_flower(fleet, free_port(), auth)

    result = fleet.cli("submit", str(corpus), "--collection", "flowerjob", "--fields", ",".join(COMMIT_FIELDS),
                       "--chunk-size", "4", "--wait")
    job_id = result.stdout.split()[0]
    assert "stored 16, skipped 0, dead 0" in result.stdout, result.stdout

    def all_succeeded() -> dict | None:
        tasks = job_tasks(base, auth, job_id)
        done = Counter(t["name"] for t in tasks.values() if t["state"] == "SUCCESS")
        return tasks if done[ENCODE] == 4 and done[COLLECT] == 4 else None

    tasks = poll(fleet, "flower", all_succeeded, 60, "the job's 4 + 4 tasks never all showed as SUCCESS")
    by_state = Counter(f"{t['name']} {t['state']}" for t in tasks.values())
    print(f"\nFlower /api/tasks for job {job_id}: {json.dumps(dict(sorted(by_state.items())))}")
    assert by_state == {f"{ENCODE} SUCCESS": 4, f"{COLLECT} SUCCESS": 4}

    # What Flower shows of a task is its label: job and chunk, never the texts.
    for name in (ENCODE, COLLECT):
        chunks = sorted(int(t["kwargs"].split("chunk=")[1].split()[0]) for t in tasks.values() if t["name"] == name)
        assert chunks == [0, 1, 2, 3], (name, chunks)
    assert_no_texts(tasks, records)
    assert all(t["args"] == "()" for t in tasks.values())
    assert {t["worker"].split("@")[0] for t in tasks.values()} == {"w1"}

    # No credentials, or wrong ones: refused.
    assert http_get(f"{base}/api/tasks")[0] == 401
    assert http_get(f"{base}/api/tasks", (auth[0], "wrong"))[0] == 401
    assert http_get(f"{base}/api/workers")[0] == 401
    # Prometheus text. Flower serves /metrics without authentication (a scraper needs none),
    # so the port must not be public: docs/operations.md says so.
    status, metrics = http_get(f"{base}/metrics")
    assert status == 200
    assert "# TYPE flower_events_total counter" in metrics
    assert f'flower_events_total{{task="{ENCODE}",type="task-succeeded",worker="w1@' in metrics
    assert f'flower_task_runtime_seconds_count{{task="{COLLECT}",worker="w1@' in metrics


def test_retried_chunk_tasks_still_show_only_their_label(sqlite_url: str, make_fleet, tmp_path: Path) -> None:
    """A chunk retried after a transient error is shown by its label on every delivery, never its texts."""
    corpus = small_corpus16(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    auth = ("ops", f"pw-{uuid.uuid4().hex[:12]}")
    fleet = make_fleet(sqlite_url, EMBEDFLEET_TORCH_THREADS="1", EMBEDFLEET_TEST_STATE_DIR=str(state))
    fleet.start_worker("w1", EMBEDFLEET_ENCODER="tests.workers.fault_encoders:FlakyEncoder")
    base = start_flower(fleet, free_port(), auth)

    result = fleet.cli("submit", str(corpus), "--collection", "flaky", "--fields", ",".join(COMMIT_FIELDS),
                       "--chunk-size", "4", "--wait")
    job_id = result.stdout.split()[0]
    assert "stored 16, skipped 0, dead 0" in result.stdout, result.stdout

    def settled() -> dict | None:
        _status, body = http_get(f"{base}/api/tasks", auth)
        tasks = {k: t for k, t in json.loads(body).items() if t["name"] in (ENCODE, COLLECT)}
        done = Counter(t["name"] for t in tasks.values() if t["state"] == "SUCCESS")
        return tasks if done[ENCODE] == 4 and done[COLLECT] == 4 else None

    tasks = poll(fleet, "flower", settled, 60, "the job's tasks never all showed as SUCCESS")
    retried = [t for t in tasks.values() if t["retries"]]
    print(f"\nretried tasks as Flower shows them: {[(t['name'], t['retries'], t['kwargs'][:120]) for t in retried]}")
    assert retried, "FlakyEncoder should have caused retries"
    assert all(t["kwargs"].startswith(f"job={job_id} chunk=") for t in tasks.values()), \
        [t["kwargs"][:200] for t in tasks.values()]
    assert_no_texts(tasks, read_records(corpus))


@pytest.mark.parametrize("env", [{}, {"EMBEDFLEET_FLOWER_USER": "ops"}, {"EMBEDFLEET_FLOWER_PASSWORD": "pw"}],
                         ids=["none", "user-only", "password-only"])
def test_flower_refuses_to_start_without_credentials(env: dict[str, str], tmp_path: Path) -> None:
    """Without both user and password, and without --no-auth, `embedfleet flower` exits non-zero and says why."""
    import os

    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDFLEET_FLOWER_", "FLOWER_"))}
    port = free_port()
    result = subprocess.run(
        [str(BIN / "embedfleet"), "flower", "--port", str(port)],
        env={**base_env, "EMBEDFLEET_BROKER_URL": "redis://127.0.0.1:1/0", **env},
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "refusing to start Flower without credentials" in result.stderr
    assert "--no-auth" in result.stderr


def test_flower_credentials_flower_would_misread_are_refused() -> None:
    """A comma would split Flower's list of users; a colon would end the user name early."""
    import click

    from embedfleet.cli.ops import flower_auth_argument

    assert flower_auth_argument("ops", "s3:cret") == "--basic-auth=ops:s3:cret"
    for user, password in [("o:ps", "pw"), ("o,ps", "pw"), ("ops", "p,w")]:
        with pytest.raises(click.ClickException):
            flower_auth_argument(user, password)
