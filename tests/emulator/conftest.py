"""Fixtures for the emulator tests: one emulator process per session (a fresh audience per
test), a real SDK client pointed at it, and a local webhook receiver."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import mailchimp_marketing
import pytest

from tests.emulator.support import FAST_ARGS, Received, Receiver, make_client
from worker.emulator.process import EmulatorProcess


@pytest.fixture(scope="session")
def emulator_session() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(*FAST_ARGS, lists=("base",)) as emu:
        yield emu


@pytest.fixture
def emulator(emulator_session: EmulatorProcess) -> Iterator[EmulatorProcess]:
    emu = emulator_session
    emu.reset_faults()
    emu.reset_counters()
    emu.set_webhook_delivery(enabled=True, blocked_emails=[])
    emu.set_settings(
        allow_pending_resubscribe=True,
        batch_unsubscribed="ignore",
        sign_webhooks=False,
        unknown_merge_fields="error",
        skip_merge_validation="required",
        webhook_retry={"timeout_s": 1, "first_delay_s": 0.2, "factor": 2, "max_attempts": 4},
    )
    yield emu
    emu.reset_faults()


@pytest.fixture
def list_id(emulator: EmulatorProcess) -> str:
    """A fresh, empty, single opt-in audience for this test."""
    return emulator.create_list()


@pytest.fixture
def client(emulator: EmulatorProcess) -> mailchimp_marketing.Client:
    return make_client(emulator)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _record(self, raw: str) -> None:
            with rec.lock:
                rec.requests.append(
                    Received(self.command, self.path, dict(self.headers), raw, time.monotonic())
                )

        def do_GET(self) -> None:
            self._record("")
            self.send_response(rec.get_status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            with rec.lock:
                status, delay = rec.post_plan.pop(0) if rec.post_plan else (200, 0.0)
            self._record(raw)
            if delay:
                time.sleep(delay)
            try:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the emulator gave up waiting: that is what a slow receiver causes

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/secret-token"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()
    thread.join(5)
