"""Database engine and sessions for SQLite (WAL) and PostgreSQL.

One engine per process and URL. `session_scope()` commits on success, rolls back on error and
always closes: every task and request goes through it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from config import get_settings
from worker.files import private_dir

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets intake write while the flusher reads; busy_timeout waits out short write locks.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`. Every wait is bounded (settings), so a request or a task that
    meets a database that is away fails within seconds, well inside the broker's visibility
    timeout and a web client's patience, instead of hanging."""
    settings = get_settings()
    # hide_parameters: SQLAlchemy's error texts would otherwise quote the row's values
    # (addresses, names) into logs and Celery's failure events (invariant 5).
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            private_dir(Path(path).parent)
        engine = create_engine(
            url,
            connect_args={"timeout": 30},
            pool_timeout=settings.database_pool_timeout_seconds,
            hide_parameters=True,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        pool_timeout=settings.database_pool_timeout_seconds,
        connect_args={"connect_timeout": settings.database_connect_timeout_seconds},
        hide_parameters=True,
    )
    timeout = f"{int(settings.database_statement_timeout_seconds * 1000)}ms"

    # Set on each new connection rather than through `options` in connect_args, which would
    # replace the `options` a URL may carry (a search_path, say).
    @event.listens_for(engine, "connect")
    def _bound_statements(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT set_config('statement_timeout', %s, false)", [timeout])
        dbapi_connection.commit()

    return engine


#: What "the database is away" looks like: it cannot be reached, a connection broke, a
#: statement ran past its timeout, or no pooled connection came free in time. Work that meets
#: one of these is retried later; any other error is a problem with the work itself.
UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError)


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database is away, rather than that the work is at fault."""
    if isinstance(exc, UNAVAILABLE):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def get_engine(url: str | None = None) -> Engine:
    url = url or get_settings().database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    url = url or get_settings().database_url
    with _lock:
        factory = _factories.get(url)
    if factory is None:
        factory = sessionmaker(get_engine(url), expire_on_commit=False)
        with _lock:
            _factories[url] = factory
    return factory


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session in one transaction: commit on success, roll back on error, always close."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dialect_insert(session: Session) -> Any:
    """The session dialect's `insert`, which has `ON CONFLICT` clauses."""
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def dispose_engines() -> None:
    """Drop pooled connections (after fork, and between tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _factories.clear()


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
