"""The full schemathesis run, every check, against a real `listsync web` over HTTP: whatever
the OpenAPI document says is accepted is accepted, what it says is refused is refused, and
each answer (status, headers, body, `Allow`) is the documented one. The webhook path gets
the valid secret, so its events reach validation and storage."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import wait_for
from tests.hostile.conftest import SECRET, TOKEN

ROOT = Path(__file__).resolve().parents[2]
#: Cases per operation and phase: the whole run stays around half a minute.
MAX_EXAMPLES = 25
SEED = 1


@pytest.fixture
def web(hostile_env: dict[str, str], db: str, tmp_path: Path) -> Iterator[str]:
    """`listsync web` on a free port, its database migrated; yields its base URL."""
    from worker.cli.processes import free_port

    port = free_port()
    env = {**os.environ, **hostile_env}
    log = (tmp_path / "web.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "web", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/openapi.json", timeout=2).status_code == 200
        except requests.ConnectionError:
            return proc.poll() is not None  # ended: reported below

    try:
        wait_for(up, timeout=60, what="listsync web to answer")
        assert proc.poll() is None, (tmp_path / "web.log").read_text()
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_every_schemathesis_check_passes_against_the_running_web(web: str, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.secret" = "{SECRET}"\n')
    schemathesis = Path(sys.executable).with_name("schemathesis")
    done = subprocess.run(
        [
            str(schemathesis),
            "--config-file",
            str(config),
            "run",
            f"{web}/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            # /metrics is served on the internal listener only (the public one answers 404,
            # as for an unknown route); tests/hostile/test_openapi_fuzz.py fuzzes it there.
            "--exclude-path",
            "/metrics",
        ],
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SCHEMATHESIS_HOOKS": "tests.hostile.schemathesis_hooks",
        },
        cwd=tmp_path,  # its own files (.schemathesis/) go there
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout, done.stdout[-3000:]
