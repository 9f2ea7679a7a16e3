"""Real Flower (`embedfleet flower`) on real Redis, watching a real worker run a small job."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import BIN, COMMIT_FIELDS, SAMPLE, listening_addresses, read_records

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


def start_flower(fleet, port: int, auth: tuple[str, str], *args: str, name: str = "flower",  # type: ignore[no-untyped-def]
                 worker: str = "w1") -> str:
    """`embedfleet flower` with credentials from the environment, once it follows the event stream."""
    base = f"http://127.0.0.1:{port}"
    # No --address: embedfleet flower listens on the loopback by default.
    fleet.start(name, "flower", "--port", str(port), *args,
                EMBEDFLEET_FLOWER_USER=auth[0], EMBEDFLEET_FLOWER_PASSWORD=auth[1])
    if not worker:
        poll(fleet, name, lambda: http_get(f"{base}/healthcheck")[0] == 200, 60, "Flower never answered")
        return base
    fleet.wait_ready([worker])
    # Flower follows the event stream once the worker's heartbeats reach its metrics: from
    # then on it sees every task event of the job.
    poll(fleet, name, lambda: f'flower_worker_online{{worker="{worker}@' in http_get(f"{base}/metrics")[1],
         60, f"Flower never saw worker {worker}")
    return base


def job_tasks(base: str, auth: tuple[str, str], job_id: str) -> dict[str, dict]:
    """Flower's tasks whose shown kwargs name the job (by its short id, as the label does)."""
    status, body = http_get(f"{base}/api/tasks", auth)
    assert status == 200, (status, body)
    return {k: t for k, t in json.loads(body).items() if f" job {job_id[:8]}" in (t.get("kwargs") or "")}


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
    """Flower shows every encode task of the job as SUCCESS, labelled by job and chunk, never with the texts, its
    result saying what was stored (the default worker stores the chunks it encodes: no collect task); its API
    refuses requests without credentials; /metrics serves flower_ metrics; it listens on the loopback alone."""
    corpus = small_corpus16(tmp_path)
    records = read_records(corpus)
    auth = ("ops", f"pw-{uuid.uuid4().hex[:12]}")
    fleet = make_fleet(sqlite_url, EMBEDFLEET_TORCH_THREADS="1")
    fleet.start_worker("w1")
    port = free_port()
    base = start_flower(fleet, port, auth)
    assert listening_addresses(port) == {"127.0.0.1"}

    result = fleet.cli("submit", str(corpus), "--collection", "flowerjob", "--fields", ",".join(COMMIT_FIELDS),
                       "--chunk-size", "4", "--wait")
    job_id = result.stdout.split()[0]
    assert "stored 16, skipped 0, dead 0" in result.stdout, result.stdout

    def all_succeeded() -> dict | None:
        tasks = job_tasks(base, auth, job_id)
        done = Counter(t["name"] for t in tasks.values() if t["state"] == "SUCCESS")
        return tasks if done[ENCODE] == 4 else None

    tasks = poll(fleet, "flower", all_succeeded, 60, "the job's 4 tasks never all showed as SUCCESS")
    by_state = Counter(f"{t['name']} {t['state']}" for t in tasks.values())
    print(f"\nFlower /api/tasks for job {job_id}: {json.dumps(dict(sorted(by_state.items())))}")
    assert by_state == {f"{ENCODE} SUCCESS": 4}

    # What Flower shows of a task is its label: chunk, collection and job first, never the texts.
    label = re.compile(rf"chunk (\d+) flowerjob job {job_id[:8]}, ")
    chunks = sorted(int(label.match(t["kwargs"])[1]) for t in tasks.values())
    assert chunks == [0, 1, 2, 3], chunks
    # The result column says what each chunk came to.
    assert {t["result"] for t in tasks.values()} == {"'encoded 4, stored 4, dead 0'"}
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
    assert f'flower_task_runtime_seconds_count{{task="{ENCODE}",worker="w1@' in metrics


def test_retried_chunk_tasks_still_show_only_their_label(sqlite_url: str, make_fleet, tmp_path: Path) -> None:
    """A chunk retried after a transient error is shown by its label on every delivery, never its texts; so is
    each collect task (collect_in_place off, so that every chunk has one: its message carries the texts when
    they are stored)."""
    corpus = small_corpus16(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    auth = ("ops", f"pw-{uuid.uuid4().hex[:12]}")
    fleet = make_fleet(sqlite_url, EMBEDFLEET_TORCH_THREADS="1", EMBEDFLEET_TEST_STATE_DIR=str(state),
                       EMBEDFLEET_COLLECT_IN_PLACE="false")
    fleet.start_worker("w1", EMBEDFLEET_ENCODER="tests.encode.fault_encoders:FlakyEncoder")
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
    assert all(re.match(rf"chunk \d+ flaky job {job_id[:8]}, ", t["kwargs"]) for t in tasks.values()), \
        [t["kwargs"][:200] for t in tasks.values()]
    assert_no_texts(tasks, read_records(corpus))


def test_poison_records_show_as_a_failed_dead_letter_notice(sqlite_url: str, make_fleet, tmp_path: Path) -> None:
    """A chunk whose records end as dead letters is not a clean success in Flower: its result says
    `dead 1`, and its dead_letter notice is a FAILURE row labelled by chunk and job. The chunk
    itself is done and nothing is retried. The tasks page shows the kwargs and result columns."""
    from tests.encode.fault_encoders import POISON_MARKER
    from tests.fleet.checks import FAULTS

    lines = SAMPLE.read_text().splitlines(keepends=True)[:8]
    record = json.loads(lines[5])
    record["title"] = f"{POISON_MARKER} {record['title']}"
    lines[5] = json.dumps(record) + "\n"
    corpus = tmp_path / "poison.jsonl"
    corpus.write_text("".join(lines))
    auth = ("ops", f"pw-{uuid.uuid4().hex[:12]}")
    fleet = make_fleet(sqlite_url, EMBEDFLEET_TORCH_THREADS="1")
    fleet.start_worker("w1", EMBEDFLEET_ENCODER=f"{FAULTS}:PoisonEncoder")
    base = start_flower(fleet, free_port(), auth)

    result = fleet.cli("submit", str(corpus), "--collection", "poisoned", "--fields", ",".join(COMMIT_FIELDS),
                       "--chunk-size", "4", "--wait", check=False)
    job_id = result.stdout.split()[0]
    assert "stored 7, skipped 0, dead 1" in result.stdout, result.stdout

    def settled() -> dict | None:
        tasks = job_tasks(base, auth, job_id)
        states = Counter(f"{t['name']} {t['state']}" for t in tasks.values())
        return tasks if states[f"{ENCODE} SUCCESS"] == 2 and states["embed.dead_letter FAILURE"] == 1 else None

    tasks = poll(fleet, "flower", settled, 60, "the poisoned chunk's notice never showed as FAILURE")
    print(f"\nFlower rows of job {job_id}: {[(t['name'], t['state'], t['kwargs'], t['result']) for t in tasks.values()]}")
    [notice] = [t for t in tasks.values() if t["name"] == "embed.dead_letter"]
    seq = int(re.match(rf"chunk (\d+) job {job_id[:8]}, 1 dead \(ValueError\)$", notice["kwargs"])[1])
    assert "1 records of chunk" in notice["exception"] and job_id in notice["exception"]
    assert notice["retries"] == 0
    # The default worker stores the chunks it encodes: the encode task's result says what was stored.
    collected = {int(re.match(r"chunk (-?\d+) ", t["kwargs"])[1]): t["result"] for t in tasks.values()
                 if t["name"] == ENCODE}
    assert collected[seq] == "'encoded 3, stored 3, dead 1'", collected
    assert sorted(collected.values()) == ["'encoded 3, stored 3, dead 1'", "'encoded 4, stored 4, dead 0'"]
    assert all(t["state"] == "SUCCESS" for t in tasks.values() if t["name"] in (ENCODE, COLLECT))
    # Expected, not a crash: one line in the worker's log, no traceback.
    assert "Traceback" not in fleet.log("w1")

    status, page = http_get(f"{base}/tasks", auth)
    assert status == 200
    headers = re.findall(r'<th data-column="(\w+)">', page)
    assert headers[:5] == ["name", "uuid", "state", "kwargs", "result"], headers


def test_reindex_shows_its_collection_and_a_users_columns_are_kept(sqlite_url: str, make_fleet,
                                                                   tmp_path: Path) -> None:
    """Beat's reindex entry sends the collection by name, so Flower's kwargs column shows it (not `{}`);
    a second Flower started with `--tasks_columns=name,state` shows just those columns."""
    from celery import Celery

    from embedfleet.fleet.beat import beat_schedule
    from embedfleet.fleet.celeryconfig import celery_config
    from embedfleet.settings import Settings

    corpus = small_corpus16(tmp_path)
    auth = ("ops", f"pw-{uuid.uuid4().hex[:12]}")
    fleet = make_fleet(sqlite_url, EMBEDFLEET_TORCH_THREADS="1")
    fleet.start_worker("w1")
    base = start_flower(fleet, free_port(), auth)
    fleet.cli("submit", str(corpus), "--collection", "nightly", "--fields", ",".join(COMMIT_FIELDS), "--wait")

    entry = beat_schedule(Settings(reindex_collections="nightly"))["reindex-nightly"]
    assert "args" not in entry
    app = Celery("beat-under-test")
    app.conf.update(celery_config(Settings(broker_url=fleet.broker_url)))
    sent = app.send_task(entry["task"], kwargs=entry["kwargs"])

    def shown() -> dict | None:
        status, body = http_get(f"{base}/api/task/info/{sent.id}", auth)
        task = json.loads(body) if status == 200 else {}
        return task if task.get("state") == "SUCCESS" else None

    task = poll(fleet, "flower", shown, 60, "the reindex task never showed as SUCCESS")
    assert task["kwargs"] == "{'collection': 'nightly'}" and task["args"] == "()"

    other = start_flower(fleet, free_port(), auth, "--tasks_columns=name,state", name="flower2", worker="")
    status, page = http_get(f"{other}/tasks", auth)
    assert status == 200
    assert re.findall(r'<th data-column="(\w+)">', page) == ["name", "state"]


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
