"""compose.yaml and the Dockerfile, checked without a Docker engine: what each service runs
exists, the settings it sets exist, and the choices that keep messages safe are there."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from embedfleet.cli import cli
from embedfleet.settings import Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "compose.yaml"
DOCKERFILE = REPO / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _entrypoint() -> list[str]:
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("ENTRYPOINT")]
    assert len(lines) == 1, lines
    return json.loads(lines[0].removeprefix("ENTRYPOINT"))


def _ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from this repository's Dockerfile."""
    return {name: s for name, s in compose["services"].items() if "build" in s}


def _argv(service: dict[str, Any]) -> list[str]:
    """What the container runs: its entrypoint (the service's, else the Dockerfile's) plus its command."""
    entrypoint = service.get("entrypoint", _entrypoint())
    command = service.get("command", [])
    assert isinstance(command, list), f"write commands as lists, not shell strings: {command!r}"
    return [*entrypoint, *command]


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR-default}`, defaults nested, against env."""
    env = env or {}
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("${", i):
            depth, j = 1, i + 2
            while depth:  # find the brace that closes this one, past nested ${...}
                if value.startswith("${", j):
                    depth, j = depth + 1, j + 2
                else:
                    depth, j = depth - (value[j] == "}"), j + 1
            body = value[i + 2 : j - 1]
            name, op, default = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:?-)?(.*)", body, re.S).groups()
            given = env.get(name)
            use_default = given is None or (op == ":-" and given == "")
            out.append(interpolate(default, env) if op and use_default else (given or ""))
            i = j
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def test_interpolate_reads_compose_defaults() -> None:
    """The helper below resolves nested defaults the way Compose does."""
    v = "a${X:-b${Y:-c}d}e$${Z}"
    assert interpolate(v) == "abcde${Z}"
    assert interpolate(v, {"Y": "y"}) == "abyde${Z}"
    assert interpolate(v, {"X": "x"}) == "axe${Z}"
    assert interpolate(v, {"X": ""}) == "abcde${Z}"
    assert interpolate("${X-d}", {"X": ""}) == ""


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


def test_the_file_parses_and_names_every_role(compose) -> None:
    """The stack has the broker, the database, CPU and GPU workers, a collector, beat, Flower and a producer."""
    assert {"redis", "postgres", "worker-cpu", "worker-gpu", "collector", "beat", "flower", "producer"} <= set(
        compose["services"]
    )


def test_every_command_is_a_real_embedfleet_subcommand_with_valid_options(compose) -> None:
    """Each of our services runs `embedfleet SUBCOMMAND ...`, and click accepts its arguments."""
    assert _ours(compose), "no service is built from the Dockerfile"
    for name, service in _ours(compose).items():
        argv = _argv(service)
        assert argv[0] in ("embedfleet", "celery"), (name, argv)
        if argv[0] == "celery":
            continue
        sub, args = argv[1], argv[2:]
        command = cli.get_command(click.Context(cli), sub)  # loads a lazy command's module
        assert command is not None, f"{name}: embedfleet has no command {sub!r}"
        try:
            command.make_context(sub, list(args))
        except click.UsageError as exc:  # an unknown option, a missing argument
            pytest.fail(f"{name}: embedfleet {' '.join(argv[1:])}: {exc}")


def test_every_embedfleet_variable_is_a_setting(compose) -> None:
    """An EMBEDFLEET_* variable that no Settings field reads would be silently ignored."""
    fields = set(Settings.model_fields)
    seen = set()
    for name, service in compose["services"].items():
        for var in _environment(service):
            if var.startswith("EMBEDFLEET_"):
                seen.add(var)
                assert var.removeprefix("EMBEDFLEET_").lower() in fields, f"{name}: {var} is not a setting"
    assert {"EMBEDFLEET_BROKER_URL", "EMBEDFLEET_DATABASE_URL", "EMBEDFLEET_FLOWER_USER",
            "EMBEDFLEET_FLOWER_PASSWORD"} <= seen


def test_services_reach_redis_and_postgres_by_service_name(compose) -> None:
    """By default the URLs point at the compose services (BROKER_URL / DATABASE_URL point them
    elsewhere), and each of ours waits for both to be healthy."""
    for name, service in _ours(compose).items():
        env = _environment(service)
        assert interpolate(env["EMBEDFLEET_BROKER_URL"]) == "redis://redis:6379/0", name
        assert interpolate(env["EMBEDFLEET_DATABASE_URL"]) == \
            "postgresql://postgres:postgres@postgres:5432/postgres", name
        assert interpolate(env["EMBEDFLEET_DATABASE_URL"], {"POSTGRES_PASSWORD": "pw"}).startswith(
            "postgresql://postgres:pw@postgres:5432/"), name
        assert interpolate(env["EMBEDFLEET_BROKER_URL"], {"BROKER_URL": "redis://fleet:6379/0"}) == \
            "redis://fleet:6379/0", name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name


def test_redis_keeps_messages(compose) -> None:
    """Append-only persistence and noeviction: Redis neither forgets nor evicts queued chunks."""
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_long_running_services_restart_and_have_health_checks(compose) -> None:
    """Everything but the one-shot producer restarts, and has a health check."""
    for name, service in compose["services"].items():
        if name == "producer":
            assert service["restart"] == "no" and "producer" in service["profiles"]
            continue
        assert service.get("restart") in ("unless-stopped", "always"), name
        if name != "beat":
            assert service.get("healthcheck", {}).get("test"), name
    assert "pg_isready" in " ".join(compose["services"]["postgres"]["healthcheck"]["test"])
    assert compose["services"]["postgres"]["image"].startswith("pgvector/pgvector:")


def test_queues_are_split_between_encoders_and_the_collector(compose) -> None:
    """Encode workers take only `embed`; the collector takes `collect` and `dead_letter` and loads no model."""
    services = compose["services"]

    def queues(name: str) -> set[str]:
        argv = _argv(services[name])
        return set(argv[argv.index("-Q") + 1].split(","))

    assert queues("worker-cpu") == {"embed"}
    assert queues("worker-gpu") == {"embed"}
    assert queues("collector") == {"collect", "dead_letter"}


def test_the_gpu_worker_reserves_an_nvidia_gpu_and_runs_one_process(compose) -> None:
    """worker-gpu is in the gpu profile, reserves an NVIDIA device, and runs -c 1 on cuda."""
    gpu = compose["services"]["worker-gpu"]
    assert "gpu" in gpu["profiles"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    argv = _argv(gpu)
    assert argv[argv.index("-c") + 1] == "1"
    assert argv[argv.index("--device") + 1] == "cuda"
    assert gpu["build"]["args"]["TORCH_VARIANT"] == "cuda"


def test_flower_takes_credentials_from_the_environment(compose) -> None:
    """Flower's user and password come from FLOWER_USER / FLOWER_PASSWORD, never written in the file."""
    flower = compose["services"]["flower"]
    env = _environment(flower)
    assert env["EMBEDFLEET_FLOWER_USER"].startswith("${FLOWER_USER")
    assert env["EMBEDFLEET_FLOWER_PASSWORD"].startswith("${FLOWER_PASSWORD")
    assert "--no-auth" not in _argv(flower)


def test_flower_is_published_on_loopback_unless_asked(compose) -> None:
    """By default the host's 127.0.0.1:5555 only; FLOWER_BIND / FLOWER_PORT publish it elsewhere."""
    [port] = compose["services"]["flower"]["ports"]
    assert interpolate(port) == "127.0.0.1:5555:5555"
    assert interpolate(port, {"FLOWER_BIND": "0.0.0.0", "FLOWER_PORT": "8555"}) == "0.0.0.0:8555:5555"
    # No other service of ours is published beyond loopback either.
    for name, service in compose["services"].items():
        for published in service.get("ports", []):
            assert interpolate(str(published)).startswith("127.0.0.1:"), (name, published)


def test_published_servers_listen_on_the_containers_interfaces(compose) -> None:
    """embedfleet flower and metrics listen on loopback by default; inside a container that would
    leave the published port unreachable, so compose opens them to the container's interfaces."""
    for name in ("flower", "metrics"):
        argv = _argv(compose["services"][name])
        assert argv[argv.index("--address") + 1] == "0.0.0.0", name


def test_models_are_mounted_where_migrate_names_them(compose) -> None:
    """Encode workers and the producer (which runs `migrate`) see the host's ./models at /models,
    read-only, and the file says how to put a model there and name it."""
    for name in ("worker-cpu", "worker-gpu", "producer"):
        mounts = [interpolate(v) for v in compose["services"][name].get("volumes", [])]
        assert "./models:/models:ro" in mounts, (name, mounts)
        assert interpolate(compose["services"][name]["volumes"][-1 if name == "producer" else 0],
                           {"MODELS_DIR": "/srv/models"}) == "/srv/models:/models:ro"
    text = COMPOSE.read_text()
    assert "migrate --collection docs --model /models/" in text
    assert "--local-dir ./models/" in text
    assert re.search(r"install -d /models", DOCKERFILE.read_text())


def test_the_dockerfile_pins_torch_before_installing_the_project(compose) -> None:
    """torch==2.13.0 goes in first; the CPU image takes it from PyTorch's CPU index unless
    TORCH_INDEX_URL names another, so `docker compose build` needs no argument."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", text, re.M)
    assert re.search(r"^ARG TORCH_INDEX_URL=$", text, re.M), "an empty TORCH_INDEX_URL means the variant's default"
    assert re.search(r"^ARG TORCH_CPU_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", text, re.M)
    assert 'cpu) index="${index:-$TORCH_CPU_INDEX_URL}"' in text
    assert interpolate(compose["services"]["worker-cpu"]["build"]["args"]["TORCH_INDEX_URL"]) == ""
    assert "TORCH_INDEX_URL" not in compose["services"]["worker-gpu"]["build"]["args"]
    instructions = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    torch_at = next(i for i, line in enumerate(instructions) if 'pip install "torch==2.13.0"' in line)
    project_at = next(i for i, line in enumerate(instructions) if re.search(r'pip install "\.\[all\]"(\s|$)', line))
    assert torch_at < project_at
    hosts = set(re.findall(r"https?://[^/\s]+", "\n".join(instructions)))
    assert hosts == {"https://download.pytorch.org"}, hosts
    assert _entrypoint() == ["embedfleet"]


def test_the_dashboard_is_provisioned_beside_prometheus(compose) -> None:
    """Prometheus scrapes the exporter and Flower; Grafana mounts the provisioning (the Prometheus data
    source, the dashboard provider) and the dashboard, whose every panel queries that data source."""
    import json

    deploy = REPO / "deploy"
    scrape = yaml.safe_load((deploy / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {"metrics:9808", "flower:5555"}
    prometheus, grafana = compose["services"]["prometheus"], compose["services"]["grafana"]
    assert any("deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml" in v for v in prometheus["volumes"])
    mounts = " ".join(grafana["volumes"])
    assert "deploy/grafana/provisioning:/etc/grafana/provisioning" in mounts
    assert "deploy/grafana/dashboards:/var/lib/grafana/dashboards" in mounts
    source = yaml.safe_load((deploy / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((deploy / "grafana" / "provisioning" / "dashboards" / "embedfleet.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((deploy / "grafana" / "dashboards" / "embedfleet.json").read_text())
    uid = source["datasources"][0]["uid"]
    assert dashboard["panels"] and all(t["datasource"]["uid"] == uid for p in dashboard["panels"] for t in p["targets"])
