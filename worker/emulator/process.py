"""Run the emulator as a child process and drive its admin API: used by tests, benchmarks and
``listsync run``."""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import re
import secrets
import subprocess
import sys
import threading
import time
from types import TracebackType
from typing import IO, Any

import requests

from worker.supervise import die_with_parent

LISTENING_RE = re.compile(r"emulator listening on (http://\S+/3\.0) list=(\S+)")


class EmulatorError(RuntimeError):
    """The emulator did not start, or an admin call failed."""


class EmulatorProcess:
    """``with EmulatorProcess() as emu: ...`` starts ``python -m worker.emulator --port 0``,
    learns the port from its first line and waits until it answers; ``stop()`` (or leaving
    the block) terminates it, then kills it if it lingers."""

    def __init__(
        self,
        *extra_args: str,
        lists: tuple[str, ...] = (),
        double_optin_lists: tuple[str, ...] = (),
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        start_timeout: float = 20.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.api_key = api_key or f"{secrets.token_hex(16)}-us1"
        self.host = host
        args = [sys.executable, "-m", "worker.emulator", "--host", host, "--port", str(port)]
        for list_id in lists:
            args += ["--list", list_id]
        for list_id in double_optin_lists:
            args += ["--double-optin-list", list_id]
        if api_key is not None:
            args += ["--api-key", api_key]
        args += list(extra_args)
        self.args = args
        self.base_url = ""
        self.admin_url = ""
        self.list_ids: list[str] = []
        self._http = requests.Session()
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)
        self._start(start_timeout, env)

    # ---- lifecycle --------------------------------------------------------------------
    def _start(self, timeout: float, env: dict[str, str] | None) -> None:
        self._proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            # An emulator must not outlive whoever started it (a killed test run, `run`).
            preexec_fn=die_with_parent,
        )
        # Drain stderr continuously so a chatty (--verbose) child never blocks on a full pipe.
        stderr = self._proc.stderr
        threading.Thread(target=self._drain_stderr, args=(stderr,), daemon=True).start()
        try:
            line = self._first_line(timeout)
            match = LISTENING_RE.search(line)
            if match is None:
                raise EmulatorError(f"unexpected first line from the emulator: {line!r}")
            self.base_url = match.group(1)
            self.admin_url = self.base_url.removesuffix("/3.0") + "/_emulator"
            self.list_ids = match.group(2).split(",")
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _first_line(self, timeout: float) -> str:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        stdout = proc.stdout

        def read() -> None:
            lines.put(stdout.readline())

        threading.Thread(target=read, daemon=True).start()
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise EmulatorError(f"the emulator printed nothing within {timeout} s") from None
        if not line:
            proc.wait(5)
            raise EmulatorError(f"the emulator exited before listening: {self.stderr_tail()}")
        return line

    def _drain_stderr(self, stream: IO[str] | None) -> None:
        if stream is None:
            return
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                self._stderr.append(line)

    def stderr_tail(self) -> str:
        """The last lines the emulator wrote to stderr."""
        return "".join(self._stderr)

    def _wait_ready(self, timeout: float) -> None:
        # Polls the admin health route rather than /3.0/ping: API calls may carry
        # configured faults, admin calls never do.
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._http.get(self.admin_url + "/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise EmulatorError("the emulator did not answer in time")
            time.sleep(0.02)

    @property
    def list_id(self) -> str:
        return self.list_ids[0]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate (the emulator saves its state file on SIGTERM), then kill."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._http.close()
        return proc.returncode

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()

    # ---- admin client -----------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = self._http.request(method, self.admin_url + path, json=body, timeout=10)
        if not resp.ok:
            raise EmulatorError(f"{method} {path}: {resp.status_code} {resp.text}")
        return resp.json()

    def _list(self, list_id: str | None) -> str:
        return list_id or self.list_id

    def counters(self) -> dict[str, Any]:
        return self._call("GET", "/counters")

    def reset_counters(self) -> dict[str, Any]:
        return self._call("POST", "/counters/reset")

    def faults(self) -> dict[str, Any]:
        return self._call("GET", "/faults")

    def set_faults(
        self,
        *,
        latency_ms: float | None = None,
        jitter_ms: float | None = None,
        rates: dict[str, float] | None = None,
        timeout_hold_s: float | None = None,
        max_connections: int | None = None,
        limit_response: str | None = None,
    ) -> dict[str, Any]:
        """Set any of: latency model, random fault rates by kind, the hold of a 'timeout'
        fault, the connection limit and what a call over it gets."""
        body = {
            k: v
            for k, v in {
                "latency_ms": latency_ms,
                "jitter_ms": jitter_ms,
                "rates": rates,
                "timeout_hold_s": timeout_hold_s,
                "max_connections": max_connections,
                "limit_response": limit_response,
            }.items()
            if v is not None
        }
        return self._call("PUT", "/faults", body)

    def set_latency(self, latency_ms: float, jitter_ms: float = 0.0) -> dict[str, Any]:
        return self.set_faults(latency_ms=latency_ms, jitter_ms=jitter_ms)

    def reset_faults(self) -> dict[str, Any]:
        return self._call("POST", "/faults/reset")

    def script_failures(
        self, kind: str, count: int = 1, path: str = "/3.0/*", method: str | None = None
    ) -> dict[str, Any]:
        """The next ``count`` API calls whose path matches the glob ``path`` fail with ``kind``."""
        body = {"kind": kind, "count": count, "path": path, "method": method}
        return self._call("POST", "/faults/script", body)

    def settings(self) -> dict[str, Any]:
        return self._call("GET", "/settings")

    def set_settings(self, **settings: Any) -> dict[str, Any]:
        """allow_pending_resubscribe, batch_unsubscribed, sign_webhooks, fake_domains,
        unknown_merge_fields ('error'|'ignore'), skip_merge_validation ('required'|'all'),
        webhook_retry={timeout_s, first_delay_s, factor, max_attempts}."""
        return self._call("PUT", "/settings", settings)

    def advance_clock(self, seconds: float) -> str:
        return str(self._call("POST", "/clock", {"advance_seconds": seconds})["now"])

    def save(self) -> dict[str, Any]:
        return self._call("POST", "/save")

    def create_list(
        self,
        list_id: str | None = None,
        double_optin: bool = False,
        *,
        name: str | None = None,
        merge_fields: list[dict[str, Any]] | None = None,
        interest_categories: list[dict[str, Any]] | None = None,
        marketing_permissions: list[str] | None = None,
        default: bool = False,
    ) -> str:
        """Create an audience and return its id; with ``default``, later calls that name no
        audience use it. ``merge_fields``: merge-field bodies as the
        API takes them (``{"tag", "name", "type", "required", "default_value", "options"}``,
        ``choices`` allowed at the top); one naming FNAME or LNAME redefines it.
        ``interest_categories``: ``{"title", "type", "interests": [name, ...]}``.
        ``marketing_permissions``: texts such as "Email" (a GDPR audience). The ids Mailchimp
        would make up are in ``audience_shape()``."""
        body: dict[str, Any] = {"id": list_id, "double_optin": double_optin, "name": name}
        if merge_fields is not None:
            body["merge_fields"] = merge_fields
        if interest_categories is not None:
            body["interest_categories"] = interest_categories
        if marketing_permissions is not None:
            body["marketing_permissions"] = marketing_permissions
        created = str(self._call("POST", "/lists", body)["id"])
        if default:
            self.list_ids.insert(0, created)
        else:
            self.list_ids.append(created)
        return created

    def audience(self, list_id: str | None = None) -> dict[str, Any]:
        return self._call("GET", f"/lists/{self._list(list_id)}")

    def audience_shape(self, list_id: str | None = None) -> dict[str, Any]:
        """``{"merge_fields": [...], "interest_categories": [{..., "interests": [...]}],
        "marketing_permissions": [{"marketing_permission_id", "text"}]}``."""
        return dict(self.audience(list_id)["shape"])

    def interest_id(
        self, name: str, category: str | None = None, list_id: str | None = None
    ) -> str:
        """The id of the interest called ``name`` (in the category titled ``category``)."""
        for cat in self.audience_shape(list_id)["interest_categories"]:
            if category is not None and cat["title"] != category:
                continue
            for interest in cat["interests"]:
                if interest["name"] == name:
                    return str(interest["id"])
        raise EmulatorError(f"no interest named {name!r}")

    def marketing_permission_id(self, text: str, list_id: str | None = None) -> str:
        for permission in self.audience_shape(list_id)["marketing_permissions"]:
            if permission["text"] == text:
                return str(permission["marketing_permission_id"])
        raise EmulatorError(f"no marketing permission {text!r}")

    def rename_interest(
        self, interest_id: str, name: str, list_id: str | None = None
    ) -> dict[str, Any]:
        """Rename a group as a person would in Mailchimp's UI: the id stays."""
        path = f"/lists/{self._list(list_id)}/interests/{interest_id}"
        return self._call("PATCH", path, {"name": name})

    def seed_member(
        self,
        email: str,
        status: str = "subscribed",
        *,
        merge_fields: dict[str, Any] | None = None,
        last_changed: str | None = None,
        list_id: str | None = None,
    ) -> dict[str, Any]:
        """Put a member straight into ``status`` (any Mailchimp status, or 'forgotten' for
        permanently deleted), firing no webhook."""
        body = {
            "email": email,
            "status": status,
            "merge_fields": merge_fields,
            "last_changed": last_changed,
        }
        return self._call("POST", f"/lists/{self._list(list_id)}/members", body)

    def member(self, email_or_hash: str, list_id: str | None = None) -> dict[str, Any] | None:
        """The member as the API shows it (tags, interests, language, marketing permissions)
        plus ``groups`` ({category title: [names of interests on]}), {'status': 'forgotten'}
        after a permanent delete, or None if unknown."""
        url = f"{self.admin_url}/lists/{self._list(list_id)}/members/{email_or_hash}"
        resp = self._http.get(url, timeout=10)
        if resp.status_code == 404:
            return None
        if not resp.ok:
            raise EmulatorError(f"GET member: {resp.status_code} {resp.text}")
        return resp.json()

    def _act(self, action: str, list_id: str | None, **body: Any) -> list[str]:
        path = f"/lists/{self._list(list_id)}/actions/{action}"
        return list(self._call("POST", path, body)["events"])

    def signup(
        self, email: str, merge_fields: dict[str, Any] | None = None, list_id: str | None = None
    ) -> list[str]:
        """The person signs up through a Mailchimp form (works even after a permanent delete)."""
        return self._act("signup", list_id, email=email, merge_fields=merge_fields)

    def unsubscribe(
        self, email: str, campaign_id: str = "", list_id: str | None = None
    ) -> list[str]:
        return self._act("unsubscribe", list_id, email=email, campaign_id=campaign_id)

    def complain(self, email: str, campaign_id: str = "", list_id: str | None = None) -> list[str]:
        return self._act("complain", list_id, email=email, campaign_id=campaign_id)

    def bounce(self, email: str, campaign_id: str = "", list_id: str | None = None) -> list[str]:
        return self._act("bounce", list_id, email=email, campaign_id=campaign_id)

    def change_email(self, email: str, new_email: str, list_id: str | None = None) -> list[str]:
        return self._act("change-email", list_id, email=email, new_email=new_email)

    def edit_profile(
        self, email: str, merge_fields: dict[str, Any], list_id: str | None = None
    ) -> list[str]:
        return self._act("edit-profile", list_id, email=email, merge_fields=merge_fields)

    def confirm(self, email: str, list_id: str | None = None) -> list[str]:
        return self._act("confirm", list_id, email=email)

    def throttle(self, email: str, list_id: str | None = None) -> None:
        self._call("POST", f"/lists/{self._list(list_id)}/throttle", {"email": email})

    def deliveries(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/webhooks/deliveries"))

    def set_webhook_delivery(
        self, *, enabled: bool | None = None, blocked_emails: list[str] | None = None
    ) -> dict[str, Any]:
        """Turn all delivery off/on, or drop deliveries of events about these addresses."""
        body: dict[str, Any] = {}
        if enabled is not None:
            body["enabled"] = enabled
        if blocked_emails is not None:
            body["blocked_emails"] = blocked_emails
        return self._call("PUT", "/webhooks/delivery", body)

    def block_webhooks_for(self, *emails: str) -> dict[str, Any]:
        current = set(self._call("GET", "/webhooks/delivery")["blocked_emails"])
        return self.set_webhook_delivery(blocked_emails=sorted(current | set(emails)))

    def unblock_webhooks_for(self, *emails: str) -> dict[str, Any]:
        current = set(self._call("GET", "/webhooks/delivery")["blocked_emails"])
        lowered = {e.lower() for e in emails}
        return self.set_webhook_delivery(blocked_emails=sorted(current - lowered))
