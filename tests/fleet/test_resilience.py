"""Faults a red-team review found past the first fault suite, each on the real fleet (real
Redis, real `embedfleet worker` processes) with a model-free encoder so pool restarts are fast.
Each asserts the job ends, and stored + skipped + dead = read, one row per record, export in
corpus order."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from embedfleet.chunks.dead_letters import list_letters
from embedfleet.jobs.stats import job_stats
from embedfleet.store.engine import get_engine
from tests.conftest import BIN, TEST_PG_URL, Fleet, embedfleet
from tests.fleet.checks import assert_accounted, wait_done

pytestmark = pytest.mark.fleet
ENCODERS = "tests.encode.resilience_encoders"
ONE_THREAD = {"EMBEDFLEET_TORCH_THREADS": "1"}


def record(what: str, seconds: float) -> None:
    """A recovery figure, printed for the closing note (`pytest -s`)."""
    print(f"recovery: {what}: {seconds:.1f} s")


def corpus(tmp_path: Path, texts: list[str]) -> tuple[Path, list[str]]:
    path = tmp_path / "corpus.jsonl"
    ids = [f"r{i:03d}" for i in range(len(texts))]
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, texts)))
    return path, ids


def plain(n: int) -> list[str]:
    return [f"record number {i} about topic {i * 7 % 13} " + "word " * (i % 5) for i in range(n)]


def start(fleet: Fleet, *names: str) -> None:
    for name in names:
        fleet.start_worker(name)
    fleet.wait_ready(list(names))


def submit(fleet: Fleet, path: Path, *extra: str) -> str:
    return fleet.cli("submit", str(path), "--collection", "rt", "--chunk-size", "4", *extra).stdout.split()[0]


def test_process_dies_between_a_crash_split_and_its_send(sqlite_url, make_fleet, tmp_path) -> None:
    """The pool process dies after a crash split is committed but before its halves are sent:
    the parent's message comes back, and its delivery sends the halves nobody started."""
    fleet = make_fleet(sqlite_url, **ONE_THREAD, EMBEDFLEET_ENCODER=f"{ENCODERS}:DieAfterSplit",
                       RT_STATE_DIR=str(tmp_path))
    start(fleet, "w1")
    texts = plain(12)
    texts[5] += " CRASH-MARKER"
    path, ids = corpus(tmp_path, texts)
    stats = wait_done(sqlite_url, submit(fleet, path), timeout=120)
    assert (tmp_path / "died-after-split").exists()  # the fault really happened
    assert_accounted(sqlite_url, stats.job_id, "rt", ids, tmp_path / "out.npy")
    assert (stats.stored, stats.dead) == (11, 1)
    assert stats.splits >= 1  # crash splits are counted in the job's splits


def test_record_that_hangs_its_process(sqlite_url, make_fleet, tmp_path) -> None:
    """A record whose encode never returns: Celery kills the process at the chunk's time limit,
    the chunk is halved at once, and the record left alone is one WorkerTimedOut letter.

    The limits are shortened (3 s + 0.5 s a record) so the test takes seconds; the default
    (180 s + 1 s a record) only changes how long each of the ~log2(chunk) steps waits, and is
    set to outlast any healthy chunk, which a test of the mechanism cannot show either way."""
    fleet = make_fleet(sqlite_url, **ONE_THREAD, EMBEDFLEET_ENCODER=f"{ENCODERS}:NoopHang",
                       EMBEDFLEET_CHUNK_TIME_LIMIT="3", EMBEDFLEET_CHUNK_TIME_PER_RECORD="0.5")
    start(fleet, "w1", "w2")
    texts = plain(24)
    texts[9] += " HANG-MARKER"
    path, ids = corpus(tmp_path, texts)
    began = time.monotonic()
    stats = wait_done(sqlite_url, submit(fleet, path), timeout=180)
    record("record that hangs (short limits)", time.monotonic() - began)
    assert_accounted(sqlite_url, stats.job_id, "rt", ids, tmp_path / "out.npy")
    assert (stats.stored, stats.dead) == (23, 1)
    [letter] = list_letters(get_engine(sqlite_url), stats.job_id)
    assert (letter.record_id, letter.error_type) == ("r009", "WorkerTimedOut")


def test_record_that_kills_the_collector_process(sqlite_url, make_fleet, tmp_path) -> None:
    """The collect of one chunk ends its process every time (OOM in the upsert, a driver crash):
    collects are capped like encodes, and that chunk's records become CollectorCrashed letters."""
    fleet = make_fleet(sqlite_url, **ONE_THREAD, EMBEDFLEET_ENCODER=f"{ENCODERS}:CollectorCrash")
    start(fleet, "w1", "w2")
    path = tmp_path / "corpus.jsonl"
    ids = [f"r{i:03d}" for i in range(16)]
    ids[5] = "boom"
    path.write_text("".join(json.dumps({"id": i, "text": f"text {n}"}) + "\n" for n, i in enumerate(ids)))
    began = time.monotonic()
    stats = wait_done(sqlite_url, submit(fleet, path, "--chunk-size", "4"), timeout=150)
    record("collect that kills its process", time.monotonic() - began)
    assert_accounted(sqlite_url, stats.job_id, "rt", ids, tmp_path / "out.npy")
    letters = list_letters(get_engine(sqlite_url), stats.job_id)
    assert {letter.error_type for letter in letters} == {"CollectorCrashed"}
    assert "boom" in {letter.record_id for letter in letters}
    assert stats.stored + stats.dead == 16 and stats.dead == len(letters)


@pytest.fixture
def own_pg(pg_url: str) -> Iterator[tuple[str, str, object]]:
    """The test's own database (pg_url) and an admin connection that can close it."""
    import psycopg

    admin = psycopg.connect(TEST_PG_URL, autocommit=True, connect_timeout=3)
    name = pg_url.rsplit("/", 1)[1]
    try:
        yield pg_url, name, admin
    finally:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.close()


def test_database_outage_longer_than_the_retries(own_pg, make_fleet, tmp_path, recovery) -> None:
    """The database refuses connections for 45 s mid-job, longer than a chunk's max_retries last,
    with the product's defaults (a lease of 120 s): chunks whose store failed keep trying every few
    seconds while the database is away (fleet/tasks.py: ChunkTask.retry), so the job ends seconds
    after connections are allowed again. The bound is a quarter of the lease, which the
    reconciler alone would take."""
    url, name, admin = own_pg
    fleet = make_fleet(url, **ONE_THREAD, EMBEDFLEET_ENCODER=f"{ENCODERS}:NoopCrash", RT_DELAY="0.3")
    start(fleet, "w1", "w2")
    path, ids = corpus(tmp_path, plain(120))
    job_id = submit(fleet, path)
    time.sleep(3)
    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')  # type: ignore[attr-defined]
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",  # type: ignore[attr-defined]
                  (name,))
    time.sleep(45)
    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')  # type: ignore[attr-defined]
    back = time.monotonic()
    stats = wait_done(url, job_id, timeout=150)
    recovery("database down 45 s, defaults (return -> job end)", time.monotonic() - back, 30)
    assert_accounted(url, job_id, "rt", ids, tmp_path / "out.npy")
    assert stats.stored + stats.dead == 120 and stats.dead == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _own_redis(tmp_path: Path, keep: bool) -> Iterator[tuple[str, object]]:
    """A redis-server of our own that the test can restart (kill -9, then start again):
    keep=False keeps nothing on disk, keep=True an append-only file written on every command."""
    port = _free_port()
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if keep else ["--appendonly", "no"]
    args = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", *persistence,
            "--dir", str(tmp_path)]
    state = {"proc": subprocess.Popen(args, stdout=subprocess.DEVNULL)}
    time.sleep(0.5)

    def restart() -> None:
        state["proc"].kill()
        state["proc"].wait()
        time.sleep(1)
        state["proc"] = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        time.sleep(0.5)

    yield f"redis://127.0.0.1:{port}/0", restart
    state["proc"].kill()
    state["proc"].wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, object]]:
    yield from _own_redis(tmp_path, keep=False)


@pytest.fixture
def own_redis_aof(tmp_path: Path) -> Iterator[tuple[str, object]]:
    yield from _own_redis(tmp_path, keep=True)


def job_through_a_broker_restart(fleet: Fleet, restart: object, after: float, tmp_path: Path) -> float:
    """160 records in chunks of 4 on workers w1 and w2, `submit --wait`, the broker restarted
    `after` seconds in: the job ends, every record accounted for. Seconds from restart to end."""
    start(fleet, "w1", "w2")
    path, ids = corpus(tmp_path, plain(160))
    waiting = subprocess.Popen([str(BIN / "embedfleet"), "submit", str(path), "--collection", "rt",
                                "--chunk-size", "4", "--wait"], env=fleet.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    restart()  # type: ignore[operator]
    restarted = time.monotonic()
    out, err = waiting.communicate(timeout=180)
    seconds = time.monotonic() - restarted
    assert waiting.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    job_id = out.split()[0]
    assert job_stats(get_engine(fleet.database_url), job_id).state == "done"
    assert_accounted(fleet.database_url, job_id, "rt", ids, tmp_path / "out.npy")
    return seconds


@contextmanager
def _default_fleet(url: str, database_url: str, tmp_path: Path) -> Iterator[Fleet]:
    """Workers with the product's defaults on a broker of the test's own; RT_DELAY: each chunk
    takes 0.3 s, so chunks are being encoded when the broker goes."""
    fleet = Fleet(url, database_url, tmp_path, {**ONE_THREAD, "EMBEDFLEET_ENCODER": f"{ENCODERS}:NoopCrash",
                                                "RT_DELAY": "0.3"})
    try:
        yield fleet
    finally:
        fleet.stop()


def test_broker_restarted_with_its_data_mid_job(sqlite_url, own_redis_aof, tmp_path, recovery) -> None:
    """Redis (append-only file) is killed and started again mid-job, with the product's
    defaults: chunks being encoded meanwhile cannot send their collect message until it is
    back; their sends keep trying (task_publish_retry_policy, about a minute), so the job ends
    seconds after the restart. Before, each such chunk waited a whole lease (120 s) for the
    reconciler: the bound below is under that lease, so it pins the difference."""
    url, restart = own_redis_aof
    with _default_fleet(url, sqlite_url, tmp_path) as fleet:
        seconds = job_through_a_broker_restart(fleet, restart, 4, tmp_path)
        recovery("broker restarted with its data (AOF), defaults (restart -> job end)", seconds, 60)


def test_broker_restarted_empty_mid_job(sqlite_url, own_redis, tmp_path) -> None:
    """Redis restarts with nothing on disk mid-job, nobody runs `resume` and beat does not run:
    the workers' reconcile re-sends the lost chunks and `submit --wait` exits 0.

    Lease shortened to 10 s (default 120 s), for the same reason as the database outage."""
    url, restart = own_redis
    fleet = Fleet(url, sqlite_url, tmp_path, {**ONE_THREAD, "EMBEDFLEET_ENCODER": f"{ENCODERS}:NoopCrash",
                                              "RT_DELAY": "0.3", "EMBEDFLEET_LEASE_SECONDS": "10",
                                              "EMBEDFLEET_RECONCILE_EVERY_SECONDS": "3"})
    try:
        record("broker restarted empty (lease 10 s)", job_through_a_broker_restart(fleet, restart, 6, tmp_path))
    finally:
        fleet.stop()


def test_broker_restarted_empty_with_the_defaults_resends_at_once(sqlite_url, own_redis, tmp_path,
                                                                    recovery) -> None:
    """The same restart with nothing on disk and the product's defaults (a lease of 120 s): the
    workers' heartbeats see the broker's epoch key gone (fleet/broker_epoch.py) and one of them
    re-sends the running job's open chunks as soon as it reconnects. The bound is half the
    lease, which the reconciler alone would take."""
    url, restart = own_redis
    with _default_fleet(url, sqlite_url, tmp_path) as fleet:
        seconds = job_through_a_broker_restart(fleet, restart, 6, tmp_path)
        recovery("broker restarted empty, defaults (restart -> job end)", seconds, 60)
        logs = fleet.log("w1") + fleet.log("w2")
        assert logs.count("the broker came back empty") == 1, logs[-3000:]  # one node re-sends, not each


def test_embedded_run_with_a_record_that_exits_the_process(tmp_path) -> None:
    """`embedfleet run` with a record that ends the process should store the rest."""
    path, _ = corpus(tmp_path, [f"text {i}" + (" CRASH-MARKER" if i == 13 else "") for i in range(40)])
    result = embedfleet("run", str(path), "--collection", "c", "--chunk-size", "8", "--db",
                        f"sqlite:///{tmp_path / 'e.db'}", cwd=tmp_path, check=False,
                        EMBEDFLEET_ENCODER=f"{ENCODERS}:NoopCrash", EMBEDFLEET_TORCH_THREADS="1")
    assert result.returncode == 0
    assert "stored 39" in result.stdout and "dead 1" in result.stdout
