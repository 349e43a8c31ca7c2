"""Private servers for the fault drill and the fault tests: a PostgreSQL and a Redis of their
own, on free ports, that can be stopped, restarted and starved without touching the shared
servers other tests use.

    with PrivatePostgres() as pg: ...      # pg.url; pg.stop(); pg.start(); pg.restart()
    with PrivateRedis(tmp) as r: ...       # r.url; r.refuse_writes(); r.accept_writes()
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
