"""Private servers for the fault drill and the fault tests: a PostgreSQL, a Redis and a
RabbitMQ node of their own, on free ports, that can be stopped, restarted and starved without
touching the shared servers other tests use.

    with PrivatePostgres() as pg: ...      # pg.url; pg.stop(); pg.start(); pg.restart()
    with PrivateRedis(tmp) as r: ...       # r.url; r.refuse_writes(); r.accept_writes()
    with PrivateRabbit(tmp) as q: ...      # q.url; q.crash(); q.start(); q.messages()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis
from sqlalchemy import create_engine, text

from worker.supervise import Child


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")
        time.sleep(0.05)


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        raise FileNotFoundError("PostgreSQL's server binaries (pg_ctl, initdb) are not installed")
    return Path(pg_ctl).parent


class PrivatePostgres:
    """A PostgreSQL cluster of its own (initdb) in a new directory, on a free port, `fsync`
    off. PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres`
    user, in a directory of its own under the system's temporary directory (a test's own
    directory is closed to other users)."""

    def __init__(self, database: str = "listsync", *, keep: bool = False) -> None:
        self.keep = keep  # leave the data directory (stopped) to look into afterwards
        self.base = Path(tempfile.mkdtemp(prefix="listsync-pg-"))
        self.data = self.base / "data"
        self.port = free_port()
        self.database = database
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"
        self.admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._bin = _postgres_bin()

    def _run(self, *argv: str) -> None:
        command = [str(self._bin / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def __enter__(self) -> PrivatePostgres:
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.database}"'))
        admin.dispose()
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.base / "log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")
        _wait(self.up, 30, "the private PostgreSQL")

    def stop(self) -> None:
        """A fast shutdown: sessions are ended, as when the server is taken down."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def up(self) -> bool:
        engine = create_engine(self.admin_url, connect_args={"connect_timeout": 1})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False
        finally:
            engine.dispose()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self.keep:
            print(f"kept PostgreSQL data in {self.data}", file=sys.stderr)
        else:
            shutil.rmtree(self.base, ignore_errors=True)


class PrivateRedis:
    """A redis-server of its own on a free port, `noeviction`, nothing on disk unless
    `persistent` (append-only file, fsync every second, as production runs it)."""

    def __init__(self, base: Path, *, persistent: bool = False) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.persistent = persistent
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--maxmemory-policy", "noeviction"]
        if persistent:
            data = base / "redis-data"
            data.mkdir(parents=True, exist_ok=True)
            argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(data)]
        else:
            argv += ["--appendonly", "no"]
        self.proc = Child("redis", argv, os.environ, log=base / "redis.log", own_group=True)
        self.client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=5)

    def up(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        self.proc.start()
        _wait(self.up, 10, "redis-server")

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.client.close()
        self.proc.stop(5)

    def refuse_writes(self) -> None:
        """Full, as under `maxmemory` with `noeviction`: every write is refused (OOM error),
        reads and deletes still work."""
        used = int(self.client.info("memory")["used_memory"])
        self.client.config_set("maxmemory", max(1, used // 2))

    def accept_writes(self) -> None:
        self.client.config_set("maxmemory", 0)


class PrivateRabbit:
    """A RabbitMQ node of its own (`rabbitmq-server` in the foreground, as a child), on free
    ports, its database in a directory of its own, no plugins: it can be crashed and restarted
    without touching the shared node. Its data survives a restart, as a real node's does.
    Started as root, `rabbitmq-server` runs the node as the `rabbitmq` user, so the directory
    belongs to that user (as PrivatePostgres's does to `postgres`); `log_dir` gets its output."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.node = f"listsync-drill-{os.getpid()}-{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.base = base = Path(tempfile.mkdtemp(prefix="listsync-rabbitmq-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        plugins = base / "enabled-plugins"
        plugins.write_text("[].\n")
        # Files of its own, not /etc/rabbitmq's: those name the shared node and its port.
        conf = base / "rabbitmq.conf"
        conf.write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        env_file = base / "rabbitmq-env.conf"
        env_file.write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
        for directory in ("mnesia", "log"):
            (base / directory).mkdir(exist_ok=True)
        if os.geteuid() == 0:
            for path in (base, plugins, conf, env_file, base / "mnesia", base / "log"):
                shutil.chown(path, "rabbitmq", "rabbitmq")
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_CONFIG_FILE": str(conf),
            "RABBITMQ_CONF_ENV_FILE": str(env_file),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "ERL_CRASH_DUMP": str(base / "erl_crash.dump"),
        }
        argv = ["rabbitmq-server"]
        if os.geteuid() == 0:
            # /usr/sbin/rabbitmq-server would `su` to the user, in a session of its own that a
            # kill of this child's process group would miss: runuser keeps it in the group.
            server = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
            argv = ["runuser", "-u", "rabbitmq", "--", str(server)]
        self.proc = Child("rabbitmq", argv, env, log=log_dir / "rabbitmq.log", own_group=True)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        result = subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.node, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {args[0]}: {result.stderr.strip()[:300]}")
        return result.stdout

    def up(self) -> bool:
        try:
            self.ctl("await_startup", "--timeout", "5", timeout=15)
            return True
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    def start(self) -> None:
        self.proc.start()
        _wait(lambda: self.up() or not self.proc.alive(), 90, "the private RabbitMQ node")
        if not self.proc.alive():
            raise RuntimeError(f"the private RabbitMQ node exited: {self.proc.log_tail(600)}")

    def crash(self) -> None:
        """SIGKILL the node: what it had not written to disk is gone, as in a power cut."""
        self.proc.kill()

    def messages(self) -> dict[str, tuple[int, int]]:
        """(ready, unacknowledged) messages by queue."""
        out = self.ctl(
            "list_queues", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged"
        )
        counts: dict[str, tuple[int, int]] = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                counts[parts[0]] = (int(parts[1]), int(parts[2]))
        return counts

    def __enter__(self) -> PrivateRabbit:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.alive():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.ctl("stop", timeout=60)
        self.proc.stop(10)
        shutil.rmtree(self.base, ignore_errors=True)
