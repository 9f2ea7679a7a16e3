"""A small cluster on one machine, built from Linux network namespaces.

How it works: every "host" is a network namespace `efmh-<name>` with one veth pair; the
namespace end is its `eth0` with an address in 10.77.0.0/24, the root end (named like the
namespace, `efmh-<name>`) is a port of the bridge `efmh-br`. The bridge itself holds
10.77.0.1: the test process (the observer) reaches the broker and the database through it
to check results, never the hosts' processes, which are started with `ip netns exec` and
reach each other only by these addresses. Nothing is routed off the bridge: the range is
used only inside namespaces the harness creates.

Faults are made from the root namespace: `link_down(host)` sets the host's root-side veth
down (its eth0 loses carrier, every TCP connection to and from it stalls), `link_up` brings
it back; `delay(host, ...)` adds `tc netem` latency and loss where the kernel has sch_netem.

Cleanup: every process runs in its own session and is killed by process group; `close()`
also kills whatever still runs inside each namespace (`ip netns pids`), deletes the
namespaces (which deletes their veths), the bridge, and the data directories. `sweep()`
does the same by name prefix for leftovers of a run that was killed before its teardown.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "efmh-"
BRIDGE = f"{PREFIX}br"
NET = "10.77.0"
OBSERVER = f"{NET}.1"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass(frozen=True)
class Host:
    name: str
    addr: str

    @property
    def ns(self) -> str:
        return f"{PREFIX}{self.name}"

    @property
    def veth(self) -> str:
        """The root-namespace end of the host's link: down means the host is cut off."""
        return f"{PREFIX}{self.name}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None: tried for real, then removed."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"{PREFIX}probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails: {made.stderr.strip()}"
    try:
        link = _ip("link", "add", probe, "type", "veth", "peer", "name", "eth0", "netns", probe, check=False)
        if link.returncode != 0:
            return f"cannot make a veth pair: {link.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def netem_available() -> bool:
    """Whether the kernel has sch_netem (a VM kernel built without it answers 'unknown')."""
    if shutil.which("tc") is None:
        return False
    probe = f"{PREFIX}netem"
    if _ip("link", "add", probe, "type", "dummy", check=False).returncode != 0:
        return False
    try:
        made = subprocess.run(["tc", "qdisc", "add", "dev", probe, "root", "netem", "delay", "1ms"],
                              capture_output=True, text=True)
        return made.returncode == 0
    finally:
        _ip("link", "del", probe, check=False)


def sweep() -> None:
    """Remove what a killed earlier run left: its processes, namespaces, veths and bridge."""
    names = _ip("netns", "list", check=False).stdout.split("\n")
    for line in names:
        ns = line.split(" ")[0]
        if ns.startswith(PREFIX):
            _kill_namespace(ns)
            _ip("netns", "del", ns, check=False)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(PREFIX):
            _ip("link", "del", name, check=False)


def _kill_namespace(ns: str) -> None:
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@dataclass
class Cluster:
    """The bridge, the hosts on it, and the processes they run (one log file each)."""

    root: Path
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{OBSERVER}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")

    def add_host(self, name: str, number: int) -> Host:
        host = Host(name, f"{NET}.{number}")
        _ip("netns", "add", host.ns)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        _ip("link", "set", host.veth, "master", BRIDGE, "up")
        _ip("-n", host.ns, "addr", "add", f"{host.addr}/24", "dev", "eth0")
        _ip("-n", host.ns, "link", "set", "eth0", "up")
        _ip("-n", host.ns, "link", "set", "lo", "up")
        self.hosts[name] = host
        return host

    def spawn(self, host: Host, name: str, argv: list[str], env: dict[str, str] | None = None,
              user: str | None = None) -> subprocess.Popen:
        """A long-running process on the host, in its own session, logging to <root>/<name>.log."""
        prefix = ["ip", "netns", "exec", host.ns]
        if user:
            prefix += ["runuser", "-u", user, "--"]
        log = (self.root / f"{name}.log").open("a")
        proc = subprocess.Popen([*prefix, *argv], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=self.root, start_new_session=True)
        self.procs[name] = proc
        return proc

    def run(self, host: Host, argv: list[str], env: dict[str, str] | None = None, user: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        prefix = ["ip", "netns", "exec", host.ns] + (["runuser", "-u", user, "--"] if user else [])
        return subprocess.run([*prefix, *argv], env=env, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def link_down(self, host: Host) -> None:
        _ip("link", "set", host.veth, "down")

    def link_up(self, host: Host) -> None:
        _ip("link", "set", host.veth, "up")

    def netem(self, host: Host, *spec: str) -> None:
        subprocess.run(["tc", "qdisc", "replace", "dev", host.veth, "root", "netem", *spec], check=True,
                       capture_output=True)

    def clear_qdisc(self, host: Host) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", host.veth, "root"], capture_output=True)

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        for host in self.hosts.values():
            _kill_namespace(host.ns)
            # The veth goes with its namespace only once the last process in it is gone:
            # delete it now, so a dying process cannot keep it for the next run.
            _ip("link", "del", host.veth, check=False)
            _ip("netns", "del", host.ns, check=False)
        _ip("link", "del", BRIDGE, check=False)
        self.hosts.clear()


def wait_port(cluster: Cluster, host: Host, port: int, timeout: float = 60) -> None:
    """Until something listens on host:port, seen from the observer."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.addr, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{host.name}:{port} not listening after {timeout}s") from None
            time.sleep(0.2)


def init_postgres(cluster: Cluster, host: Host, data: Path) -> None:
    """A PostgreSQL 15 cluster owned by the postgres user, trusting the private subnet."""
    data.mkdir(parents=True)
    shutil.chown(data, "postgres", "postgres")
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                    "--auth=trust", "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
    with (data / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {NET}.0/24 trust\n")


# A client host cut off inside a transaction leaves its session "idle in transaction",
# holding its row locks, until the server's TCP keepalive gives up on the peer: with the
# kernel's defaults that is 2 h 11 min. A collector cut off between the UPDATE that locks
# its chunk's row and its COMMIT would so block the sweep that re-sends that chunk (the
# likely cause of one stalled run of scenario 2; docs/operations.md, "Several hosts").
# A database serving several hosts should find dead peers sooner; these take 10 + 3 x 5 s.
# Keepalives only probe an idle connection: one whose last reply the dead peer never
# acknowledged is retransmitted for ~15 min (tcp_retries2) instead, unless tcp_user_timeout
# (milliseconds) caps how long sent data may stay unacknowledged.
PG_KEEPALIVES = ("tcp_keepalives_idle=10", "tcp_keepalives_interval=5", "tcp_keepalives_count=3",
                 "tcp_user_timeout=25000")


def start_postgres(cluster: Cluster, host: Host, data: Path) -> None:
    # The product now asks for these per session (embedfleet/store/engine.py, POSTGRES_SESSION), so
    # the cluster runs with the server's defaults unless EMBEDFLEET_MULTIHOST_SERVER_KEEPALIVES=1.
    settings = ([arg for kv in PG_KEEPALIVES for arg in ("-c", kv)]
                if os.environ.get("EMBEDFLEET_MULTIHOST_SERVER_KEEPALIVES") == "1" else [])
    cluster.spawn(host, "postgres", [str(PG_BIN / "postgres"), "-D", str(data), "-c", f"listen_addresses={host.addr}",
                                     "-c", f"unix_socket_directories={data}", "-c", "fsync=off",
                                     "-c", "max_connections=200", *settings], user="postgres")
    wait_port(cluster, host, 5432)


def start_redis(cluster: Cluster, host: Host, data: Path) -> None:
    """Redis with an append-only file in its data dir: a restart keeps the queues."""
    data.mkdir(parents=True, exist_ok=True)
    cluster.spawn(host, "redis", ["redis-server", "--bind", host.addr, "--port", "6379", "--protected-mode", "no",
                                  "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                                  "--dir", str(data)])
    wait_port(cluster, host, 6379)


RABBITMQ_CONF = """\
listeners.tcp.default = 5672
# guest may log in from other hosts: the broker serves only this private cluster.
loopback_users = none
"""


def rabbitmq_env(data: Path) -> dict[str, str]:
    """The private node's files. Its name, rabbit@localhost, and its epmd on 127.0.0.1 are
    the namespace's own: the machine's RabbitMQ of the same name is never reached."""
    return {**os.environ, "RABBITMQ_CONF_ENV_FILE": str(data / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(data / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(data / "enabled_plugins"),
            "RABBITMQ_NODENAME": "rabbit@localhost", "RABBITMQ_MNESIA_BASE": str(data / "mnesia"),
            "RABBITMQ_LOG_BASE": str(data / "log"), "RABBITMQ_PID_FILE": str(data / "rabbit.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1"}


def start_rabbitmq(cluster: Cluster, host: Host, data: Path) -> None:
    """RabbitMQ (the machine's 3.10 install) with its data dir kept across restarts: its
    quorum queues come back from their logs. Runs as the rabbitmq user (the install's wrapper
    switches to it), so the data dir is theirs."""
    if not data.exists():
        data.mkdir(parents=True)
        (data / "rabbitmq.conf").write_text(RABBITMQ_CONF)
        (data / "rabbitmq-env.conf").write_text("")
        (data / "enabled_plugins").write_text("[].\n")
        shutil.chown(data, "rabbitmq", "rabbitmq")
        for path in data.iterdir():
            shutil.chown(path, "rabbitmq", "rabbitmq")
    cluster.spawn(host, "rabbitmq", ["rabbitmq-server"], env=rabbitmq_env(data))
    wait_port(cluster, host, 5672, timeout=90)


def stop_rabbitmq(cluster: Cluster, data: Path) -> None:
    """kill -9 of the node (its process group, and the pid it wrote, in case it left it)."""
    cluster.kill("rabbitmq")
    pid_file = data / "rabbit.pid"
    try:
        os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


def rabbitmqctl(cluster: Cluster, host: Host, data: Path, *args: str) -> subprocess.CompletedProcess:
    return cluster.run(host, ["rabbitmqctl", "-q", "-n", "rabbit@localhost", *args], env=rabbitmq_env(data))
