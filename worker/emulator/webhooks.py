"""Delivers the emulator's webhook events as Mailchimp does: form-encoded POSTs, retried at
growing intervals when the receiver fails or is slow, optionally signed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp

from worker.emulator.state import Event, Webhook

log = logging.getLogger("worker.emulator.webhooks")


@dataclass
class RetryPolicy:
    """Mailchimp retries for about 75 minutes; tests shrink the schedule."""

    timeout_s: float = 10.0
    first_delay_s: float = 60.0
    factor: float = 2.0
    max_attempts: int = 7  # 60 s doubling: last try about 63 minutes after the first

    def delay(self, attempt: int) -> float:
        return self.first_delay_s * self.factor ** (attempt - 1)


@dataclass
class Delivery:
    webhook_id: str
    url: str
    type: str
    emails: tuple[str, ...]
    attempts: int = 0
    state: str = "pending"  # pending | delivered | failed | dropped
    last_error: str = ""
    statuses: list[int | str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "webhook_id": self.webhook_id,
            "url": self.url,
            "type": self.type,
            "emails": list(self.emails),
            "attempts": self.attempts,
            "state": self.state,
            "last_error": self.last_error,
            "statuses": self.statuses,
        }


def sign(secret: str, timestamp: int, body: str) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


class Dispatcher:
    """Owns the HTTP client, the delivery log, counters and the drop rules."""

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        self.policy = policy or RetryPolicy()
        self.enabled = True
        self.blocked_emails: set[str] = set()
        self.deliveries: list[Delivery] = []
        self.counters: dict[str, int] = {
            "events": 0,
            "attempts": 0,
            "delivered": 0,
            "failed_attempts": 0,
            "gave_up": 0,
            "dropped": 0,
        }
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def check_url(self, url: str) -> bool:
        """Mailchimp's creation check: a GET that must answer 200."""
        session = await self.session()
        try:
            timeout = aiohttp.ClientTimeout(total=self.policy.timeout_s)
            async with session.get(url, timeout=timeout) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def dispatch(self, hooks: list[Webhook], events: list[Event]) -> None:
        for event in events:
            for hook in hooks:
                if hook.list_id != event.list_id or not hook.wants(event):
                    continue
                self.counters["events"] += 1
                delivery = Delivery(hook.id, hook.url, event.type, event.emails)
                self.deliveries.append(delivery)
                blocked = {e.lower() for e in event.emails} & self.blocked_emails
                if not self.enabled or blocked:
                    delivery.state = "dropped"
                    self.counters["dropped"] += 1
                    continue
                task = asyncio.get_running_loop().create_task(self._deliver(hook, event, delivery))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _deliver(self, hook: Webhook, event: Event, delivery: Delivery) -> None:
        body = urlencode(event.fields)
        session = await self.session()
        while True:
            delivery.attempts += 1
            self.counters["attempts"] += 1
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            if hook.secret:
                headers["X-Mailchimp-Signature"] = sign(hook.secret, int(time.time()), body)
            try:
                timeout = aiohttp.ClientTimeout(total=self.policy.timeout_s)
                async with session.post(
                    hook.url, data=body.encode(), headers=headers, timeout=timeout
                ) as resp:
                    await resp.read()
                    delivery.statuses.append(resp.status)
                    if 200 <= resp.status < 300:
                        delivery.state = "delivered"
                        self.counters["delivered"] += 1
                        return
                    delivery.last_error = f"HTTP {resp.status}"
            except TimeoutError:
                delivery.statuses.append("timeout")
                delivery.last_error = "timeout"
            except aiohttp.ClientError as exc:
                delivery.statuses.append("error")
                delivery.last_error = type(exc).__name__
            self.counters["failed_attempts"] += 1
            if delivery.attempts >= self.policy.max_attempts:
                delivery.state = "failed"
                self.counters["gave_up"] += 1
                log.info("webhook %s gave up after %d attempts", hook.id, delivery.attempts)
                return
            await asyncio.sleep(self.policy.delay(delivery.attempts))

    def pending(self) -> int:
        return len(self._tasks)

    def reset(self) -> None:
        self.deliveries.clear()
        for key in self.counters:
            self.counters[key] = 0

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
