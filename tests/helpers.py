"""Small helpers shared by tests: waiting on conditions, running the real command."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from worker.supervise import Child

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or predicate}")
        time.sleep(interval)


def run_listsync(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run the real `listsync` command as a subprocess, with stdin as its standard input."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def worker_process(
    env: dict[str, str],
    queues: str = "sync",
    *,
    prefetch: int = 1,
    log: Path | None = None,
    ready: bool = False,
) -> Iterator[Child]:
    """A real `celery worker` (prefork, one pool process) in its own process group, killed
    with it at the end. `prefetch` 200 takes signups as `listsync run`'s intake worker does;
    with `ready`, wait until it says it is ready (needs `log`)."""
    argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", queues, "-c", "1"]
    level = "INFO" if log is not None else "WARNING"
    argv += ["--without-mingle", "--without-gossip", "--loglevel", level]
    argv += ["--prefetch-multiplier", str(prefetch)]
    child = Child("worker", argv, {**os.environ, **env}, log=log, own_group=True).start()
    try:
        if ready:
            wait_for(
                lambda: child.logged_since_start(" ready.") or not child.alive(),
                timeout=60,
                what="the worker to be ready",
            )
            assert child.alive(), child.log_tail()
        yield child
    finally:
        child.kill()
