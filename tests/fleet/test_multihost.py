"""The fleet across hosts: a broker host (Redis with AOF, and RabbitMQ with durable quorum
queues), a database host (PostgreSQL 15), three
worker hosts (`embedfleet worker -c 1`, the real model) and a producer host (`submit --wait`),
each a network namespace reaching the others only by address (tests/fleet/netns.py). Faults
are made from the root namespace: a host's link set down, the broker killed, latency added.

Scenarios marked with BOTH run once per broker: the broker host runs both servers, and each
test's fleet uses one of them (a Redis database flushed, or a RabbitMQ vhost of its own).

Every scenario asserts stored + skipped + dead = read, one row per record, export in corpus
order. The product's default timeouts are used throughout, except where a test says why."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from kombu.exceptions import OperationalError
from sqlalchemy import select

from embedfleet.jobs.stats import JobStats, job_stats
from embedfleet.store.engine import get_engine
from embedfleet.store.schema import chunks, jobs
from embedfleet.store.schema import workers as nodes
from tests.conftest import BIN, REPO, SAMPLE
from tests.fleet.checks import assert_accounted
from tests.fleet.netns import (
    Cluster,
    Host,
    init_postgres,
    netem_available,
    rabbitmqctl,
    start_postgres,
    start_rabbitmq,
    start_redis,
    stop_rabbitmq,
    sweep,
    unavailable_reason,
)

pytestmark = [pytest.mark.fleet, pytest.mark.multihost, pytest.mark.timeout(400)]

WORKERS = ("w1", "w2", "w3")
FIELDS = "title,description,files_touched"
COLLECTION = "mh"
# A scenario on each broker: the fleet fixture's parameter.
BOTH = pytest.mark.parametrize("fleet", ["redis", "rabbitmq"], indirect=True)


@dataclass
class Net:
    """The cluster and the URLs its hosts use."""

    cluster: Cluster
    data: Path
    redis_url: str
    amqp_base: str  # a vhost name goes after it
    pg_base: str

    def host(self, name: str) -> Host:
        return self.cluster.hosts[name]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    sweep()  # what a killed earlier run left behind
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"multi-host harness unavailable: {reason}")
    # Not pytest's tmp_path: its 0700 parents keep the postgres user out.
    data = Path(tempfile.mkdtemp(prefix="efmh-", dir="/tmp"))
    os.chmod(data, 0o755)
    cluster = Cluster(tmp_path_factory.mktemp("multihost-logs"))
    try:
        broker = cluster.add_host("broker", 2)
        db = cluster.add_host("db", 3)
        cluster.add_host("producer", 4)
        for i, name in enumerate(WORKERS):
            cluster.add_host(name, 11 + i)
        init_postgres(cluster, db, data / "pg")
        start_postgres(cluster, db, data / "pg")
        start_redis(cluster, broker, data / "redis")
        start_rabbitmq(cluster, broker, data / "rabbitmq")
        yield Net(cluster, data, f"redis://{broker.addr}:6379/0", f"amqp://guest:guest@{broker.addr}:5672/",
                  f"postgresql://postgres@{db.addr}:5432")
    finally:
        cluster.close()
        shutil.rmtree(data, ignore_errors=True)


@dataclass
class Fleet:
    """One test's fleet on the cluster: its own database and an empty broker."""

    net: Net
    db_url: str
    broker: str  # redis or rabbitmq
    broker_url: str
    workers: list[str] = field(default_factory=list)
    producers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "EMBEDFLEET_BROKER_URL": self.broker_url, "EMBEDFLEET_DATABASE_URL": self.db_url,
                "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO),
                "EMBEDFLEET_TORCH_THREADS": "1"}

    def start_workers(self, *names: str, **env: str) -> None:
        for name in names:
            self.net.cluster.spawn(self.net.host(name), name, [
                str(BIN / "embedfleet"), "worker", "-c", "1", "-n", f"{name}@%h", "--without-mingle",
                "--without-gossip"], env={**self.env, **env})
            self.workers.append(name)
        self.wait_ready(list(names))

    def wait_ready(self, names: list[str], timeout: float = 180) -> None:
        """Until each named worker answers a ping over the broker (its model loaded)."""
        from celery import Celery

        from embedfleet.fleet.celeryconfig import celery_config
        from embedfleet.settings import Settings

        control = Celery("multihost-control")
        control.conf.update(celery_config(Settings(broker_url=self.broker_url)))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                for name in names:
                    proc = self.net.cluster.procs[name]
                    assert proc.poll() is None, f"worker {name} exited:\n{self.net.cluster.log(name)[-3000:]}"
                try:
                    replies = control.control.ping(timeout=1.0) or []
                except (OSError, redis.exceptions.ConnectionError, OperationalError):  # the broker restarting
                    time.sleep(0.5)
                    continue
                seen = {next(iter(r)).split("@")[0] for r in replies}
                if set(names) <= seen:
                    return
            raise AssertionError(f"workers {names} not ready after {timeout}s")
        finally:
            control.close()

    def submit(self, corpus: Path, collection: str = COLLECTION) -> subprocess.Popen:
        """`submit --wait` on the producer host."""
        waiting = subprocess.Popen(
            ["ip", "netns", "exec", self.net.host("producer").ns, str(BIN / "embedfleet"), "submit", str(corpus),
             "--collection", collection, "--fields", FIELDS, "--chunk-size", "16", "--wait"],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.producers.append(waiting)
        return waiting

    def producer(self, *args: str) -> subprocess.CompletedProcess:
        return self.net.cluster.run(self.net.host("producer"), [str(BIN / "embedfleet"), *args], env=self.env)

    def job_id(self, timeout: float = 60, seen: tuple[str, ...] = ()) -> str:
        """The test's job (the one not in seen), once the producer has made it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with get_engine(self.db_url).connect() as conn:
                    row = conn.execute(select(jobs.c.id).where(jobs.c.id.not_in(seen))).first()
                if row:
                    return str(row[0])
            except Exception:  # the producer creates the tables while we look
                pass
            time.sleep(0.2)
        raise AssertionError("no job after 60s")

    def wait_chunks(self, job_id: str, done: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while job_stats(get_engine(self.db_url), job_id).chunks_done < done:
            assert time.monotonic() < deadline, f"fewer than {done} chunks done after {timeout}s"
            time.sleep(0.1)

    def split(self, job_id: str) -> dict[str, int]:
        """Chunks done per worker node (the ledger's chunks.worker)."""
        with get_engine(self.db_url).connect() as conn:
            rows = conn.execute(select(chunks.c.worker).where(chunks.c.job_id == job_id,
                                                              chunks.c.state == "done")).all()
        counts: dict[str, int] = {}
        for (worker,) in rows:
            key = (worker or "?").split("@")[0]
            counts[key] = counts.get(key, 0) + 1
        return counts


@pytest.fixture
def fleet(net: Net, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    import psycopg

    broker = getattr(request, "param", "redis")
    name = f"mh_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    admin_url = f"{net.pg_base}/postgres"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    if broker == "redis":
        redis.Redis.from_url(net.redis_url).flushdb()
        broker_url = net.redis_url
    else:
        ensure_rabbitmq(net)
        for args in (("add_vhost", name), ("set_permissions", "-p", name, "guest", ".*", ".*", ".*")):
            made = rabbitmqctl(net.cluster, net.host("broker"), net.data / "rabbitmq", *args)
            assert made.returncode == 0, made.stdout + made.stderr
        broker_url = net.amqp_base + name
    made = Fleet(net, f"{net.pg_base}/{name}", broker, broker_url)
    try:
        yield made
    finally:
        for waiting in made.producers:  # a failed test's `submit --wait` would go on re-sending
            if waiting.poll() is None:
                os.killpg(waiting.pid, signal.SIGKILL)
                waiting.wait()
        for worker in made.workers:
            net.cluster.kill(worker)
        for host in net.cluster.hosts.values():  # faults a test left in place
            net.cluster.link_up(host)
            net.cluster.clear_qdisc(host)
        if "redis" not in net.cluster.procs or net.cluster.procs["redis"].poll() is not None:
            start_redis(net.cluster, net.host("broker"), net.data / "redis")
        if broker == "rabbitmq":
            ensure_rabbitmq(net)
            rabbitmqctl(net.cluster, net.host("broker"), net.data / "rabbitmq", "delete_vhost", name)


def ensure_rabbitmq(net: Net) -> None:
    """RabbitMQ running on the broker host (a failed test may have left it stopped)."""
    proc = net.cluster.procs.get("rabbitmq")
    if proc is None or proc.poll() is not None:
        start_rabbitmq(net.cluster, net.host("broker"), net.data / "rabbitmq")


def corpus(tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    """The first n commits of the sample, as they are."""
    path = tmp_path / "corpus.jsonl"
    lines = SAMPLE.read_text().splitlines()[:n]
    path.write_text("\n".join(lines) + "\n")
    return path, [json.loads(line)["id"] for line in lines]


def finish(waiting: subprocess.Popen, timeout: float = 240) -> str:
    """The producer's `submit --wait` exits 0 without a traceback."""
    out, err = waiting.communicate(timeout=timeout)
    assert waiting.returncode == 0, f"submit --wait exited {waiting.returncode}:\n{out[-2000:]}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    return out


def check(fleet: Fleet, job_id: str, ids: list[str], tmp_path: Path, n: int, collection: str = COLLECTION) -> JobStats:
    # Fresh connections for the observer: the product asks the server to drop a session whose
    # peer is silent for ~25 s (embedfleet/store/engine.py, POSTGRES_SESSION), so one this process
    # pooled before a cut of the database host's link is gone, and the check's first
    # statement would fail on it ("server closed the connection unexpectedly").
    get_engine(fleet.db_url).dispose()
    stats = assert_accounted(fleet.db_url, job_id, collection, ids, tmp_path / f"{collection}.npy")
    assert stats.records_read == n
    split = fleet.split(job_id)
    print(f"\nsplit of job {job_id}: {split}; stored {stats.stored} dead {stats.dead} skipped {stats.skipped}")
    return stats


@BOTH
def test_job_spread_over_all_worker_hosts(fleet: Fleet, tmp_path: Path) -> None:
    """Three worker hosts share one job: each encodes some chunks."""
    path, ids = corpus(tmp_path, 240)
    fleet.start_workers(*WORKERS)
    began = time.monotonic()
    out = finish(fleet.submit(path))
    seconds = time.monotonic() - began
    job_id = fleet.job_id()
    stats = check(fleet, job_id, ids, tmp_path, 240)
    assert (stats.stored, stats.dead) == (240, 0)
    split = fleet.split(job_id)
    assert set(split) == set(WORKERS), split
    print(f"240 records in {seconds:.1f} s; {out.strip().splitlines()[-1] if out.strip() else ''}")


def finish_or_show(fleet: Fleet, waiting: subprocess.Popen, job_id: str, timeout: float = 240) -> None:
    """finish(), and what the database shows if the job stalls (the intermittent stall after a cut)."""
    try:
        finish(waiting, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"\nstalled:\n{database_view(fleet, job_id)}")
        raise


def held_chunk(fleet: Fleet, job_id: str) -> tuple[str, int]:
    """A worker holding a started, unfinished chunk now (the one whose loss costs something),
    and that chunk's seq."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with get_engine(fleet.db_url).connect() as conn:
            # chunks.holder: the incarnation of the node that started the chunk (its row in workers)
            rows = conn.execute(select(nodes.c.name, chunks.c.seq).join(
                chunks, chunks.c.holder == nodes.c.incarnation).where(
                chunks.c.job_id == job_id, chunks.c.state != "done")).all()
        held = [(str(w).split("@")[0], int(seq)) for w, seq in rows if str(w).split("@")[0] in WORKERS]
        if held:
            return held[0]
        time.sleep(0.05)
    raise AssertionError("no worker holds a chunk")


def busy_worker(fleet: Fleet, job_id: str) -> str:
    return held_chunk(fleet, job_id)[0]


@BOTH
def test_worker_host_cut_off_for_good(fleet: Fleet, tmp_path: Path, recovery: Callable[[str, float, float], None]) -> None:
    """A worker host's link goes down mid-chunk and stays down: its node stops beating, and
    dead_after_seconds (15 s, the default) later a live worker re-sends its chunk; the job ends
    on the other two hosts."""
    path, ids = corpus(tmp_path, 240)
    fleet.start_workers(*WORKERS)
    waiting = fleet.submit(path)
    job_id = fleet.job_id()
    fleet.wait_chunks(job_id, 2)
    victim = busy_worker(fleet, job_id)
    fleet.net.cluster.link_down(fleet.net.host(victim))
    cut = time.monotonic()
    finish_or_show(fleet, waiting, job_id)
    recovery("multihost: worker host cut, never restored (cut -> job end)", time.monotonic() - cut, 120)
    stats = check(fleet, job_id, ids, tmp_path, 240)
    assert (stats.stored, stats.dead) == (240, 0)
    assert stats.resends >= 1, stats.as_dict()  # the cut host's chunk really was taken back


@BOTH
def test_worker_host_back_after_a_minute(fleet: Fleet, tmp_path: Path, recovery: Callable[[str, float, float], None]) -> None:
    """The cut host comes back 60 s later, its chunk long re-sent and the job done: it finishes
    or drops what it held, and nothing is stored twice or counted twice."""
    path, ids = corpus(tmp_path, 240)
    fleet.start_workers(*WORKERS)
    waiting = fleet.submit(path)
    job_id = fleet.job_id()
    fleet.wait_chunks(job_id, 2)
    victim = busy_worker(fleet, job_id)
    host = fleet.net.host(victim)
    fleet.net.cluster.link_down(host)
    cut = time.monotonic()
    finish_or_show(fleet, waiting, job_id)
    ended = time.monotonic() - cut
    before = check(fleet, job_id, ids, tmp_path, 240)
    time.sleep(max(0.0, 60 - (time.monotonic() - cut)))
    fleet.net.cluster.link_up(host)
    restored = time.monotonic()
    fleet.wait_ready([victim])  # the returning node answers over the broker again
    back = time.monotonic() - restored
    time.sleep(10)  # what it held: stored or dropped by now
    (tmp_path / "after").mkdir()
    after = check(fleet, job_id, ids, tmp_path / "after", 240)
    assert (after.stored, after.dead, after.chunks_done) == (before.stored, before.dead, before.chunks_done) \
        == (240, 0, before.chunks_total)
    assert fleet.net.cluster.procs[victim].poll() is None, "the returning worker died"
    recovery("multihost: worker host back after 60 s (cut -> job end)", ended, 120)
    print(f"returning worker answered {back:.1f} s after its link came back")


def database_view(fleet: Fleet, job_id: str) -> str:
    """Sessions, open chunks and worker nodes as the database sees them."""
    import psycopg

    lines = []
    with psycopg.connect(fleet.db_url, autocommit=True, connect_timeout=5) as conn:
        for row in conn.execute("SELECT pid, client_addr, state, wait_event_type, wait_event, left(query, 90) "
                                "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"):
            lines.append(f"session {row}")
        for row in conn.execute("SELECT seq, state, holder, deliveries, collects FROM chunks WHERE job_id = %s "
                                "AND state <> 'done'", (job_id,)):
            lines.append(f"open chunk {row}")
        for row in conn.execute("SELECT name, incarnation, extract(epoch from clock_timestamp()) - last_seen, "
                                "extract(epoch from clock_timestamp()) - up_since FROM workers"):
            lines.append(f"node {row}")
    return "\n".join(lines)


@BOTH
def test_worker_host_cut_inside_a_collect_transaction(fleet: Fleet, tmp_path: Path,
                                                      recovery: Callable[[str, float, float], None]) -> None:
    """A host cut off inside a collect's transaction (after the statement that locks the
    chunk's row, before COMMIT): its session stays open on the database, holding the lock,
    until the server gives the silent peer up, and the sweep that would re-send the chunk
    waits on that lock. The cut lands at that moment only by chance in scenario 2 (it did
    once, before the fix, and the job had not ended 240 s later), so here a session on the
    cut host, set up as the product sets up its own (embedfleet/store/engine.py: POSTGRES_SESSION,
    keepalives and tcp_user_timeout that find a dead peer in ~25 s), locks the rows of the
    open chunks the cut host holds, as the collector does (SELECT ... FOR UPDATE), just
    before the cut. With the kernel's keepalive defaults the server would keep that lock
    for 2 h 11 min. Expected: about 25 s after the cut the server drops the session, the
    sweep claims the chunk and the job ends. On a stall the test prints the database's
    sessions, open chunks and nodes."""
    from embedfleet.store.engine import POSTGRES_SESSION

    path, ids = corpus(tmp_path, 240)
    fleet.start_workers(*WORKERS)
    waiting = fleet.submit(path)
    job_id = fleet.job_id()
    fleet.wait_chunks(job_id, 2)
    victim, seq = held_chunk(fleet, job_id)
    cluster, host = fleet.net.cluster, fleet.net.host(victim)
    # Every open chunk the victim's node holds (the one it encodes may be done by the time
    # the locker runs; the next one it took is then open), locked in one transaction.
    locker = (f"import psycopg, time; c = psycopg.connect({fleet.db_url!r}); c.execute({POSTGRES_SESSION!r}); "
              "rows = c.execute('SELECT seq FROM chunks WHERE job_id = %s AND state = %s AND holder = "
              "(SELECT holder FROM chunks WHERE job_id = %s AND seq = %s) FOR UPDATE', "
              f"({job_id!r}, 'queued', {job_id!r}, {seq})).fetchall(); "
              "print('locked', len(rows), [r[0] for r in rows], flush=True); time.sleep(900)")
    deadline = time.monotonic() + 60
    while True:  # until the lock holds an open chunk of the victim's
        cluster.spawn(host, "locker", [sys.executable, "-c", locker], env=fleet.env)
        while "locked" not in cluster.log("locker"):
            assert time.monotonic() < deadline, cluster.log("locker")
            time.sleep(0.05)
        if "locked 0" not in cluster.log("locker"):
            break
        cluster.kill("locker")
        (cluster.root / "locker.log").unlink()
        victim, seq = held_chunk(fleet, job_id)
        assert fleet.net.host(victim) == host, "the victim moved on to another host's chunk"
    locked = [int(n) for n in cluster.log("locker").split("[", 1)[1].split("]")[0].split(",")]
    cluster.link_down(host)
    cut_wall = time.time()
    cut = time.monotonic()
    try:
        for _ in range(3):  # what the database shows while the job waits, for the report
            try:
                finish(waiting, timeout=60)
                break
            except subprocess.TimeoutExpired:
                print(f"\n{time.monotonic() - cut:.0f} s after the cut:\n{database_view(fleet, job_id)}")
        else:
            raise AssertionError("the job did not end within 180 s of the cut")
    finally:
        cluster.kill("locker")
    # The locked chunks really were held through the cut: done only once the lock went.
    with get_engine(fleet.db_url).connect() as conn:
        done_at = dict(conn.execute(select(chunks.c.seq, chunks.c.done_at).where(
            chunks.c.job_id == job_id, chunks.c.seq.in_(locked))).all())
    after = {seq: round(float(at) - cut_wall, 1) for seq, at in done_at.items()}
    print(f"locked chunks {locked} done this many seconds after the cut: {after}")
    assert all(seconds > 0 for seconds in after.values()), after
    recovery("multihost: worker host cut inside a collect transaction (cut -> job end)", time.monotonic() - cut, 120)
    stats = check(fleet, job_id, ids, tmp_path, 240)
    assert (stats.stored, stats.dead) == (240, 0)


@BOTH
def test_broker_host_restarted_mid_job(fleet: Fleet, tmp_path: Path, recovery: Callable[[str, float, float], None]) -> None:
    """The broker is killed (kill -9) mid-job and started again 3 s later with its data dir:
    Redis replays its append-only file, RabbitMQ recovers its durable quorum queues (and puts
    back what was delivered but not acknowledged). The workers reconnect and the job ends.

    With the product's defaults (lease 120 s). A chunk being encoded when the broker went
    away cannot send its collect message until the broker is back; its send keeps trying for
    about a minute (embedfleet/fleet/celeryconfig.py, task_publish_retry_policy), so it is not lost
    and the job does not wait a lease for the reconciler (it did before: 131 s on Redis)."""
    path, ids = corpus(tmp_path, 240)
    fleet.start_workers(*WORKERS)
    waiting = fleet.submit(path)
    job_id = fleet.job_id()
    fleet.wait_chunks(job_id, 2)
    cluster, broker, data = fleet.net.cluster, fleet.net.host("broker"), fleet.net.data
    if fleet.broker == "redis":
        cluster.kill("redis")
        time.sleep(3)
        start_redis(cluster, broker, data / "redis")
    else:
        stop_rabbitmq(cluster, data / "rabbitmq")
        time.sleep(3)
        start_rabbitmq(cluster, broker, data / "rabbitmq")
    back = time.monotonic()
    finish_or_show(fleet, waiting, job_id)
    # Under a lease (120 s): nothing waited for the reconciler.
    recovery("multihost: broker host restarted with its data (restart -> job end)", time.monotonic() - back, 100)
    stats = check(fleet, job_id, ids, tmp_path, 240)
    assert (stats.stored, stats.dead) == (240, 0)


def test_broker_host_restarted_empty_then_resume(fleet: Fleet, tmp_path: Path,
                                                 recovery: Callable[[str, float, float], None]) -> None:
    """Redis comes back empty (its data dir wiped) mid-job: the queued chunks are gone;
    `embedfleet resume JOB` on the producer host re-sends every open chunk from the ledger."""
    path, ids = corpus(tmp_path, 240)
    fleet.start_workers(*WORKERS)
    waiting = fleet.submit(path)
    job_id = fleet.job_id()
    fleet.wait_chunks(job_id, 2)
    cluster, broker = fleet.net.cluster, fleet.net.host("broker")
    cluster.kill("redis")
    shutil.rmtree(fleet.net.data / "redis")
    time.sleep(3)
    start_redis(cluster, broker, fleet.net.data / "redis")
    back = time.monotonic()
    time.sleep(2)
    resumed = fleet.producer("resume", job_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    finish(waiting)
    recovery("multihost: broker host restarted empty + resume (restart -> job end)", time.monotonic() - back, 180)
    stats = check(fleet, job_id, ids, tmp_path, 240)
    assert (stats.stored, stats.dead) == (240, 0)


@BOTH
def test_database_host_unreachable_for_30_s(fleet: Fleet, tmp_path: Path,
                                            recovery: Callable[[str, float, float], None]) -> None:
    """The database host's link is down for 30 s mid-job: tasks retry with backoff (5 retries
    from 1 s, capped at 60 s, outlast 30 s) and the job ends once it is back."""
    path, ids = corpus(tmp_path, 240)
    fleet.start_workers(*WORKERS)
    waiting = fleet.submit(path)
    job_id = fleet.job_id()
    fleet.wait_chunks(job_id, 2)
    cluster, db = fleet.net.cluster, fleet.net.host("db")
    cluster.link_down(db)
    time.sleep(30)
    cluster.link_up(db)
    back = time.monotonic()
    finish(waiting)
    recovery("multihost: database host unreachable 30 s (link up -> job end)", time.monotonic() - back, 180)
    stats = check(fleet, job_id, ids, tmp_path, 240)
    assert (stats.stored, stats.dead) == (240, 0)


def test_latency_and_loss_on_a_worker_host(fleet: Fleet, tmp_path: Path,
                                           recovery: Callable[[str, float, float], None]) -> None:
    """50 ms each way and 1% loss on w1's link: the job finishes, one row per record; its
    throughput is recorded against a clean run of the same corpus (into another collection,
    so nothing is skipped as unchanged) on the same fleet.

    Where the kernel has no sch_netem (this CI VM's), w1 reaches the broker and the database
    through tests/fleet/delay_proxy.py in its own namespace instead, which holds every piece of
    data 50 ms each way and, for 1% of them, a 200 ms retransmission timeout more."""
    cluster, w1 = fleet.net.cluster, fleet.net.host("w1")
    path, ids = corpus(tmp_path, 240)
    control = tmp_path / "impairment"
    control.write_text("0 0")
    if netem_available():
        how = "tc netem"
        fleet.start_workers(*WORKERS)
    else:
        how = "delay_proxy (no sch_netem in this kernel)"
        broker, db = fleet.net.host("broker"), fleet.net.host("db")
        cluster.spawn(w1, "w1-proxy", [sys.executable, "-m", "tests.fleet.delay_proxy", str(control),
                                       f"16379:{broker.addr}:6379", f"15432:{db.addr}:5432"], env=fleet.env)
        fleet.start_workers("w2", "w3")
        fleet.start_workers("w1", EMBEDFLEET_BROKER_URL="redis://127.0.0.1:16379/0",
                            EMBEDFLEET_DATABASE_URL=fleet.db_url.replace(f"{db.addr}:5432", "127.0.0.1:15432"))
    try:
        # A first job pays for table creation and each worker's first batch: not in either figure.
        (tmp_path / "warm").mkdir()
        warm, _ = corpus(tmp_path / "warm", 48)
        finish(fleet.submit(warm, "warmup"))
        warmup = fleet.job_id()
        began = time.monotonic()
        finish(fleet.submit(path, "clean"))
        clean_seconds = time.monotonic() - began
        first = fleet.job_id(seen=(warmup,))
        check(fleet, first, ids, tmp_path, 240, "clean")
        if how == "tc netem":
            cluster.netem(w1, "delay", "50ms", "loss", "1%")
        else:
            control.write_text("0.05 0.01")
        began = time.monotonic()
        finish(fleet.submit(path, "impaired"))
        impaired_seconds = time.monotonic() - began
        second = fleet.job_id(seen=(warmup, first))
        stats = check(fleet, second, ids, tmp_path, 240, "impaired")
        assert (stats.stored, stats.dead) == (240, 0)
    finally:
        cluster.kill("w1-proxy")
    recovery("multihost: clean job, 240 records (submit -> end)", clean_seconds, 240)
    recovery("multihost: w1 at 50 ms + 1% loss, 240 records (submit -> end)", impaired_seconds, 240)
    clean, impaired = 240 / clean_seconds, 240 / impaired_seconds
    print(f"throughput via {how}: clean {clean:.1f} records/s, w1 at 50 ms + 1% loss {impaired:.1f} records/s "
          f"(ratio {impaired / clean:.2f}); split clean {fleet.split(first)}, impaired {fleet.split(second)}")
